//! Host-driven engines: the engine plans and says what to move, the caller moves the bytes (here
//! plain vectors standing for a framework's tensors) and sums the replica gradients through it.

use ultraep_runtime::{Engine, HostDriven, RouterOutput, RuntimeError, StepId};
use ultraep_xfer::Region;

use crate::fixture::{GRADIENT, base_config, weights};
use crate::processes::ids;

const RANKS: u32 = 8;

/// Every rank's memory as the framework holds it: masters (layer-major, 4 a layer) and 2 slots.
struct Tensors {
    masters: Vec<Vec<Vec<u8>>>,
    slots: Vec<Vec<Vec<u8>>>,
}

fn engines() -> Vec<Engine<HostDriven>> {
    (0..RANKS)
        .map(|rank| Engine::host_driven(base_config(), rank).unwrap())
        .collect()
}

/// Gathers every engine's row and plans `step` on each from the gathered rows.
fn step_all(engines: &mut [Engine<HostDriven>], step: StepId, hot: u32) {
    let mut gathered = Vec::new();
    let mut row = Vec::new();
    for (rank, engine) in engines.iter().enumerate() {
        engine
            .gather_row(RouterOutput::Ids(&[&ids(rank as u32, hot)]), &mut row)
            .unwrap();
        gathered.extend_from_slice(&row);
    }
    let reports: Vec<_> = engines
        .iter_mut()
        .map(|engine| engine.step_from_rows(step, &gathered).unwrap())
        .collect();
    assert!(reports.iter().all(|r| r.metrics == reports[0].metrics));
}

/// Executes the program the way a framework would: every rank's sends, in tag order.
fn execute(engines: &[Engine<HostDriven>], tensors: &mut Tensors) {
    let program = engines[0].transfer_program().clone();
    for engine in &engines[1..] {
        assert_eq!(
            engine.transfer_program(),
            &program,
            "every rank builds the same program"
        );
    }
    for rank in 0..RANKS {
        // What a rank sends and receives is exactly its share.
        let local = rank..rank + 1;
        assert!(program.sends(local.clone()).all(|t| t.from_rank == rank));
        assert!(program.receives(local).all(|t| t.to_rank == rank));
    }
    for transfer in program.transfers() {
        if let Some(after) = transfer.after {
            let first = program.transfers()[after as usize];
            assert!(after < transfer.tag && first.to_rank == transfer.from_rank);
        }
        let range = transfer.offset as usize..(transfer.offset + transfer.bytes) as usize;
        let bytes = match transfer.from {
            Region::Master { index } => {
                tensors.masters[transfer.from_rank as usize][index as usize][range.clone()].to_vec()
            }
            Region::Slot { slot } => tensors.slots[transfer.from_rank as usize][usize::from(slot)]
                [range.clone()]
            .to_vec(),
        };
        tensors.slots[transfer.to_rank as usize][usize::from(transfer.to_slot)][range]
            .copy_from_slice(&bytes);
    }
}

#[test]
fn the_caller_moves_the_bytes_and_sums_the_gradients_through_the_engine() {
    let mut engines = engines();
    let state = weights(0, 0, 0).len();
    let mut tensors = Tensors {
        masters: (0..RANKS)
            .map(|rank| {
                (0..3)
                    .flat_map(|layer| (rank * 4..rank * 4 + 4).map(move |e| weights(layer, e, 0)))
                    .collect()
            })
            .collect(),
        slots: vec![vec![vec![0u8; state]; 2]; RANKS as usize],
    };
    let step = StepId::new(0, 1);
    step_all(&mut engines, step, 9);
    execute(&engines, &mut tensors);
    let plan = engines[0].plan(step).unwrap().clone();
    let mut replicas = 0;
    for (index, instance) in plan.instances().iter().enumerate() {
        let owner = &engines[instance.rank as usize];
        if let Some((rank, slot)) = owner.replica_slot(step, index as u32) {
            assert_eq!(
                tensors.slots[rank as usize][usize::from(slot)],
                weights(1, instance.expert, 0)
            );
            replicas += 1;
        }
    }
    assert!(replicas > 0);
    // The engine holds no bytes, and says so.
    assert!(matches!(
        engines[0].read_master(1, 0),
        Err(RuntimeError::InvalidInput(_))
    ));

    // Backward: each replica's gradient is 1 + its rank; every rank sends its replicas' to
    // their masters' ranks, which sum them through the engine.
    for engine in &mut engines {
        engine.restore(step).unwrap();
    }
    execute(&engines, &mut tensors);
    for engine in &mut engines {
        engine.reduce_gradients(step).unwrap();
    }
    let sends: Vec<_> = engines[0].gradient_sends().collect();
    assert_eq!(sends.len(), replicas);
    let floats = (GRADIENT / 4) as usize;
    for engine in &mut engines {
        let rank = engine.local_ranks().start;
        let experts: Vec<u32> = sends
            .iter()
            .filter(|s| s.to_rank == rank)
            .map(|s| s.expert)
            .collect();
        for expert in experts {
            let from: Vec<u32> = sends
                .iter()
                .filter(|s| s.expert == expert)
                .map(|s| s.from_rank)
                .collect();
            let received: Vec<Vec<f32>> =
                from.iter().map(|&r| vec![1.0 + r as f32; floats]).collect();
            let mut master = vec![0.5f32; floats];
            engine
                .sum_replica_gradients(expert, &mut master, |r| {
                    &received[from.iter().position(|&f| f == r).unwrap()]
                })
                .unwrap();
            let expected = 0.5 + from.iter().map(|&r| 1.0 + r as f32).sum::<f32>();
            assert!(master.iter().all(|&v| v == expected), "{expert}");
        }
    }
}
