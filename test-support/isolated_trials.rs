//! GPU trials one at a time, each in a process of its own: a fault that poisons a CUDA context (a
//! sticky error, an illegal address, a kernel that never ends) ends that trial's process only,
//! and every other trial still runs and reports. Shared by the GPU test binaries through `#[path]`.
//!
//! The harness starts its own binary again once per trial with [`CHILD`] naming the trial; such a
//! child runs that trial's body and nothing else, and its exit status is the trial's outcome.

use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

/// Names the trial a child process runs.
pub const CHILD: &str = "ULTRAEP_ISOLATED_TRIAL";

/// How long one trial may take before its process is killed and the trial fails.
const TRIAL_LIMIT: Duration = Duration::from_secs(600);

/// A trial body.
pub type Body = fn() -> Result<(), Failed>;

/// In a child process: runs the trial [`CHILD`] names and exits with its outcome. Elsewhere:
/// returns, and the harness goes on.
pub fn run_child_if_asked(bodies: &[(&'static str, Body)]) {
    let Ok(name) = std::env::var(CHILD) else {
        return;
    };
    let Some((_, body)) = bodies.iter().find(|(trial, _)| *trial == name) else {
        eprintln!("no trial {name}");
        std::process::exit(2);
    };
    match body() {
        Ok(()) => std::process::exit(0),
        Err(failed) => {
            eprintln!("{}", failed.message().unwrap_or("failed"));
            std::process::exit(1);
        }
    }
}

/// The trials of `bodies`, each run in a fresh process of this binary.
pub fn isolated(bodies: &[(&'static str, Body)], ignored: bool) -> Vec<Trial> {
    bodies
        .iter()
        .map(|&(name, _)| Trial::test(name, move || run_in_child(name)).with_ignored_flag(ignored))
        .collect()
}

/// Runs trial `name` in a fresh process of this binary (whose `main` calls
/// [`run_child_if_asked`] with it).
pub fn run_in_child(name: &'static str) -> Result<(), Failed> {
    let fail = |e: std::io::Error| Failed::from(e.to_string());
    let program = std::env::current_exe().map_err(fail)?;
    // The child's error output goes to a file, not a pipe: a chatty trial cannot block on a full
    // pipe while this process waits for it.
    let log_path =
        std::env::temp_dir().join(format!("ultraep-trial-{name}-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).map_err(fail)?;
    let mut child = Command::new(program)
        .env(CHILD, name)
        .stdout(std::process::Stdio::inherit())
        .stderr(log)
        .spawn()
        .map_err(fail)?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(fail)? {
            break status;
        }
        if started.elapsed() > TRIAL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&log_path);
            return Err(Failed::from(format!(
                "{name} did not end within {} s; its process was killed",
                TRIAL_LIMIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let errors = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    if status.success() {
        Ok(())
    } else {
        Err(Failed::from(format!(
            "{name} ({status}): {}",
            errors.trim()
        )))
    }
}
