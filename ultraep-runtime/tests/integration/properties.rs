//! Property tests of the engine: random sequences of steps, restores, reductions and master
//! updates over several microbatches in flight. Whatever the sequence, a replica that may be used
//! holds its master's current weights, backward passes never share a slot, reductions add exactly
//! the replicas' gradients, and a refused call changes no plan.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use ultraep_plan::LoadMatrix;
use ultraep_runtime::{Engine, EngineConfig, ModelShape, RuntimeError, StepId};
use ultraep_xfer::TransferConfig;

use crate::fixture::base_config;

const LAYERS: u32 = 3;
const EXPERTS: u32 = 32;
/// Experts of 16 x 16 in FP32: 3 KiB of weights and as much gradient.
const FLOATS: usize = 3 * 16 * 16;

#[derive(Debug, Clone)]
enum Op {
    Step {
        microbatch: u32,
        layer: u32,
        hot: usize,
    },
    /// A step that has a plan (or, for `pick % 4 == 0` or when none has, any step).
    Restore {
        pick: usize,
    },
    /// A step whose backward is open (or, for `pick % 4 == 0` or when none is, any step).
    Reduce {
        pick: usize,
    },
    NewMaster {
        layer: u32,
        expert: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..3, 0..LAYERS, 0usize..32)
            .prop_map(|(microbatch, layer, hot)| Op::Step { microbatch, layer, hot }),
        2 => any::<usize>().prop_map(|pick| Op::Restore { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Reduce { pick }),
        1 => (0..LAYERS, 0..EXPERTS).prop_map(|(layer, expert)| Op::NewMaster { layer, expert }),
    ]
}

fn weights(layer: u32, expert: u32, version: u32) -> Vec<u8> {
    (0..FLOATS as u32 * 4)
        .map(|i| (i ^ (layer * 97 + expert * 13 + version * 7)) as u8)
        .collect()
}

fn loads(hot: usize) -> Vec<u32> {
    let mut loads = vec![40u32; 8 * 32];
    for source in 0..8 {
        loads[source * 32 + hot] = 3000;
        loads[source * 32 + (hot + 5) % 32] = 900;
    }
    loads
}

/// What the test knows of the engine: weights versions and the steps whose backward is open.
struct Model {
    versions: BTreeMap<(u32, u32), u32>,
    holding: BTreeSet<StepId>,
}

impl Model {
    fn version(&self, layer: u32, expert: u32) -> u32 {
        self.versions.get(&(layer, expert)).copied().unwrap_or(0)
    }
}

fn replicas(engine: &Engine, step: StepId) -> Vec<(u32, u32, (u32, u16))> {
    let Some(plan) = engine.plan(step) else {
        return Vec::new();
    };
    plan.instances()
        .iter()
        .enumerate()
        .filter_map(|(index, instance)| {
            engine
                .replica_slot(step, index as u32)
                .map(|slot| (index as u32, instance.expert, slot))
        })
        .collect()
}

/// Every replica of `step` holds its master's current weights.
fn in_place(engine: &Engine, model: &Model, step: StepId) -> Result<(), TestCaseError> {
    for (_, expert, (rank, slot)) in replicas(engine, step) {
        let held = engine
            .read_slot(rank, slot)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            held == weights(step.layer, expert, model.version(step.layer, expert)),
            "{step}: the replica of expert {expert} in slot {slot} of rank {rank} is stale"
        );
    }
    Ok(())
}

fn every_step() -> impl Iterator<Item = StepId> {
    (0..3).flat_map(|m| (0..LAYERS).map(move |l| StepId::new(m, l)))
}

fn plans(engine: &Engine) -> Vec<Option<ultraep_plan::Plan>> {
    every_step()
        .map(|step| engine.plan(step).cloned())
        .collect()
}

/// One of `among` chosen by `pick`, or any step (always a quarter of the time).
fn choose(pick: usize, among: &[StepId]) -> StepId {
    if among.is_empty() || pick.is_multiple_of(4) {
        let all: Vec<StepId> = every_step().collect();
        all[pick / 4 % all.len()]
    } else {
        among[pick / 4 % among.len()]
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_sequence_keeps_the_engine_consistent(ops in prop::collection::vec(op(), 1..16)) {
        let config = EngineConfig {
            microbatches_in_flight: 2,
            model: ModelShape { hidden: 16, expert_width: 16, ..base_config().model },
            transfer: TransferConfig { tile_bytes: 1024, chunk_bytes: 2048, ..TransferConfig::default() },
            ..base_config()
        };
        let mut engine = Engine::new(config).unwrap();
        let mut model = Model { versions: BTreeMap::new(), holding: BTreeSet::new() };
        for layer in 0..LAYERS {
            for expert in 0..EXPERTS {
                engine.write_master(layer, expert, &weights(layer, expert, 0)).unwrap();
            }
        }
        for op in ops {
            let before = plans(&engine);
            let refused = match op {
                Op::Step { microbatch, layer, hot } => {
                    let step = StepId::new(microbatch, layer);
                    let loads = loads(hot);
                    match engine.step(step, LoadMatrix::new(&loads, 8, 32).unwrap()) {
                        Ok(report) => {
                            prop_assert_eq!(report.metrics.replicas as usize, replicas(&engine, step).len());
                            in_place(&engine, &model, step)?;
                            false
                        }
                        Err(RuntimeError::InFlight { busy, .. }) => {
                            prop_assert!(engine.plan(StepId::new(busy, layer)).is_some());
                            true
                        }
                        Err(RuntimeError::SlotsBusy { .. }) => {
                            prop_assert!(!model.holding.is_empty());
                            true
                        }
                        Err(RuntimeError::InvalidInput(_)) => {
                            prop_assert!(model.holding.contains(&step), "replanning a step in its backward");
                            true
                        }
                        Err(error) => return Err(TestCaseError::fail(error.to_string())),
                    }
                }
                Op::Restore { pick } => {
                    let planned: Vec<StepId> =
                        every_step().filter(|&step| engine.plan(step).is_some()).collect();
                    let step = choose(pick, &planned);
                    match engine.restore(step) {
                        Ok(_) => {
                            model.holding.insert(step);
                            in_place(&engine, &model, step)?;
                            false
                        }
                        Err(RuntimeError::NoPlan { .. }) => {
                            prop_assert!(engine.plan(step).is_none());
                            true
                        }
                        Err(RuntimeError::SlotsBusy { .. }) => {
                            prop_assert!(model.holding.iter().any(|&held| held != step));
                            true
                        }
                        // Its backward already ended.
                        Err(RuntimeError::InvalidInput(_)) => true,
                        Err(error) => return Err(TestCaseError::fail(error.to_string())),
                    }
                }
                Op::Reduce { pick } => {
                    let open: Vec<StepId> = model.holding.iter().copied().collect();
                    let step = choose(pick, &open);
                    let layer = step.layer;
                    if model.holding.contains(&step) {
                        let replicas = replicas(&engine, step);
                        let mut expected: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
                        for &(instance, expert, _) in &replicas {
                            let master = expected.entry(expert).or_insert_with(|| {
                                engine.read_master_gradient(layer, expert).unwrap()
                            });
                            let gradient: Vec<f32> =
                                (0..FLOATS).map(|i| ((instance as usize + i) % 7) as f32).collect();
                            for (sum, g) in master.iter_mut().zip(&gradient) {
                                *sum += g;
                            }
                            engine.write_replica_gradient(step, instance, &gradient).unwrap();
                        }
                        engine.reduce_gradients(step).unwrap();
                        model.holding.remove(&step);
                        for (expert, sum) in expected {
                            prop_assert_eq!(engine.read_master_gradient(layer, expert).unwrap(), sum);
                        }
                        false
                    } else {
                        prop_assert!(engine.reduce_gradients(step).is_err());
                        true
                    }
                }
                Op::NewMaster { layer, expert } => {
                    let version = model.version(layer, expert) + 1;
                    engine.write_master(layer, expert, &weights(layer, expert, version)).unwrap();
                    engine.masters_updated().unwrap();
                    model.versions.insert((layer, expert), version);
                    false
                }
            };
            if refused {
                prop_assert_eq!(plans(&engine), before, "a refused call changed a plan");
            }
            // Backward passes in progress never share a slot, and keep their plans.
            let mut taken = BTreeSet::new();
            for &held in &model.holding {
                prop_assert!(engine.plan(held).is_some(), "{held} lost its plan in its backward");
                for (_, _, slot) in replicas(&engine, held) {
                    prop_assert!(taken.insert(slot), "slot {slot:?} shared by two backward passes");
                }
            }
        }
    }
}
