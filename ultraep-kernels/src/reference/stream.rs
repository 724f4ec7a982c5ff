//! Tile streaming: executing a tile task list on plain byte buffers, one task after another in
//! list order (an order every executor may take: a task only waits for tasks listed before it).

use ultraep_xfer::{Region, TileTaskList, region_of};

use crate::KernelError;

/// Every rank's memory: its master expert states and its slots, each `state_bytes` long,
/// one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankMemory {
    /// Master expert states of this layer.
    pub masters: Vec<u8>,
    /// Replica slots.
    pub slots: Vec<u8>,
}

fn region_mut(
    memory: &mut [RankMemory],
    rank: u32,
    code: u32,
    state_bytes: u64,
) -> Result<&mut [u8], KernelError> {
    let missing =
        || KernelError::InvalidInput(format!("rank {rank} has no region {:?}", region_of(code)));
    let rank_memory = memory.get_mut(rank as usize).ok_or_else(missing)?;
    let (buffer, index) = match region_of(code) {
        Region::Master { index } => (&mut rank_memory.masters, u64::from(index)),
        Region::Slot { slot } => (&mut rank_memory.slots, u64::from(slot)),
    };
    let start = (index * state_bytes) as usize;
    buffer
        .get_mut(start..start + state_bytes as usize)
        .ok_or_else(missing)
}

/// Executes `tasks` on `memory` in list order.
pub fn stream(
    tasks: &TileTaskList,
    memory: &mut [RankMemory],
    state_bytes: u64,
) -> Result<(), KernelError> {
    let mut tile = Vec::new();
    for task in tasks.tasks() {
        let range = task.offset as usize..task.offset as usize + task.bytes as usize;
        let source = region_mut(memory, task.source_rank, task.source_region, state_bytes)?;
        tile.clear();
        tile.extend_from_slice(source.get(range.clone()).ok_or_else(|| {
            KernelError::InvalidInput(format!("tile at {} overruns the expert state", task.offset))
        })?);
        for destination in tasks.destinations_of(task) {
            let target = region_mut(memory, destination.rank, destination.region, state_bytes)?;
            target[range.clone()].copy_from_slice(&tile);
        }
    }
    Ok(())
}
