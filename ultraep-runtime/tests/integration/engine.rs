//! The engine on CPU ranks: replicas hold their master's bytes, slots are shared and reused, and
//! bad input or a failed transfer leaves the engine usable with its previous state.

use ultraep_plan::LoadMatrix;
use ultraep_runtime::{Engine, EngineConfig, Mode, ModelShape, RuntimeError};
use ultraep_topo::Preset;

use crate::fixture::{GRADIENT, STATE, base_config, engine, finish_backward, loads, s, weights};

/// Every replica of the engine's current plan holds its master's weights in its slot.
fn replicas_hold_their_weights(engine: &Engine, layer: u32, version: u32) {
    let plan = engine.plan(s(layer)).unwrap();
    let mut replicas = 0;
    for (index, instance) in plan.instances().iter().enumerate() {
        if let Some((rank, slot)) = engine.replica_slot(s(layer), index as u32) {
            assert_eq!(rank, instance.rank);
            assert!(
                engine.read_slot(rank, slot).unwrap() == weights(layer, instance.expert, version)
            );
            replicas += 1;
        }
    }
    assert_eq!(replicas, plan.metrics().replicas);
}

#[test]
fn a_step_puts_every_replica_in_a_slot() {
    let mut engine = engine();
    let loads = loads(0);
    let report = engine
        .step(s(0), LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    assert!(report.metrics.replicas >= 4, "{report:?}");
    assert!(report.metrics.imbalance() < report.metrics.initial_imbalance());
    assert_eq!(
        (report.copies, report.copies_skipped),
        (report.metrics.replicas, 0)
    );
    assert!(report.bytes_moved >= u64::from(report.copies) * STATE);
    replicas_hold_their_weights(&engine, 0, 0);
}

#[test]
fn slots_holding_current_weights_are_reused_without_copies() {
    let mut engine = engine();
    let loads = loads(0);
    let matrix = LoadMatrix::new(&loads, 8, 32).unwrap();
    let first = engine.step(s(0), matrix).unwrap();
    let again = engine.step(s(0), matrix).unwrap();
    assert_eq!((again.copies, again.copies_skipped), (0, first.copies));
    assert_eq!(again.bytes_moved, 0);
    replicas_hold_their_weights(&engine, 0, 0);
}

#[test]
fn layers_share_slots() {
    let mut engine = engine();
    let (hot_0, hot_9, hot_18) = (loads(0), loads(9), loads(18));
    let first = engine
        .step(s(0), LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    // Another layer's replicas take the free slots; layer 0's copies survive it...
    let other = engine
        .step(s(1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap();
    assert!(other.copies > 0);
    replicas_hold_their_weights(&engine, 1, 0);
    let back = engine
        .step(s(0), LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    assert_eq!((back.copies, back.copies_skipped), (0, first.copies));
    // ...but with two slots per rank, a third layer must evict, and layer 0 copies again.
    engine
        .step(s(1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap();
    let third = engine
        .step(s(2), LoadMatrix::new(&hot_18, 8, 32).unwrap())
        .unwrap();
    assert!(third.copies > 0);
    replicas_hold_their_weights(&engine, 2, 0);
    let evicted = engine
        .step(s(0), LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    assert!(evicted.copies > 0, "{evicted:?}");
    replicas_hold_their_weights(&engine, 0, 0);
}

#[test]
fn new_master_weights_invalidate_copies() {
    let mut engine = engine();
    let loads = loads(0);
    let matrix = LoadMatrix::new(&loads, 8, 32).unwrap();
    let first = engine.step(s(0), matrix).unwrap();
    engine.write_master(0, 0, &weights(0, 0, 1)).unwrap();
    assert!(matches!(
        engine.step(s(0), matrix),
        Err(RuntimeError::MastersChanged)
    ));
    engine.masters_updated().unwrap();
    let after = engine.step(s(0), matrix).unwrap();
    assert_eq!(
        after.copies, first.copies,
        "every replica of expert 0 is copied again"
    );
    for (index, instance) in engine.plan(s(0)).unwrap().instances().iter().enumerate() {
        if let Some((rank, slot)) = engine.replica_slot(s(0), index as u32) {
            assert!(
                engine.read_slot(rank, slot).unwrap()
                    == weights(0, instance.expert, u32::from(instance.expert == 0))
            );
        }
    }
}

#[test]
fn bad_input_leaves_the_engine_as_it_was() {
    let mut engine = engine();
    let loads = loads(0);
    engine
        .step(s(0), LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    let before = engine.plan(s(0)).unwrap().clone();
    let short = vec![1u32; 8 * 31];
    assert!(matches!(
        engine.step(s(0), LoadMatrix::new(&short, 8, 31).unwrap()),
        Err(RuntimeError::InvalidInput(_))
    ));
    assert!(matches!(
        engine.step(s(7), LoadMatrix::new(&loads, 8, 32).unwrap()),
        Err(RuntimeError::UnknownLayer {
            layer: 7,
            layers: 3
        })
    ));
    assert!(matches!(
        engine.write_master(0, 0, &[1, 2, 3]),
        Err(RuntimeError::WrongSize { .. })
    ));
    assert_eq!(engine.plan(s(0)), Some(&before));
    replicas_hold_their_weights(&engine, 0, 0);
}

#[test]
fn a_failed_transfer_keeps_the_previous_plan_and_the_engine_recovers() {
    let mut engine = engine();
    let hot_0 = loads(0);
    let hot_9 = loads(9);
    // Layer 1 first runs with expert 0 hot, then its next step (expert 9 hot) fails.
    engine
        .step(s(1), LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    let before = engine.plan(s(1)).unwrap().clone();
    engine.inject_transfer_failure(3);
    let error = engine
        .step(s(1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Transfer(_)), "{error}");
    assert_eq!(
        engine.plan(s(1)),
        Some(&before),
        "the previous plan stays in force"
    );
    // The same step succeeds when retried, with every replica's weights in place.
    let retried = engine
        .step(s(1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap();
    assert!(retried.copies > 0);
    replicas_hold_their_weights(&engine, 1, 0);
}

#[test]
fn configurations_that_do_not_fit_are_refused() {
    let config = EngineConfig {
        topology: Preset::HgxH100.topology(2).unwrap(),
        ..base_config()
    };
    assert!(matches!(
        Engine::new(config.clone()),
        Err(RuntimeError::InvalidConfig(_))
    ));
    let no_layers = EngineConfig {
        topology: Preset::HgxH100.topology(1).unwrap(),
        model: ModelShape {
            layers: 0,
            ..config.model
        },
        ..config
    };
    assert!(matches!(
        Engine::new(no_layers),
        Err(RuntimeError::InvalidConfig(_))
    ));
}

#[test]
fn restore_brings_back_what_later_layers_took() {
    let mut engine = engine();
    let (hot_0, hot_9, hot_18) = (loads(0), loads(9), loads(18));
    // Forward through three layers: with two slots per rank, layer 2 takes layer 0's slots.
    let first = engine
        .step(s(0), LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    engine
        .step(s(1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap();
    engine
        .step(s(2), LoadMatrix::new(&hot_18, 8, 32).unwrap())
        .unwrap();
    // Backward runs the layers in reverse: layer 2's replicas are all still there...
    let two = engine.restore(s(2)).unwrap();
    assert_eq!((two.copies, two.bytes_moved), (0, 0));
    replicas_hold_their_weights(&engine, 2, 0);
    finish_backward(&mut engine, s(2));
    engine.restore(s(1)).unwrap();
    finish_backward(&mut engine, s(1));
    // ...layer 0's were partly overwritten and come back, with the same plan.
    let plan = engine.plan(s(0)).unwrap().clone();
    let zero = engine.restore(s(0)).unwrap();
    assert!(zero.copies > 0);
    assert_eq!(zero.copies + zero.copies_skipped, first.copies);
    assert_eq!(engine.plan(s(0)), Some(&plan));
    replicas_hold_their_weights(&engine, 0, 0);
}

#[test]
fn restoring_a_layer_that_never_ran_is_an_error() {
    let mut engine = engine();
    assert!(matches!(
        engine.restore(s(1)),
        Err(RuntimeError::NoPlan { step }) if step == s(1)
    ));
    assert!(matches!(
        engine.restore(s(9)),
        Err(RuntimeError::UnknownLayer { .. })
    ));
}

#[test]
fn replica_gradients_reduce_into_their_masters() {
    let mut engine = engine();
    let loads = loads(0);
    engine
        .step(s(0), LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    let plan = engine.plan(s(0)).unwrap().clone();
    let floats = (GRADIENT / 4) as usize;
    // Small whole numbers: the sums are exact whatever the order, so the expected values need
    // no knowledge of it (the order itself is checked bit for bit in ultraep-xfer's tests).
    let master = |expert: u32, i: usize| (expert as usize * 3 + i % 17) as f32;
    let replica = |instance: usize, i: usize| (instance % 7 + i % 5) as f32;
    for expert in 0..32 {
        let values: Vec<f32> = (0..floats).map(|i| master(expert, i)).collect();
        engine.write_master_gradient(0, expert, &values).unwrap();
    }
    engine.restore(s(0)).unwrap();
    let mut replicas_of = vec![Vec::new(); 32];
    for (index, instance) in plan.instances().iter().enumerate() {
        if instance.is_replica() {
            let values: Vec<f32> = (0..floats).map(|i| replica(index, i)).collect();
            engine
                .write_replica_gradient(s(0), index as u32, &values)
                .unwrap();
            replicas_of[instance.expert as usize].push(index);
        }
    }
    engine.reduce_gradients(s(0)).unwrap();
    for expert in 0..32u32 {
        let got = engine.read_master_gradient(0, expert).unwrap();
        for (i, value) in got.iter().enumerate() {
            let expected = master(expert, i)
                + replicas_of[expert as usize]
                    .iter()
                    .map(|&r| replica(r, i))
                    .sum::<f32>();
            assert_eq!(*value, expected, "expert {expert} value {i}");
        }
    }
    // The backward is over: a second reduction is refused and changes nothing.
    let before = engine.read_master_gradient(0, 0).unwrap();
    assert!(matches!(
        engine.reduce_gradients(s(0)),
        Err(RuntimeError::InvalidInput(_))
    ));
    assert_eq!(engine.read_master_gradient(0, 0).unwrap(), before);
}

#[test]
fn a_missing_replica_gradient_fails_the_reduction_and_changes_nothing() {
    let mut engine = engine();
    let loads = loads(0);
    engine
        .step(s(0), LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    let ones = vec![1f32; (GRADIENT / 4) as usize];
    for expert in 0..32 {
        engine.write_master_gradient(0, expert, &ones).unwrap();
    }
    // Replica gradients need the backward to have begun.
    assert!(matches!(
        engine.write_replica_gradient(s(0), 1, &ones),
        Err(RuntimeError::InvalidInput(_))
    ));
    engine.restore(s(0)).unwrap();
    let replicas: Vec<u32> = (0..engine.plan(s(0)).unwrap().instances().len() as u32)
        .filter(|&i| engine.replica_slot(s(0), i).is_some())
        .collect();
    assert!(replicas.len() >= 2);
    for &instance in &replicas[1..] {
        engine
            .write_replica_gradient(s(0), instance, &ones)
            .unwrap();
    }
    assert!(matches!(
        engine.reduce_gradients(s(0)),
        Err(RuntimeError::SlotNotReady { .. })
    ));
    for expert in 0..32 {
        assert_eq!(engine.read_master_gradient(0, expert).unwrap(), ones);
    }
    // The gradient arrives late; the reduction then goes through.
    engine
        .write_replica_gradient(s(0), replicas[0], &ones)
        .unwrap();
    engine.reduce_gradients(s(0)).unwrap();
    let hot = engine.read_master_gradient(0, 0).unwrap();
    assert!(hot.iter().all(|&v| v == 1.0 + replicas.len() as f32));
}

#[test]
fn gradients_need_a_training_engine() {
    let mut engine = Engine::new(EngineConfig {
        mode: Mode::Prefill,
        ..base_config()
    })
    .unwrap();
    assert!(matches!(
        engine.read_master_gradient(0, 0),
        Err(RuntimeError::InvalidConfig(_))
    ));
}

#[test]
fn weights_of_a_replica_whose_slot_was_taken_are_refused_until_restored() {
    let mut engine = engine();
    let (hot_0, hot_9, hot_18) = (loads(0), loads(9), loads(18));
    engine
        .step(s(0), LoadMatrix::new(&hot_0, 8, 32).unwrap())
        .unwrap();
    let replicas: Vec<u32> = (0..64)
        .filter(|&i| engine.replica_slot(s(0), i).is_some())
        .collect();
    for &instance in &replicas {
        engine.instance_weights(s(0), instance).unwrap();
    }
    // Two more layers take every slot layer 0's replicas were in.
    engine
        .step(s(1), LoadMatrix::new(&hot_9, 8, 32).unwrap())
        .unwrap();
    engine
        .step(s(2), LoadMatrix::new(&hot_18, 8, 32).unwrap())
        .unwrap();
    let stale: Vec<u32> = replicas
        .iter()
        .copied()
        .filter(|&i| engine.instance_weights(s(0), i).is_err())
        .collect();
    assert!(!stale.is_empty(), "layer 2 took some of layer 0's slots");
    // A master update makes its replicas stale too.
    engine.write_master(2, 18, &weights(2, 18, 1)).unwrap();
    let hot_replica = (0..64)
        .find(|&i| {
            engine.replica_slot(s(2), i).is_some()
                && engine.plan(s(2)).unwrap().instances()[i as usize].expert == 18
        })
        .unwrap();
    assert!(matches!(
        engine.instance_weights(s(2), hot_replica),
        Err(RuntimeError::MastersChanged)
    ));
    engine.masters_updated().unwrap();
    assert!(matches!(
        engine.instance_weights(s(2), hot_replica),
        Err(RuntimeError::StaleReplica { .. })
    ));
    // Restoring layer 0 makes every replica readable again, with its master's weights.
    finish_backward_after_restore(&mut engine, s(2));
    finish_backward_after_restore(&mut engine, s(1));
    engine.restore(s(0)).unwrap();
    for &instance in &replicas {
        let expert = engine.plan(s(0)).unwrap().instances()[instance as usize].expert;
        assert!(engine.instance_weights(s(0), instance).unwrap() == weights(0, expert, 0));
    }
}

fn finish_backward_after_restore(engine: &mut Engine, step: ultraep_runtime::StepId) {
    engine.restore(step).unwrap();
    finish_backward(engine, step);
}
