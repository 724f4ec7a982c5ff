//! Several microbatches in flight: each keeps its own plans, a backward holds its slots, and a
//! step that would overwrite a microbatch still in flight is refused.

use ultraep_plan::LoadMatrix;
use ultraep_runtime::{Engine, EngineConfig, RuntimeError, StepId};

use crate::fixture::{base_config, engine_with as engine, finish_backward, loads, weights};

fn two_in_flight() -> Engine {
    engine(EngineConfig {
        microbatches_in_flight: 2,
        ..base_config()
    })
}

/// Every replica of `step` holds its master's weights.
fn replicas_in_place(engine: &Engine, step: StepId) -> usize {
    let plan = engine.plan(step).unwrap();
    let mut replicas = 0;
    for (index, instance) in plan.instances().iter().enumerate() {
        if let Some((rank, slot)) = engine.replica_slot(step, index as u32) {
            assert!(
                engine.read_slot(rank, slot).unwrap() == weights(step.layer, instance.expert, 0)
            );
            replicas += 1;
        }
    }
    replicas
}

fn hot_expert(engine: &Engine, step: StepId) -> u32 {
    let plan = engine.plan(step).unwrap();
    plan.instances()
        .iter()
        .find(|instance| instance.is_replica())
        .unwrap()
        .expert
}

#[test]
fn microbatches_keep_their_own_plans() {
    let mut engine = two_in_flight();
    let (hot_0, hot_9) = (loads(0), loads(9));
    let (a, b) = (StepId::new(0, 0), StepId::new(1, 0));
    engine
        .step(a, LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    engine
        .step(b, LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap();
    assert_eq!((hot_expert(&engine, a), hot_expert(&engine, b)), (0, 9));
    // Backward of the first microbatch, then of the second: each restores its own replicas.
    engine.restore(a).unwrap();
    assert!(replicas_in_place(&engine, a) >= 4);
    finish_backward(&mut engine, a);
    engine.restore(b).unwrap();
    assert!(replicas_in_place(&engine, b) >= 4);
    finish_backward(&mut engine, b);
}

#[test]
fn a_microbatch_beyond_those_in_flight_is_refused_until_one_finishes() {
    let mut engine = two_in_flight();
    let hot_0 = loads(0);
    let matrix = LoadMatrix::new(&hot_0, 8, 32).unwrap();
    engine.step(StepId::new(0, 1), matrix).unwrap();
    engine.step(StepId::new(1, 1), matrix).unwrap();
    let before = engine.plan(StepId::new(0, 1)).unwrap().clone();
    let refused = engine.step(StepId::new(2, 1), matrix).unwrap_err();
    assert_eq!(
        refused,
        RuntimeError::InFlight {
            step: StepId::new(2, 1),
            busy: 0
        }
    );
    assert_eq!(engine.plan(StepId::new(0, 1)), Some(&before));
    // Microbatch 0's backward of layer 1 ends: its place is free.
    engine.restore(StepId::new(0, 1)).unwrap();
    finish_backward(&mut engine, StepId::new(0, 1));
    engine.step(StepId::new(2, 1), matrix).unwrap();
    assert_eq!(engine.plan(StepId::new(0, 1)), None);
    assert!(matches!(
        engine.restore(StepId::new(0, 1)),
        Err(RuntimeError::NoPlan { .. })
    ));
}

#[test]
fn a_backward_holds_its_slots_against_other_steps() {
    let mut engine = two_in_flight();
    let (hot_0, hot_9) = (loads(0), loads(9));
    let held = StepId::new(0, 0);
    engine
        .step(held, LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    engine.restore(held).unwrap();
    let slots: Vec<_> = (0..64)
        .filter_map(|i| engine.replica_slot(held, i))
        .collect();
    // The next microbatch's forward runs meanwhile (as in overlapped pipeline schedules), in
    // two layers that want every slot.
    for layer in [1, 2] {
        let other = StepId::new(1, layer);
        engine
            .step(other, LoadMatrix::new(&hot_9, 8, 32).unwrap())
            .unwrap();
        let taken: Vec<_> = (0..64)
            .filter_map(|i| engine.replica_slot(other, i))
            .collect();
        assert!(
            taken.iter().all(|slot| !slots.contains(slot)),
            "{taken:?} / {slots:?}"
        );
    }
    assert!(replicas_in_place(&engine, held) >= 4);
    finish_backward(&mut engine, held);
}

#[test]
fn a_step_that_finds_every_slot_held_is_refused_and_changes_nothing() {
    let mut engine = engine(EngineConfig {
        slots_per_rank: 1,
        microbatches_in_flight: 2,
        ..base_config()
    });
    let (hot_0, hot_9) = (loads(0), loads(9));
    let held = StepId::new(0, 0);
    engine
        .step(held, LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    engine.restore(held).unwrap();
    let other = StepId::new(1, 1);
    let refused = engine
        .step(other, LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap_err();
    assert!(matches!(refused, RuntimeError::SlotsBusy { step, .. } if step == other));
    assert_eq!(engine.plan(other), None);
    assert!(replicas_in_place(&engine, held) >= 4);
    finish_backward(&mut engine, held);
    engine
        .step(other, LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap();
    assert!(replicas_in_place(&engine, other) >= 4);
}

#[test]
fn a_step_plans_at_once_and_its_weights_move_while_the_caller_works() {
    let mut engine = engine(base_config());
    let (hot_0, hot_9) = (loads(0), loads(9));
    engine
        .step(StepId::new(0, 0), LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    let in_flight = engine
        .begin_step(StepId::new(0, 1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap()
        .expect_err("expert 9's replicas must move");
    assert_eq!(in_flight.step(), StepId::new(0, 1));
    // Meanwhile layer 0 computes with its replicas, and nothing may change the engine.
    replicas_in_place(&engine, StepId::new(0, 0));
    assert!(matches!(
        engine.step(StepId::new(0, 2), LoadMatrix::new(&hot_0, 8, 32).unwrap()),
        Err(RuntimeError::TransferPending { .. })
    ));
    assert!(engine.plan(StepId::new(0, 1)).is_none(), "not in force yet");
    let report = engine.finish_step(in_flight).unwrap();
    assert!(report.copies > 0 && report.bytes_moved > 0);
    assert!(replicas_in_place(&engine, StepId::new(0, 1)) > 0);
    // A step with nothing to move completes in begin_step.
    let again = engine
        .begin_step(StepId::new(0, 1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap()
        .expect("the replicas are in place");
    assert_eq!(again.copies, 0);
}

#[test]
fn held_forward_slots_are_not_taken_until_the_forward_is_released() {
    let config = |hold_forward| EngineConfig {
        hold_forward,
        slots_per_rank: 1,
        mode: ultraep_runtime::Mode::Prefill,
        ..base_config()
    };
    let layer_0 = StepId::new(0, 0);
    let layer_1 = StepId::new(0, 1);
    let (first, second) = (loads(0), loads(9));
    // Without holding, layer 1 takes layer 0's slots.
    let mut unheld = engine(config(false));
    for (step, loads) in [(layer_0, &first), (layer_1, &second)] {
        unheld
            .step(step, LoadMatrix::new(loads, 8, 32).unwrap())
            .unwrap();
    }
    let mut engine = engine(config(true));
    engine
        .step(layer_0, LoadMatrix::new(&first, 8, 32).unwrap())
        .unwrap();
    let held = replicas_in_place(&engine, layer_0);
    assert!(matches!(
        engine.step(layer_1, LoadMatrix::new(&second, 8, 32).unwrap()),
        Err(RuntimeError::SlotsBusy { .. })
    ));
    assert_eq!(
        replicas_in_place(&engine, layer_0),
        held,
        "layer 0 keeps its weights"
    );
    engine.release_forward(layer_0).unwrap();
    engine
        .step(layer_1, LoadMatrix::new(&second, 8, 32).unwrap())
        .unwrap();
    assert!(replicas_in_place(&engine, layer_1) > 0);
}
