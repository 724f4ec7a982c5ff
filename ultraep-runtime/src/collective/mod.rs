//! The all-gather of the load: every rank counts its own router output, and every rank needs the
//! whole matrix to compute the same plan itself.
//!
//! [`Collective`] is what the engine needs of a communication library. [`InProcessCollective`]
//! implements it for ranks that are threads of one process (tests, the CPU backend, single-node
//! tools); with the `nccl` feature, `ultraep_kernels::nccl::NcclGather` implements it for ranks
//! that are processes on GPUs of their own.

mod shm;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::RuntimeError;

pub use shm::ShmCollective;

/// How long a rank waits for the others before it declares the collective failed.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Collective communication among the ranks of an expert-parallel group.
pub trait Collective {
    /// This rank's number.
    fn rank(&self) -> u32;
    /// Ranks in the group.
    fn ranks(&self) -> u32;
    /// Every rank contributes `local` (the same length on every rank); `gathered` receives every
    /// rank's contribution, rank after rank, on every rank.
    fn all_gather(&mut self, local: &[u32], gathered: &mut [u32]) -> Result<(), RuntimeError>;

    /// Every rank contributes `local`; `sums` receives their element-wise sum (wrapping) on every
    /// rank. The default gathers every contribution into `scratch` and adds them here: correct
    /// on any transport, but it moves as much as the all-gather; a transport that reduces in the
    /// network (NCCL's all-reduce) overrides it.
    fn all_reduce_sum(
        &mut self,
        local: &[u32],
        sums: &mut [u32],
        scratch: &mut Vec<u32>,
    ) -> Result<(), RuntimeError> {
        self.prefix_sums(local, sums, scratch, self.ranks())
    }

    /// Every rank contributes `local`; on rank `r`, `sums` receives the element-wise sum
    /// (wrapping) of the contributions of ranks `0..r` (zeros on rank 0). The default gathers
    /// them, like [`Collective::all_reduce_sum`]'s.
    fn exclusive_prefix_sum(
        &mut self,
        local: &[u32],
        sums: &mut [u32],
        scratch: &mut Vec<u32>,
    ) -> Result<(), RuntimeError> {
        self.prefix_sums(local, sums, scratch, self.rank())
    }

    /// The sum of the contributions of ranks `0..upto`, gathered into `scratch`.
    #[doc(hidden)]
    fn prefix_sums(
        &mut self,
        local: &[u32],
        sums: &mut [u32],
        scratch: &mut Vec<u32>,
        upto: u32,
    ) -> Result<(), RuntimeError> {
        if sums.len() != local.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} sums for contributions of {}",
                sums.len(),
                local.len()
            )));
        }
        // Every rank contributes as many values, so all of them skip an empty exchange alike.
        if local.is_empty() {
            return Ok(());
        }
        scratch.resize(local.len() * self.ranks() as usize, 0);
        self.all_gather(local, scratch)?;
        sums.fill(0);
        for contribution in scratch.chunks_exact(local.len().max(1)).take(upto as usize) {
            for (sum, &value) in sums.iter_mut().zip(contribution) {
                *sum = sum.wrapping_add(value);
            }
        }
        Ok(())
    }
}

/// One rank's end of an all-gather among threads of this process.
///
/// ```
/// use ultraep_runtime::{Collective, InProcessCollective};
/// let members = InProcessCollective::group(3);
/// let rows: Vec<Vec<u32>> = std::thread::scope(|scope| {
///     let handles: Vec<_> = members
///         .into_iter()
///         .map(|mut member| {
///             scope.spawn(move || {
///                 let mine = [member.rank(), 10 * member.rank()];
///                 let mut all = vec![0; 6];
///                 member.all_gather(&mine, &mut all).map(|()| all)
///             })
///         })
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// assert!(rows.iter().all(|all| all == &[0, 0, 1, 10, 2, 20]));
/// ```
#[derive(Debug, Clone)]
pub struct InProcessCollective {
    rank: u32,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ranks: u32,
    round: Mutex<Round>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Round {
    buffer: Vec<u32>,
    row: usize,
    arrived: u32,
    departed: u32,
    /// Every rank has contributed; ranks are copying the result out.
    draining: bool,
    generation: u64,
    /// A rank contributed a row of another length: this round fails on every rank.
    broken: bool,
}

impl InProcessCollective {
    /// The `ranks` members of a new group, member `r` for rank `r`.
    pub fn group(ranks: u32) -> Vec<Self> {
        let shared = Arc::new(Shared {
            ranks,
            round: Mutex::new(Round::default()),
            changed: Condvar::new(),
        });
        (0..ranks)
            .map(|rank| Self {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Round>, RuntimeError> {
        self.shared
            .round
            .lock()
            .map_err(|_| RuntimeError::Collective("a rank panicked in the all-gather".into()))
    }

    /// Waits on the condition variable until `done` holds, or fails after [`WAIT_LIMIT`].
    fn wait_until<'a>(
        &'a self,
        mut round: MutexGuard<'a, Round>,
        done: impl Fn(&Round) -> bool,
    ) -> Result<MutexGuard<'a, Round>, RuntimeError> {
        let started = Instant::now();
        while !done(&round) {
            let left = WAIT_LIMIT.checked_sub(started.elapsed()).ok_or_else(|| {
                RuntimeError::Collective(format!(
                    "rank {} waited {} s for the other ranks",
                    self.rank,
                    WAIT_LIMIT.as_secs()
                ))
            })?;
            round = self
                .shared
                .changed
                .wait_timeout(round, left)
                .map_err(|_| RuntimeError::Collective("a rank panicked in the all-gather".into()))?
                .0;
        }
        Ok(round)
    }
}

impl Collective for InProcessCollective {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn ranks(&self) -> u32 {
        self.shared.ranks
    }

    fn all_gather(&mut self, local: &[u32], gathered: &mut [u32]) -> Result<(), RuntimeError> {
        let ranks = self.shared.ranks;
        // The previous round must be fully read before this one writes the buffer.
        let mut round = self.wait_until(self.lock()?, |round| !round.draining)?;
        if round.arrived == 0 {
            round.row = local.len();
            round.broken = false;
            round.buffer.resize(local.len() * ranks as usize, 0);
        } else if round.row != local.len() {
            round.broken = true;
        }
        if !round.broken {
            let row = round.row;
            round.buffer[self.rank as usize * row..][..row].copy_from_slice(local);
        }
        round.arrived += 1;
        let generation = round.generation;
        if round.arrived == ranks {
            round.draining = true;
            round.generation += 1;
            self.shared.changed.notify_all();
        }
        let mut round = self.wait_until(round, |round| round.generation != generation)?;
        let result = if round.broken {
            Err(RuntimeError::Collective(
                "ranks contributed rows of different lengths".into(),
            ))
        } else if gathered.len() != round.buffer.len() {
            Err(RuntimeError::Collective(format!(
                "rank {} gathers into {} values, the group has {}",
                self.rank,
                gathered.len(),
                round.buffer.len()
            )))
        } else {
            gathered.copy_from_slice(&round.buffer);
            Ok(())
        };
        round.departed += 1;
        if round.departed == ranks {
            round.arrived = 0;
            round.departed = 0;
            round.draining = false;
            self.shared.changed.notify_all();
        }
        result
    }
}

#[cfg(feature = "nccl")]
impl Collective for ultraep_kernels::nccl::NcclGather<'_> {
    fn rank(&self) -> u32 {
        ultraep_kernels::nccl::NcclGather::rank(self)
    }

    fn ranks(&self) -> u32 {
        ultraep_kernels::nccl::NcclGather::ranks(self)
    }

    fn all_gather(&mut self, local: &[u32], gathered: &mut [u32]) -> Result<(), RuntimeError> {
        ultraep_kernels::nccl::NcclGather::all_gather(self, local, gathered)
            .map_err(|error| RuntimeError::Collective(error.to_string()))
    }

    /// NCCL's all-reduce: no rank receives every contribution.
    fn all_reduce_sum(
        &mut self,
        local: &[u32],
        sums: &mut [u32],
        _scratch: &mut Vec<u32>,
    ) -> Result<(), RuntimeError> {
        ultraep_kernels::nccl::NcclGather::all_reduce_sum(self, local, sums)
            .map_err(|error| RuntimeError::Collective(error.to_string()))
    }
}
