//! One transfer round of a host data plane: this process's tile tasks, which the plane's workers
//! (an `ultraep_xfer::WorkerPool`) execute.
//!
//! The plane copies its tasks into the shared [`Job`] and wakes the workers; each takes tasks in
//! list order from an atomic counter, so a task that waits for a tile only ever waits for tasks
//! earlier in the group's list, and the group as a whole always makes progress.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use ultraep_xfer::{TileDestination, TileTask};

use super::peers::Peers;
use crate::RuntimeError;

/// One transfer round's tasks (this process's share), in buffers reused from round to round.
#[derive(Debug, Default)]
pub(super) struct Job {
    pub tasks: Vec<TileTask>,
    pub destinations: Vec<TileDestination>,
    pub round: u64,
    pub timeout: Duration,
    pub fail_at_task: Option<usize>,
    pub next: AtomicUsize,
    pub failed: AtomicBool,
    pub failure: Mutex<Option<RuntimeError>>,
}

impl Job {
    /// Records the first failure; the others stop at their next task.
    pub fn fail(&self, error: RuntimeError) {
        self.failed.store(true, Ordering::Release);
        if let Ok(mut first) = self.failure.lock()
            && first.is_none()
        {
            *first = Some(error);
        }
    }

    /// Executes tasks until none is left or one failed.
    pub fn work(&self, peers: &Peers) {
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.tasks.len() || self.failed.load(Ordering::Acquire) {
                return;
            }
            if self.fail_at_task == Some(index) {
                self.fail(
                    ultraep_xfer::XferError::TransferFailed {
                        task: index,
                        reason: "injected failure".into(),
                        slots: 0,
                    }
                    .into(),
                );
                return;
            }
            let task = &self.tasks[index];
            let first = task.first_destination as usize;
            let destinations = &self.destinations[first..first + task.destination_count as usize];
            if let Err(error) =
                peers.execute(task, destinations, self.round, self.timeout, &self.failed)
            {
                self.fail(error);
                return;
            }
        }
    }
}

/// What a plane's workers share: every rank's segment and the job in progress.
#[derive(Debug)]
pub(super) struct Shared {
    pub peers: Peers,
    pub job: RwLock<Job>,
}

impl Shared {
    /// One worker's part of the job in progress.
    pub fn work(&self, _: &mut ()) {
        if let Ok(job) = self.job.read() {
            job.work(&self.peers);
        }
    }
}
