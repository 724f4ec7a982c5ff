//! A pool of worker threads for transfer executors: started once, woken for every job, kept
//! until dropped, so a warm transfer starts no thread and allocates nothing.
//!
//! The pool shares one state `S` with its workers; each worker also keeps a scratch value `W` of
//! its own (a tile buffer, say) for as long as it lives. A job is whatever `work` does with them:
//! executors put their task list in the state before [`WorkerPool::run`], and their workers take
//! tasks from it until none is left. With one worker the caller's thread does the work.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::XferError;

#[derive(Debug, Default)]
struct Control {
    generation: u64,
    busy: usize,
    shutdown: bool,
    /// A worker's `work` panicked in the job in progress.
    panicked: bool,
}

#[derive(Debug)]
struct Shared<S, W> {
    state: S,
    work: fn(&S, &mut W),
    control: Mutex<Control>,
    wake: Condvar,
    done: Condvar,
}

/// Worker threads sharing a state `S`, each with scratch `W` of its own, started once and kept
/// until dropped: [`WorkerPool::run`] (or [`WorkerPool::start`] then [`WorkerPool::wait`]) runs
/// the pool's `work` once on every worker. With one worker the caller's thread does the work.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use ultraep_xfer::WorkerPool;
/// let mut pool = WorkerPool::new(AtomicU32::new(0), 3, |count: &AtomicU32, _: &mut ()| {
///     count.fetch_add(1, Ordering::Relaxed);
/// });
/// pool.run()?;
/// assert_eq!(pool.state().load(Ordering::Relaxed), 3); // every worker ran once
/// # Ok::<(), ultraep_xfer::XferError>(())
/// ```
#[derive(Debug)]
pub struct WorkerPool<S: Send + Sync + 'static, W: Default + Send + 'static = ()> {
    shared: Arc<Shared<S, W>>,
    threads: Vec<JoinHandle<()>>,
    /// The caller's scratch, when it does the work itself.
    caller: W,
}

fn poisoned() -> XferError {
    XferError::TransferFailed {
        task: usize::MAX,
        reason: "a worker thread panicked".into(),
        slots: 0,
    }
}

fn lock(control: &Mutex<Control>) -> Result<MutexGuard<'_, Control>, XferError> {
    control.lock().map_err(|_| poisoned())
}

impl<S: Send + Sync + 'static, W: Default + Send + 'static> WorkerPool<S, W> {
    /// `workers` threads (none with one worker: the caller works) sharing `state`, each running
    /// `work` once per [`WorkerPool::run`].
    pub fn new(state: S, workers: usize, work: fn(&S, &mut W)) -> Self {
        let shared = Arc::new(Shared {
            state,
            work,
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
        Self {
            shared,
            threads,
            caller: W::default(),
        }
    }

    /// The state the workers share.
    pub fn state(&self) -> &S {
        &self.shared.state
    }

    /// Runs `work` on every worker and returns when all have finished. `work` must end on its
    /// own (its waits bounded), since this waits for it.
    pub fn run(&mut self) -> Result<(), XferError> {
        self.start()?;
        self.wait()
    }

    /// Starts `work` on every worker and returns at once; [`WorkerPool::wait`] waits for it. With
    /// one worker there are no threads, and the caller's thread does the work here.
    pub fn start(&mut self) -> Result<(), XferError> {
        if self.threads.is_empty() {
            (self.shared.work)(&self.shared.state, &mut self.caller);
            return Ok(());
        }
        let mut control = lock(&self.shared.control)?;
        control.generation += 1;
        control.busy = self.threads.len();
        control.panicked = false;
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Waits until the work [`WorkerPool::start`] started has finished on every worker.
    pub fn wait(&mut self) -> Result<(), XferError> {
        let mut control = lock(&self.shared.control)?;
        while control.busy > 0 {
            control = self.shared.done.wait(control).map_err(|_| poisoned())?;
        }
        if control.panicked {
            return Err(poisoned());
        }
        Ok(())
    }
}

/// A pool thread: waits for a job, does its share, reports, until the pool is dropped.
fn worker<S, W: Default>(shared: &Shared<S, W>) {
    let mut scratch = W::default();
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
        // A panic must still count the worker as done, or `run` would wait for it forever.
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (shared.work)(&shared.state, &mut scratch);
        }));
        let Ok(mut control) = shared.control.lock() else {
            return;
        };
        control.panicked |= finished.is_err();
        control.busy -= 1;
        if control.busy == 0 {
            shared.done.notify_all();
        }
    }
}

impl<S: Send + Sync + 'static, W: Default + Send + 'static> Drop for WorkerPool<S, W> {
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
