//! From the router's output: histogram, plan, and every token sent to an instance, so that each
//! instance receives exactly its quota; and the load's all-gather among ranks.

use ultraep_runtime::{
    Collective, Engine, EngineConfig, InProcessCollective, Mode, PlaneOptions, RouterOutput,
    RuntimeError, StepId, TraceWriter,
};

use crate::fixture::{base_config, s};

/// Router output of 8 ranks, `tokens` each, top-4, skewed towards experts 3 and 17.
fn router_ids(tokens: u32, seed: u32) -> Vec<Vec<u32>> {
    (0..8u32)
        .map(|rank| {
            let mut state = 0x9e37_79b9u32 ^ (seed * 31 + rank);
            let mut ids = Vec::new();
            for _ in 0..tokens {
                let mut chosen: Vec<u32> = Vec::new();
                while chosen.len() < 4 {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let expert = match state % 10 {
                        0..=3 => 3,
                        4..=5 => 17,
                        _ => state / 10 % 32,
                    };
                    if !chosen.contains(&expert) {
                        chosen.push(expert);
                    }
                }
                ids.extend(chosen);
            }
            ids
        })
        .collect()
}

/// The collective of an engine that holds every rank: one member, itself.
fn alone() -> InProcessCollective {
    InProcessCollective::group(1).remove(0)
}

fn prefill_engine() -> Engine {
    Engine::new(EngineConfig {
        mode: Mode::Prefill,
        ..base_config()
    })
    .unwrap()
}

#[test]
fn every_instance_receives_exactly_its_quota() {
    every_instance_receives_exactly_its_quota_with(prefill_engine());
}

/// A plan made without a split (what a rank-local engine plans) is split per source when a rank
/// reroutes: the contiguous split, one row at a time.
#[test]
fn every_instance_receives_exactly_its_quota_from_plans_without_a_split() {
    let engine = Engine::new(EngineConfig {
        mode: Mode::Prefill,
        plan: ultraep_plan::PlanConfig {
            split: ultraep_plan::SplitMode::None,
            ..base_config().plan
        },
        ..base_config()
    })
    .unwrap();
    every_instance_receives_exactly_its_quota_with(engine);
}

fn every_instance_receives_exactly_its_quota_with(mut engine: Engine) {
    let ids = router_ids(512, 1);
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let report = engine
        .step_gathered(s(0), &mut alone(), RouterOutput::Ids(&rows))
        .unwrap();
    assert!(report.metrics.initial_imbalance() > 1.5, "{report:?}");
    assert!(report.metrics.imbalance() < 1.05, "{report:?}");
    let plan = engine.plan(s(0)).unwrap().clone();
    let mut received = vec![0u32; plan.instances().len()];
    let mut routed = Vec::new();
    for (rank, ids) in rows.iter().enumerate() {
        engine.reroute(s(0), rank as u32, ids, &mut routed).unwrap();
        assert_eq!(routed.len(), ids.len());
        for (&expert, &instance) in ids.iter().zip(&routed) {
            assert_eq!(plan.instances()[instance as usize].expert, expert);
            received[instance as usize] += 1;
        }
        let mut again = Vec::new();
        engine.reroute(s(0), rank as u32, ids, &mut again).unwrap();
        assert_eq!(again, routed, "the same input routes the same way");
    }
    let quotas: Vec<u32> = plan.instances().iter().map(|i| i.quota).collect();
    assert_eq!(received, quotas);
}

#[test]
fn router_output_that_does_not_add_up_is_refused() {
    let mut engine = prefill_engine();
    let ids = router_ids(64, 2);
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    engine
        .step_gathered(s(0), &mut alone(), RouterOutput::Ids(&rows))
        .unwrap();
    let before = engine.plan(s(0)).unwrap().clone();

    let ragged: Vec<&[u32]> = rows.iter().map(|row| &row[..row.len() - 1]).collect();
    let mut unknown = ids.clone();
    unknown[5][7] = 32;
    let unknown_rows: Vec<&[u32]> = unknown.iter().map(Vec::as_slice).collect();
    for bad in [&ragged[..], &unknown_rows[..], &rows[..7]] {
        assert!(matches!(
            engine.step_gathered(s(0), &mut alone(), RouterOutput::Ids(bad)),
            Err(RuntimeError::InvalidInput(_))
        ));
        assert_eq!(engine.plan(s(0)), Some(&before));
    }
    // Ids that are not those the step was planned for.
    let other = router_ids(64, 3);
    let mut routed = Vec::new();
    for (rank, ids) in [(2, &other[2][..]), (8, rows[0]), (1, &rows[1][..8])] {
        assert!(matches!(
            engine.reroute(s(0), rank, ids, &mut routed),
            Err(RuntimeError::InvalidInput(_))
        ));
    }
    assert!(matches!(
        engine.reroute(StepId::new(4, 0), 0, rows[0], &mut routed),
        Err(RuntimeError::NoPlan { .. })
    ));
}

/// Every rank's engine gathers its own router output through the collective and gets the plan
/// an engine holding every rank makes from all of it, step after step.
#[test]
fn every_rank_gathers_the_same_load_and_computes_the_same_plan() {
    let ids = router_ids(256, 4);
    let config = EngineConfig {
        mode: Mode::Prefill,
        ..base_config()
    };
    let engines = Engine::group(config, PlaneOptions::default()).unwrap();
    let members = InProcessCollective::group(8);
    let plans = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .into_iter()
            .zip(members)
            .map(|(mut engine, mut member)| {
                let ids = &ids;
                scope.spawn(move || {
                    let rank = member.rank() as usize;
                    (0..3)
                        .map(|microbatch| {
                            let step = StepId::new(microbatch, 0);
                            let mine = [ids[rank].as_slice()];
                            engine
                                .step_gathered(step, &mut member, RouterOutput::Ids(&mine))
                                .unwrap();
                            engine.plan(step).unwrap().clone()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect::<Vec<_>>()
    });
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let mut engine = prefill_engine();
    for microbatch in 0..3 {
        let step = StepId::new(microbatch, 0);
        engine
            .step_gathered(step, &mut alone(), RouterOutput::Ids(&rows))
            .unwrap();
        for plans in &plans {
            assert_eq!(&plans[microbatch as usize], engine.plan(step).unwrap());
        }
    }
}

#[test]
fn a_rank_contributing_a_row_of_another_length_fails_every_rank() {
    let members = InProcessCollective::group(3);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|mut member| {
                scope.spawn(move || {
                    let row = vec![1u32; if member.rank() == 1 { 3 } else { 2 }];
                    let mut all = vec![0; 6];
                    member.all_gather(&row, &mut all)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        results
            .iter()
            .all(|result| matches!(result, Err(RuntimeError::Collective(_))))
    );
}

#[test]
fn the_trace_holds_every_load_and_the_metrics() {
    let mut engine = prefill_engine();
    let mut trace = TraceWriter::new(Vec::new(), 8, 32, 3, Some(4)).unwrap();
    for microbatch in [5, 9] {
        for layer in 0..2 {
            let ids = router_ids(32, microbatch * 3 + layer);
            let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            let step = StepId::new(microbatch, layer);
            let report = engine
                .step_gathered(step, &mut alone(), RouterOutput::Ids(&rows))
                .unwrap();
            trace.record(&report, engine.loads(step).unwrap()).unwrap();
            // A second record of the same step is not written twice.
            trace.record(&report, engine.loads(step).unwrap()).unwrap();
            if (microbatch, layer) == (9, 1) {
                let last = format!("{:?}", engine.loads(step).unwrap().row(7));
                let text = String::from_utf8(trace.finish().unwrap()).unwrap();
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines.len(), 1 + 4 * (8 + 1));
                assert_eq!(
                    lines[0],
                    r#"{"ultraep_trace": 1, "ranks": 8, "experts": 32, "layers": 3, "top_k": 4}"#
                );
                let row_7 = lines[lines.len() - 2];
                assert!(row_7.starts_with(r#"{"step": 1, "layer": 1, "rank": 7, "counts": ["#));
                assert!(row_7.ends_with(&format!("{}}}", last)), "{row_7}");
                assert!(lines[lines.len() - 1].contains(r#""metrics": {"initial_imbalance""#));
                return;
            }
        }
    }
    unreachable!("the loop returns at its last step");
}

/// A gathered row holds the local ranks' counts, from ids or given, then the digest; router
/// output of the wrong shape and a collective that does not fit the engine are refused.
#[test]
fn router_output_of_the_wrong_shape_is_refused_by_the_gathered_row() {
    let mut engine = prefill_engine();
    let token = [1u32, 2, 3, 1];
    let rows = [&token[..]; 8];
    let mut row = Vec::new();
    engine
        .gather_row(RouterOutput::Ids(&rows), &mut row)
        .unwrap();
    assert_eq!(row.len(), engine.gather_row_len());
    assert_eq!(row.len(), 8 * 32 + 2);
    assert_eq!(&row[..4], &[0, 2, 1, 1]);
    assert_eq!(
        row[row.len() - 2..],
        [engine.digest() as u32, (engine.digest() >> 32) as u32]
    );
    let counts = row[..8 * 32].to_vec();
    let mut from_counts = Vec::new();
    engine
        .gather_row(RouterOutput::Counts(&counts), &mut from_counts)
        .unwrap();
    assert_eq!(from_counts, row);

    let ragged = [&token[..3]; 8];
    let unknown = [&[1u32, 2, 3, 40][..]; 8];
    for bad in [
        RouterOutput::Ids(&rows[..1]),
        RouterOutput::Ids(&ragged),
        RouterOutput::Ids(&unknown),
        RouterOutput::Counts(&counts[1..]),
    ] {
        assert!(matches!(
            engine.gather_row(bad, &mut row),
            Err(RuntimeError::InvalidInput(_))
        ));
    }
    // A collective of two members for an engine that holds all eight ranks.
    let mut pair = InProcessCollective::group(2).remove(0);
    assert!(matches!(
        engine.step_gathered(s(0), &mut pair, RouterOutput::Ids(&rows)),
        Err(RuntimeError::InvalidInput(_))
    ));
    assert!(engine.plan(s(0)).is_none());
}
