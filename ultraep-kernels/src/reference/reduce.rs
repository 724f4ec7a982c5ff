//! Gradient reduction jobs: the schedule's pieces as the flat jobs the reduction kernel takes, and
//! their CPU execution. The order of additions is `ultraep_xfer::reduce_gradients`'s.

use bytemuck::{Pod, Zeroable};
use ultraep_xfer::{Region, TransferSchedule};

use crate::KernelError;

/// No owner: the replicas are added to the master one by one.
pub const NO_OWNER: u32 = u32::MAX;

/// One piece of one expert's gradient to reduce.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ReduceJob {
    /// Where the master's FP32 values of this piece start (a device address, or a byte offset
    /// for the CPU reference).
    pub master: u64,
    /// Index of the first of this job's replica addresses.
    pub first_replica: u32,
    /// How many replicas (ascending rank).
    pub replica_count: u32,
    /// The position among them of the relay that owns this piece, or [`NO_OWNER`].
    pub owner: u32,
    /// FP32 values in the piece.
    pub floats: u32,
}

/// The jobs of reducing `schedule`'s gradients (a schedule of the FP32 gradient state), with the
/// replica addresses they index. `address(rank, region)` is where a region starts.
pub fn reduce_jobs(
    schedule: &TransferSchedule,
    address: impl Fn(u32, Region) -> u64,
) -> Result<(Vec<ReduceJob>, Vec<u64>), KernelError> {
    if !schedule.state_bytes().is_multiple_of(4) {
        return Err(KernelError::InvalidInput(
            "a gradient state must be whole FP32 values".into(),
        ));
    }
    let mut jobs = Vec::new();
    let mut replicas = Vec::new();
    for fanout in schedule.fanouts() {
        let master = address(
            fanout.master,
            Region::Master {
                index: fanout.master_index,
            },
        );
        for piece in schedule.pieces(fanout) {
            let first_replica = replicas.len() as u32;
            replicas.extend(
                fanout
                    .destinations
                    .iter()
                    .map(|&(rank, slot)| address(rank, Region::Slot { slot }) + piece.offset),
            );
            let owner = piece.owner.map_or(NO_OWNER, |owner| {
                fanout
                    .destinations
                    .iter()
                    .position(|d| d.0 == owner)
                    .map_or(NO_OWNER, |p| p as u32)
            });
            jobs.push(ReduceJob {
                master: master + piece.offset,
                first_replica,
                replica_count: fanout.destinations.len() as u32,
                owner,
                floats: (piece.bytes / 4) as u32,
            });
        }
    }
    Ok((jobs, replicas))
}

/// Executes `jobs` on `memory` (addresses are byte offsets into it), as the kernel does.
pub fn reduce(jobs: &[ReduceJob], replicas: &[u64], memory: &mut [f32]) -> Result<(), KernelError> {
    let index = |address: u64| (address / 4) as usize;
    for job in jobs {
        let list = replicas
            .get(job.first_replica as usize..(job.first_replica + job.replica_count) as usize)
            .ok_or_else(|| KernelError::InvalidInput("a job's replicas are out of range".into()))?;
        let master = index(job.master);
        if master + job.floats as usize > memory.len()
            || list
                .iter()
                .any(|&r| index(r) + job.floats as usize > memory.len())
        {
            return Err(KernelError::InvalidInput(
                "a job reaches past the memory".into(),
            ));
        }
        for i in 0..job.floats as usize {
            if job.owner == NO_OWNER {
                let mut sum = memory[master + i];
                for &replica in list {
                    sum += memory[index(replica) + i];
                    memory[index(replica) + i] = 0.0;
                }
                memory[master + i] = sum;
            } else {
                let owner = index(list[job.owner as usize]);
                let mut partial = memory[owner + i];
                memory[owner + i] = 0.0;
                for (position, &replica) in list.iter().enumerate() {
                    if position == job.owner as usize {
                        continue;
                    }
                    partial += memory[index(replica) + i];
                    memory[index(replica) + i] = 0.0;
                }
                memory[master + i] += partial;
            }
        }
    }
    Ok(())
}
