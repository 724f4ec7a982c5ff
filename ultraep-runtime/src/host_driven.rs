//! The host-driven data plane: the engine decides, the caller moves the bytes. It holds no
//! expert memory (the framework's tensors are the masters and slots); a distribution becomes a
//! [`TransferProgram`] for the caller to execute with its own communication library, and a
//! reduction the list of replica gradients to send to their masters' ranks and the order to sum
//! them in there.

use std::borrow::Cow;
use std::ops::Range;

use ultraep_xfer::{ReductionScratch, SlotState, TileTaskList, TransferSchedule};

use crate::backend::{Backend, MemoryShape};
use crate::{RuntimeError, TransferProgram};

/// A replica gradient to send to its master's rank for the reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GradientSend {
    /// The expert.
    pub expert: u32,
    /// The rank holding the replica (the sender).
    pub from_rank: u32,
    /// The replica's slot there.
    pub from_slot: u16,
    /// The master's rank (the receiver).
    pub to_rank: u32,
}

/// The host-driven data plane: it holds no expert memory (the framework's tensors are the masters
/// and slots); a distribution becomes a [`TransferProgram`] for the caller to execute with its
/// own communication library, and a reduction the list of replica gradients to send to their
/// masters' ranks ([`HostDriven::gradient_sends`]) and their sum in the documented order
/// ([`HostDriven::sum_replica_gradients`]).
#[derive(Debug)]
pub struct HostDriven {
    local: Range<u32>,
    slots_per_rank: u16,
    slot_states: Vec<SlotState>,
    program: TransferProgram,
    reduction: Option<TransferSchedule>,
    scratch: ReductionScratch,
}

fn not_held() -> RuntimeError {
    RuntimeError::InvalidInput(
        "a host-driven engine holds no expert memory: the framework's tensors are the masters \
         and slots"
            .into(),
    )
}

impl HostDriven {
    /// The plane of `shape.local`: nothing but slot states.
    pub fn new(shape: &MemoryShape<'_>) -> Self {
        Self {
            local: shape.local.clone(),
            slots_per_rank: shape.slots_per_rank,
            slot_states: vec![
                SlotState::Empty;
                shape.local.len() * usize::from(shape.slots_per_rank)
            ],
            program: TransferProgram::default(),
            reduction: None,
            scratch: ReductionScratch::default(),
        }
    }

    /// The program of the last distribution, for every rank; this plane's ranks execute
    /// `program().sends(local)` and `program().receives(local)`.
    pub fn program(&self) -> &TransferProgram {
        &self.program
    }

    /// The replica gradients of the last reduction: what every rank sends to which master's rank.
    pub fn gradient_sends(&self) -> impl Iterator<Item = GradientSend> + '_ {
        self.reduction.iter().flat_map(|schedule| {
            schedule.fanouts().iter().flat_map(|fanout| {
                fanout
                    .destinations
                    .iter()
                    .map(move |&(rank, slot)| GradientSend {
                        expert: fanout.expert,
                        from_rank: rank,
                        from_slot: slot,
                        to_rank: fanout.master,
                    })
            })
        })
    }

    /// Sums the replica gradients of `expert` in the last reduction into `master` (its master's
    /// gradient, FP32) in the documented order; `replica(rank)` gives the gradient received from
    /// the replica on `rank`.
    pub fn sum_replica_gradients<'a>(
        &mut self,
        expert: u32,
        master: &mut [f32],
        replica: impl Fn(u32) -> &'a [f32],
    ) -> Result<(), RuntimeError> {
        let schedule = self
            .reduction
            .as_ref()
            .ok_or_else(|| RuntimeError::InvalidInput("no reduction to sum".into()))?;
        let fanout = schedule
            .fanouts()
            .iter()
            .find(|fanout| fanout.expert == expert)
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!("expert {expert} has no replica to sum"))
            })?;
        self.scratch.reduce(schedule, fanout, master, replica)?;
        Ok(())
    }

    fn set_state(&mut self, rank: u32, slot: u16, state: SlotState) {
        if self.local.contains(&rank) && slot < self.slots_per_rank {
            let index = (rank - self.local.start) as usize * usize::from(self.slots_per_rank);
            self.slot_states[index + usize::from(slot)] = state;
        }
    }
}

impl Backend for HostDriven {
    fn local_ranks(&self) -> Range<u32> {
        self.local.clone()
    }

    fn write_master(&mut self, _: u32, _: u32, _: &[u8]) -> Result<(), RuntimeError> {
        Err(not_held())
    }

    /// The caller holds the memory, so it installs the staged master itself (the moves of
    /// `Engine::layout_change` say from which staging slot to which master index).
    fn install_staged(&mut self, _: u32, _: u16, _: u32) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn read_master(&self, _: u32, _: u32) -> Result<Cow<'_, [u8]>, RuntimeError> {
        Err(not_held())
    }

    fn read_slot(&self, _: u32, _: u16) -> Result<Cow<'_, [u8]>, RuntimeError> {
        Err(not_held())
    }

    fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        _: &[u8],
    ) -> Result<(), RuntimeError> {
        // The gradient itself stays with the framework; the slot only counts as written.
        self.set_state(rank, slot, SlotState::Ready { expert });
        Ok(())
    }

    fn uses_tile_tasks(&self) -> bool {
        false
    }

    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        _: &TileTaskList,
    ) -> Result<u64, RuntimeError> {
        self.program.build_from(schedule);
        // The caller executes the program before it computes with the replicas.
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                self.set_state(
                    rank,
                    slot,
                    SlotState::Ready {
                        expert: fanout.expert,
                    },
                );
            }
        }
        Ok(self.program.transfers().iter().map(|t| t.bytes).sum())
    }

    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        _: u64,
    ) -> Result<(), RuntimeError> {
        match &mut self.reduction {
            Some(kept) => kept.clone_from(schedule),
            None => self.reduction = Some(schedule.clone()),
        }
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                self.set_state(rank, slot, SlotState::Empty);
            }
        }
        Ok(())
    }
}
