//! Layout changes: masters moving home between ranks in the background, switched in whole at a
//! step boundary, with the old layout complete until then.

use proptest::prelude::*;
use ultraep_plan::{ExpertLayout, LoadMatrix};
use ultraep_runtime::{Engine, EngineConfig, LayoutMove, Mode, PlaneOptions, RuntimeError, StepId};

use crate::fixture::{
    STATE, base_config, engine_with, finish_backward, loads, on_threads, s, weights,
};

/// The fixture's configuration with `staging` staging slots per rank.
fn config(staging: u16) -> EngineConfig {
    EngineConfig {
        staging_slots: staging,
        ..base_config()
    }
}

/// The fixture's contiguous layout with the experts of each pair swapped.
fn swapped(pairs: &[(u32, u32)]) -> ExpertLayout {
    let mut homes: Vec<u32> = (0..32).map(|expert| expert / 4).collect();
    for &(a, b) in pairs {
        homes.swap(a as usize, b as usize);
    }
    ExpertLayout::from_homes(8, homes).unwrap()
}

/// Every master of every layer holds its own version-0 weights.
fn assert_masters_intact(engine: &Engine) {
    for layer in 0..3 {
        for expert in 0..32 {
            assert_eq!(
                engine.read_master(layer, expert).unwrap().as_ref(),
                weights(layer, expert, 0),
                "layer {layer} expert {expert}"
            );
        }
    }
}

#[test]
fn a_swap_moves_masters_and_switches_at_once() {
    let mut engine = engine_with(config(2));
    let target = swapped(&[(0, 31), (5, 12)]);
    let moves = engine
        .begin_layout_change(1, target.clone())
        .unwrap()
        .to_vec();
    assert_eq!(
        moves,
        [
            LayoutMove {
                expert: 0,
                from: 0,
                to: 7,
                staging_slot: 2,
                index: 7
            },
            LayoutMove {
                expert: 5,
                from: 1,
                to: 3,
                staging_slot: 2,
                index: 4
            },
            LayoutMove {
                expert: 12,
                from: 3,
                to: 1,
                staging_slot: 2,
                index: 5
            },
            LayoutMove {
                expert: 31,
                from: 7,
                to: 0,
                staging_slot: 2,
                index: 4
            },
        ],
        "an arriving master takes the region (layer 1: index 4..8) its rank's departing one frees"
    );
    // One master per round: the budget is less than two states.
    let first = engine.advance_layout_change(STATE + 1).unwrap();
    assert_eq!(
        (first.copied, first.bytes, first.staged, first.moves),
        (1, STATE, 1, 4)
    );
    assert!(!first.ready());
    let refused = engine.switch_layout();
    assert!(
        matches!(refused, Err(RuntimeError::LayoutChange(_))),
        "{refused:?}"
    );
    assert_eq!(
        engine.master_home(1, 0).unwrap(),
        (0, 4),
        "the old layout is in force"
    );
    // A step meanwhile plans in the old layout and never uses a staging slot.
    let step = engine
        .step(s(1), LoadMatrix::new(&loads(0), 8, 32).unwrap())
        .unwrap();
    assert!(step.copies > 0);
    let plan = engine.plan(s(1)).unwrap();
    assert_eq!(
        plan.instances()
            .iter()
            .find(|i| i.expert == 0 && !i.is_replica())
            .unwrap()
            .rank,
        0
    );
    for instance in 0..plan.instances().len() as u32 {
        if let Some((_, slot)) = engine.replica_slot(s(1), instance) {
            assert!(slot < 2, "a replica took staging slot {slot}");
        }
    }
    engine.restore(s(1)).unwrap();
    finish_backward(&mut engine, s(1));
    let rest = engine.advance_layout_change(u64::MAX).unwrap();
    assert_eq!((rest.copied, rest.staged), (3, 4));
    assert!(rest.ready());
    engine.switch_layout().unwrap();

    assert_eq!(engine.layout(1).unwrap(), &target);
    assert_eq!(
        engine.layout(0).unwrap(),
        &ExpertLayout::contiguous(8, 4).unwrap()
    );
    assert_eq!(engine.master_home(1, 0).unwrap(), (7, 7));
    assert_eq!(engine.master_home(1, 31).unwrap(), (0, 4));
    assert_eq!(
        engine.master_home(0, 0).unwrap(),
        (0, 0),
        "other layers stay"
    );
    assert_masters_intact(&engine);
    assert!(
        engine.plan(s(1)).is_none(),
        "plans of the old layout are dropped"
    );
    assert!(engine.layout_change().is_none());

    // The new layout plans expert 0's master on rank 7, and replicas copy it from there.
    engine
        .step(s(1), LoadMatrix::new(&loads(0), 8, 32).unwrap())
        .unwrap();
    let plan = engine.plan(s(1)).unwrap();
    let master = plan
        .instances()
        .iter()
        .find(|i| i.expert == 0 && !i.is_replica())
        .unwrap();
    assert_eq!(master.rank, 7);
    for (instance, found) in plan.instances().iter().enumerate() {
        if found.expert == 0 {
            let bytes = engine.instance_weights(s(1), instance as u32).unwrap();
            assert_eq!(bytes.as_ref(), weights(1, 0, 0));
        }
    }
}

#[test]
fn a_layout_round_moves_masters_while_the_caller_computes() {
    let mut engine = engine_with(config(2));
    engine
        .begin_layout_change(0, swapped(&[(0, 31), (5, 12)]))
        .unwrap();
    // Two workers: the round runs on them, and the call returns at once.
    let round = engine.begin_layout_round(u64::MAX).unwrap().unwrap_err();
    let loads = loads(0);
    let refused = engine.step(s(1), LoadMatrix::new(&loads, 8, 32).unwrap());
    assert!(
        matches!(refused, Err(RuntimeError::LayoutChange(_))),
        "{refused:?}"
    );
    assert!(engine.write_master(0, 0, &weights(0, 0, 0)).is_err());
    assert!(engine.switch_layout().is_err());
    assert!(engine.masters_updated().is_err());
    assert_eq!(engine.read_master(2, 3).unwrap().as_ref(), weights(2, 3, 0));
    let progress = engine.finish_layout_round(round).unwrap();
    assert_eq!(
        (
            progress.copied,
            progress.bytes,
            progress.staged,
            progress.moves
        ),
        (4, 4 * STATE, 4, 4)
    );
    // Nothing left to copy: a round ends at once.
    let nothing = engine.begin_layout_round(u64::MAX).unwrap().unwrap();
    assert_eq!((nothing.copied, nothing.staged), (0, 4));
    engine.switch_layout().unwrap();
    assert_eq!(engine.master_home(0, 12).unwrap().0, 1);
    assert_masters_intact(&engine);
    engine
        .step(s(1), LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
}

#[test]
fn an_abandoned_change_leaves_the_layout_as_it_was() {
    let mut engine = engine_with(config(1));
    engine.begin_layout_change(1, swapped(&[(0, 31)])).unwrap();
    engine.advance_layout_change(STATE).unwrap();
    engine.abort_layout_change().unwrap();
    assert!(engine.layout_change().is_none());
    assert_eq!(
        engine.layout(1).unwrap(),
        &ExpertLayout::contiguous(8, 4).unwrap()
    );
    assert!(engine.switch_layout().is_err());
    assert!(engine.abort_layout_change().is_err());
    assert_masters_intact(&engine);
    // Another change may begin, and its copies start over.
    engine.begin_layout_change(1, swapped(&[(2, 9)])).unwrap();
    let progress = engine.advance_layout_change(u64::MAX).unwrap();
    assert_eq!((progress.copied, progress.staged), (2, 2));
    engine.switch_layout().unwrap();
    assert_masters_intact(&engine);
}

/// Forward holds of the plans a switch drops are released with them: the next step of the layer
/// finds its slots free.
#[test]
fn a_switch_releases_the_slots_of_the_plans_it_drops() {
    let mut engine = engine_with(EngineConfig {
        mode: Mode::Prefill,
        hold_forward: true,
        slots_per_rank: 1,
        ..config(1)
    });
    let loads = loads(0);
    // Every other rank's one slot takes a replica of the hot expert, held by the forward.
    let first = engine
        .step(s(0), LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    assert_eq!(first.copies, 7, "{first:?}");
    engine.begin_layout_change(0, swapped(&[(4, 31)])).unwrap();
    assert!(engine.advance_layout_change(u64::MAX).unwrap().ready());
    engine.switch_layout().unwrap();
    assert!(engine.release_forward(s(0)).is_err(), "its plan is gone");
    let next = StepId::new(1, 0);
    engine
        .step(next, LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    assert_masters_intact(&engine);
}

#[test]
fn changes_that_cannot_be_carried_out_are_refused() {
    let mut engine = engine_with(config(1));
    // Two masters arriving on rank 0 need two staging slots.
    let two = swapped(&[(0, 31), (1, 30)]);
    let refused = engine.begin_layout_change(0, two);
    assert!(matches!(refused, Err(RuntimeError::LayoutChange(m)) if m.contains("staging")));
    // A layout that moves a master without a swap changes two ranks' counts.
    let mut homes: Vec<u32> = (0..32).map(|expert| expert / 4).collect();
    homes[0] = 1;
    let uneven = ExpertLayout::from_homes(8, homes).unwrap();
    let refused = engine.begin_layout_change(0, uneven);
    assert!(
        matches!(refused, Err(RuntimeError::LayoutChange(m)) if m.contains("number of masters"))
    );
    let refused = engine.begin_layout_change(0, ExpertLayout::contiguous(4, 8).unwrap());
    assert!(matches!(refused, Err(RuntimeError::LayoutChange(_))));
    assert!(matches!(
        engine.advance_layout_change(1),
        Err(RuntimeError::LayoutChange(_))
    ));
    assert!(matches!(
        engine.switch_layout(),
        Err(RuntimeError::LayoutChange(_))
    ));
    // Without staging slots no master can move.
    let mut none = engine_with(config(0));
    assert!(none.begin_layout_change(0, swapped(&[(0, 31)])).is_err());
    // One change at a time.
    engine.begin_layout_change(0, swapped(&[(0, 31)])).unwrap();
    assert!(engine.begin_layout_change(2, swapped(&[(0, 31)])).is_err());
    assert_masters_intact(&engine);
}

#[test]
fn an_optimiser_step_makes_staged_masters_stale() {
    let mut engine = engine_with(config(1));
    engine.begin_layout_change(2, swapped(&[(3, 20)])).unwrap();
    assert!(engine.advance_layout_change(u64::MAX).unwrap().ready());
    // New weights for every master, as after an optimiser step.
    for layer in 0..3 {
        for expert in 0..32 {
            engine
                .write_master(layer, expert, &weights(layer, expert, 1))
                .unwrap();
        }
    }
    engine.masters_updated().unwrap();
    let refused = engine.switch_layout();
    assert!(matches!(refused, Err(RuntimeError::LayoutChange(m)) if m.contains("not staged")));
    let again = engine.advance_layout_change(u64::MAX).unwrap();
    assert_eq!(
        (again.copied, again.staged),
        (2, 2),
        "both stale copies are sent again"
    );
    engine.switch_layout().unwrap();
    assert_eq!(engine.master_home(2, 3).unwrap().0, 5);
    assert_eq!(engine.read_master(2, 3).unwrap().as_ref(), weights(2, 3, 1));
    assert_eq!(
        engine.read_master(2, 20).unwrap().as_ref(),
        weights(2, 20, 1)
    );
}

#[test]
fn a_switch_waits_for_open_backward_passes() {
    let mut engine = engine_with(config(1));
    engine
        .step(s(0), LoadMatrix::new(&loads(0), 8, 32).unwrap())
        .unwrap();
    engine.begin_layout_change(0, swapped(&[(0, 31)])).unwrap();
    assert!(engine.advance_layout_change(u64::MAX).unwrap().ready());
    let refused = engine.switch_layout();
    assert!(matches!(refused, Err(RuntimeError::LayoutChange(m)) if m.contains("backward")));
    engine.restore(s(0)).unwrap();
    finish_backward(&mut engine, s(0));
    engine.switch_layout().unwrap();
    assert_eq!(engine.master_home(0, 0).unwrap().0, 7);
    assert_masters_intact(&engine);
}

#[test]
fn a_failed_round_leaves_the_old_layout_whole() {
    let mut engine = engine_with(EngineConfig {
        mode: Mode::Prefill,
        ..config(1)
    });
    engine.begin_layout_change(1, swapped(&[(2, 9)])).unwrap();
    engine.inject_transfer_failure(0);
    assert!(engine.advance_layout_change(u64::MAX).is_err());
    assert!(engine.switch_layout().is_err());
    assert_eq!(engine.master_home(1, 2).unwrap().0, 0);
    assert_masters_intact(&engine);
    assert!(engine.advance_layout_change(u64::MAX).unwrap().ready());
    engine.switch_layout().unwrap();
    assert_eq!(engine.master_home(1, 2).unwrap().0, 2);
    assert_masters_intact(&engine);
}

/// Every rank a thread with only its own memory: every rank makes the same calls, and after the
/// switch each holds the masters that moved to it, with the same digest.
#[test]
fn ranks_of_a_group_switch_together() {
    let config = EngineConfig {
        mode: Mode::Prefill,
        ..config(1)
    };
    let engines = Engine::group(config, PlaneOptions::default()).unwrap();
    let target = swapped(&[(1, 17), (6, 29)]);
    let digests = on_threads(engines.into_iter().enumerate(), |(rank, mut engine)| {
        let rank = rank as u32;
        for layer in 0..3 {
            for expert in rank * 4..rank * 4 + 4 {
                engine
                    .write_master(layer, expert, &weights(layer, expert, 0))
                    .unwrap();
            }
        }
        engine.begin_layout_change(0, target.clone()).unwrap();
        while !engine.advance_layout_change(STATE).unwrap().ready() {}
        engine.switch_layout().unwrap();
        for expert in 0..32 {
            let (home, _) = engine.master_home(0, expert).unwrap();
            assert_eq!(home, target.home(expert));
            if home == rank {
                assert_eq!(
                    engine.read_master(0, expert).unwrap().as_ref(),
                    weights(0, expert, 0)
                );
            }
        }
        engine.digest()
    });
    assert!(
        digests.windows(2).all(|pair| pair[0] == pair[1]),
        "{digests:x?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Under random swaps, budgets and failed rounds, every master stays complete: the old
    /// layout's until the switch, the new one's after, and a switch happens only when ready.
    #[test]
    fn no_master_is_ever_lost(
        pairs in proptest::collection::vec((0u32..32, 0u32..32), 1..6),
        budget_states in 1u64..4,
        failures in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let mut engine = engine_with(EngineConfig { mode: Mode::Prefill, ..config(8) });
        let target = swapped(&pairs);
        let moves = engine.begin_layout_change(1, target.clone()).unwrap().len();
        let mut round = 0;
        loop {
            if failures[round % failures.len()] && round < 16 {
                engine.inject_transfer_failure(0);
            }
            round += 1;
            let progress = engine.advance_layout_change(budget_states * STATE);
            assert_masters_intact(&engine);
            match progress {
                Ok(progress) if progress.ready() => break,
                Ok(_) => {
                    prop_assert!(engine.switch_layout().is_err());
                }
                Err(_) if moves == 0 => unreachable!("nothing to copy never fails"),
                Err(_) => prop_assert!(engine.switch_layout().is_err()),
            }
        }
        engine.switch_layout().unwrap();
        prop_assert_eq!(engine.layout(1).unwrap(), &target);
        assert_masters_intact(&engine);
    }
}
