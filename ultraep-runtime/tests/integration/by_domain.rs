//! Steps planned by domain: every rank of a group spanning two domains plans its own domain from
//! the experts' totals and gathers a few cells, and gets the plan, the slots and the reroute of
//! an engine that saw the whole matrix.

use ultraep_plan::ExpertLayout;
use ultraep_runtime::{
    Collective, Dtype, Engine, EngineConfig, InProcessCollective, Mode, ModelShape, PlaneOptions,
    Preset, RouterOutput, RuntimeError, StepId,
};

use crate::fixture::on_threads;

pub(crate) const RANKS: u32 = 16;
const EXPERTS: u32 = 64;
const TOP_K: u32 = 2;

/// Two HGX nodes (two domains of 8 ranks), 4 experts a rank, prefill, replicas not preferred
/// where they already are (planning by domain does not read slot residency).
pub(crate) fn config() -> EngineConfig {
    EngineConfig::builder(
        Preset::HgxH100.topology(2).unwrap(),
        ExpertLayout::contiguous(RANKS, EXPERTS / RANKS).unwrap(),
        ModelShape {
            layers: 2,
            experts: EXPERTS,
            top_k: TOP_K,
            hidden: 16,
            expert_width: 16,
            dtype: Dtype::F32,
        },
    )
    .mode(Mode::Prefill)
    .prefer_resident_replicas(false)
    .build()
    .unwrap()
}

/// Rank `rank`'s top-2 ids in `step`: every token wants a hot expert of the first domain (3 or
/// 20) and another that depends on the rank and the step.
pub(crate) fn ids(rank: u32, step: u32) -> Vec<u32> {
    (0..300u32)
        .flat_map(|token| {
            let hot = if (token + step).is_multiple_of(3) {
                20
            } else {
                3
            };
            let mut other = (token * 7 + rank * 5 + step * 11) % EXPERTS;
            if other == hot {
                other = (other + 1) % EXPERTS;
            }
            [hot, other]
        })
        .collect()
}

fn weights(layer: u32, expert: u32, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i as u32 ^ (layer * 31 + expert * 3)) as u8)
        .collect()
}

#[test]
fn ranks_planning_by_domain_get_the_whole_matrixs_plan_and_reroute() {
    let config = config();
    let state = config.model.expert_state().unwrap().bytes() as usize;
    // The reference: one engine that sees the whole matrix.
    let mut whole = Engine::new(config.clone()).unwrap();
    let mut alone = InProcessCollective::group(1).remove(0);
    let engines = Engine::group(config, PlaneOptions::default()).unwrap();
    let members = InProcessCollective::group(RANKS);
    let steps: Vec<StepId> = (0..3)
        .flat_map(|m| (0..2).map(move |l| StepId::new(m, l)))
        .collect();
    let mut expected = Vec::new();
    for &step in &steps {
        let all: Vec<Vec<u32>> = (0..RANKS).map(|rank| ids(rank, step.microbatch)).collect();
        let refs: Vec<&[u32]> = all.iter().map(Vec::as_slice).collect();
        whole
            .step_gathered(step, &mut alone, RouterOutput::Ids(&refs))
            .unwrap();
        let mut routed = Vec::new();
        let mut per_rank = Vec::new();
        for rank in 0..RANKS {
            whole
                .reroute(step, rank, &all[rank as usize], &mut routed)
                .unwrap();
            per_rank.push(routed.clone());
        }
        expected.push((whole.plan(step).unwrap().clone(), per_rank));
    }
    let full_matrix_bytes = 4 * u64::from(RANKS * EXPERTS);
    let results = on_threads(
        engines.into_iter().zip(members),
        |(mut engine, mut member)| {
            let rank = member.rank();
            for layer in 0..2 {
                for expert in rank * 4..rank * 4 + 4 {
                    engine
                        .write_master(layer, expert, &weights(layer, expert, state))
                        .unwrap();
                }
            }
            let mut routed = Vec::new();
            let mut most = 0;
            for (&step, (plan, reroutes)) in steps.iter().zip(&expected) {
                let mine = ids(rank, step.microbatch);
                engine
                    .step_by_domain(step, &mut member, RouterOutput::Ids(&[&mine]))
                    .unwrap();
                let planned = engine.plan(step).unwrap().clone();
                assert_eq!(planned.instances(), plan.instances(), "{step}");
                assert!(planned.metrics().replicas > 0);
                engine.reroute(step, rank, &mine, &mut routed).unwrap();
                assert_eq!(routed, reroutes[rank as usize], "rank {rank} {step}");
                assert!(engine.loads(step).is_none());
                // Replicas on this rank hold their masters' weights.
                for (index, instance) in planned.instances().iter().enumerate() {
                    if instance.rank == rank && instance.is_replica() {
                        let bytes = engine.instance_weights(step, index as u32).unwrap();
                        assert_eq!(bytes.as_ref(), weights(step.layer, instance.expert, state));
                    }
                }
                most = most.max(engine.domain_gather_bytes());
            }
            (engine.digest(), most)
        },
    );
    assert!(
        results.windows(2).all(|pair| pair[0].0 == pair[1].0),
        "digests differ"
    );
    let most = results.iter().map(|&(_, bytes)| bytes).max().unwrap();
    assert!(
        most < full_matrix_bytes,
        "{most} bytes against {full_matrix_bytes}"
    );
}

#[test]
fn planning_by_domain_is_refused_for_an_engine_of_several_ranks() {
    let mut engine = Engine::new(config()).unwrap();
    let mut members = InProcessCollective::group(RANKS);
    let refused = engine.step_by_domain(
        StepId::new(0, 0),
        &mut members[0],
        RouterOutput::Ids(&[&ids(0, 0)]),
    );
    assert!(
        matches!(refused, Err(RuntimeError::InvalidInput(_))),
        "{refused:?}"
    );
}

/// An even load needs no replica: no prefix sum to exchange, and every rank still plans alike.
#[test]
fn an_even_load_plans_by_domain_without_replicas() {
    let engines = Engine::group(config(), PlaneOptions::default()).unwrap();
    let members = InProcessCollective::group(RANKS);
    on_threads(
        engines.into_iter().zip(members),
        |(mut engine, mut member)| {
            let rank = member.rank();
            let even: Vec<u32> = (0..64u32)
                .flat_map(|token| [token, (token + 1 + rank) % EXPERTS])
                .collect();
            let report = engine
                .step_by_domain(StepId::new(0, 0), &mut member, RouterOutput::Ids(&[&even]))
                .unwrap();
            assert_eq!(report.metrics.replicas, 0);
            let mut routed = Vec::new();
            engine
                .reroute(StepId::new(0, 0), rank, &even, &mut routed)
                .unwrap();
            // Every id goes to its expert's master, which is instance number `expert`.
            assert_eq!(routed, even);
        },
    );
}
