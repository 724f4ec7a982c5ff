//! The worker threads of a host data plane: started with the plane, kept until it is dropped, so
//! a warm transfer starts no thread and allocates nothing.
//!
//! The plane copies its tasks into the shared [`Job`] and wakes the workers; each takes tasks in
//! list order from an atomic counter, so a task that waits for a tile only ever waits for tasks
//! earlier in the group's list, and the group as a whole always makes progress.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use ultraep_xfer::{TileDestination, TileTask};

use super::Peers;
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

#[derive(Debug, Default)]
struct Control {
    generation: u64,
    busy: usize,
    shutdown: bool,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub peers: Peers,
    pub job: RwLock<Job>,
    control: Mutex<Control>,
    wake: Condvar,
    done: Condvar,
}

/// The workers and what they share.
#[derive(Debug)]
pub(super) struct Pool {
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn poisoned() -> RuntimeError {
    RuntimeError::Backend("a data-plane worker panicked".into())
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, RuntimeError> {
    mutex.lock().map_err(|_| poisoned())
}

impl Pool {
    /// `workers` threads over `peers`; with one worker the caller's thread does the work.
    pub fn new(peers: Peers, workers: usize) -> Self {
        let shared = Arc::new(Shared {
            peers,
            job: RwLock::new(Job::default()),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let threads = if workers > 1 {
            (0..workers)
                .map(|_| {
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || worker(&shared))
                })
                .collect()
        } else {
            Vec::new()
        };
        Self { shared, threads }
    }

    /// Runs the job the caller filled in; returns its first failure. Workers give up on a wait
    /// after the job's timeout, so this returns within about that time too.
    pub fn run(&self) -> Result<(), RuntimeError> {
        if self.threads.is_empty() {
            let job = self.shared.job.read().map_err(|_| poisoned())?;
            job.work(&self.shared.peers);
        } else {
            let mut control = lock(&self.shared.control)?;
            control.generation += 1;
            control.busy = self.threads.len();
            self.shared.wake.notify_all();
            while control.busy > 0 {
                control = self.shared.done.wait(control).map_err(|_| poisoned())?;
            }
        }
        let job = self.shared.job.read().map_err(|_| poisoned())?;
        match lock(&job.failure)?.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0;
    loop {
        let Ok(mut control) = shared.control.lock() else {
            return;
        };
        while control.generation == seen && !control.shutdown {
            let Ok(next) = shared.wake.wait(control) else {
                return;
            };
            control = next;
        }
        if control.shutdown {
            return;
        }
        seen = control.generation;
        drop(control);
        if let Ok(job) = shared.job.read() {
            job.work(&shared.peers);
        }
        let Ok(mut control) = shared.control.lock() else {
            return;
        };
        control.busy -= 1;
        if control.busy == 0 {
            shared.done.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut control) = self.shared.control.lock() {
            control.shutdown = true;
            self.shared.wake.notify_all();
        }
        for thread in self.threads.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}
