//! `cargo xtask mutants`: mutation testing with cargo-mutants on the parts whose tests must
//! catch wrong code: the planner (`ultraep-plan`) and the transfer schedule of `ultraep-xfer`
//! (schedules, tile task lists and the flow checker). Each mutant is built and tested with its
//! own crate's tests only, so the figures say what that crate's tests catch.
//!
//! `--shard K/N` runs every N-th mutant from the K-th (round robin, so a shard samples every
//! file); the summary counts caught, missed, timed out and unviable mutants per scope, lists the
//! missed ones, and is written to `target/mutants/summary.md`. Missed mutants do not fail the
//! task (they are the report); a run that cannot start (the tests fail unmutated) does.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace_root;

/// The cargo-mutants release the task installs when none is present.
const CARGO_MUTANTS: &str = "cargo-mutants@27.1.0";

/// A part of the workspace under mutation: its name, its package, and the files mutated (none:
/// the whole package).
struct Scope {
    name: &'static str,
    package: &'static str,
    files: &'static [&'static str],
}

const SCOPES: [Scope; 2] = [
    Scope {
        name: "planner",
        package: "ultraep-plan",
        files: &[],
    },
    Scope {
        name: "schedule",
        package: "ultraep-xfer",
        files: &[
            "ultraep-xfer/src/schedule.rs",
            "ultraep-xfer/src/chooser_layer.rs",
            "ultraep-xfer/src/chooser_per_expert.rs",
            "ultraep-xfer/src/tasks.rs",
            "ultraep-xfer/src/flow.rs",
        ],
    },
];

/// What one scope's run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Outcomes {
    pub(crate) caught: Vec<String>,
    pub(crate) missed: Vec<String>,
    pub(crate) timeout: Vec<String>,
    pub(crate) unviable: Vec<String>,
}

impl Outcomes {
    /// Reads the outcome lists cargo-mutants writes into `mutants.out`.
    fn read(folder: &Path) -> Result<Self, String> {
        let list = |name: &str| -> Result<Vec<String>, String> {
            let path = folder.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text.lines().map(str::to_string).collect()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(error) => Err(format!("cannot read {}: {error}", path.display())),
            }
        };
        Ok(Self {
            caught: list("caught.txt")?,
            missed: list("missed.txt")?,
            timeout: list("timeout.txt")?,
            unviable: list("unviable.txt")?,
        })
    }

    /// The share of viable mutants the tests caught (a timeout counts as caught: the mutant
    /// made the tests hang, which fails them), or `None` with none viable.
    pub(crate) fn caught_share(&self) -> Option<f64> {
        let viable = self.caught.len() + self.missed.len() + self.timeout.len();
        (viable > 0).then(|| (self.caught.len() + self.timeout.len()) as f64 / viable as f64)
    }
}

/// Runs the task: `cargo xtask mutants [--scope planner|schedule] [--shard K/N]`.
pub(crate) fn mutants(args: &[String]) -> Result<(), String> {
    let mut scope_name = None;
    let mut shard = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--scope" => scope_name = words.next().cloned(),
            "--shard" => shard = words.next().cloned(),
            other => {
                return Err(format!(
                    "unknown argument `{other}` for `cargo xtask mutants`"
                ));
            }
        }
    }
    let scopes: Vec<&Scope> = match scope_name.as_deref() {
        None => SCOPES.iter().collect(),
        Some(name) => vec![
            SCOPES
                .iter()
                .find(|scope| scope.name == name)
                .ok_or_else(|| format!("no scope `{name}`: planner or schedule"))?,
        ],
    };
    if let Some(shard) = &shard {
        parse_shard(shard)?;
    }
    ensure_installed()?;
    let root = workspace_root();
    let out = root.join("target").join("mutants");
    let mut summary = String::from(
        "| scope | mutants run | caught | missed | timed out | unviable | caught of viable |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut survivors = String::new();
    for scope in scopes {
        let folder = out.join(scope.name);
        let outcomes = run_scope(&root, scope, shard.as_deref(), &folder)?;
        summary.push_str(&row(scope.name, &outcomes));
        for missed in &outcomes.missed {
            survivors.push_str(&format!("- {}: {missed}\n", scope.name));
        }
    }
    let report = format!(
        "{summary}\nMissed mutants:\n\n{}",
        if survivors.is_empty() {
            "none\n".to_string()
        } else {
            survivors
        }
    );
    println!("{report}");
    std::fs::write(out.join("summary.md"), &report)
        .map_err(|error| format!("cannot write the summary: {error}"))
}

/// `K/N` with `K < N`, as cargo-mutants takes it.
fn parse_shard(shard: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--shard takes K/N with K < N, not `{shard}`");
    let (k, n) = shard.split_once('/').ok_or_else(bad)?;
    let (k, n): (u32, u32) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

/// One table row of the summary.
fn row(name: &str, outcomes: &Outcomes) -> String {
    let run = outcomes.caught.len()
        + outcomes.missed.len()
        + outcomes.timeout.len()
        + outcomes.unviable.len();
    let share = outcomes
        .caught_share()
        .map_or("-".to_string(), |share| format!("{:.1}%", share * 100.0));
    format!(
        "| {name} | {run} | {} | {} | {} | {} | {share} |\n",
        outcomes.caught.len(),
        outcomes.missed.len(),
        outcomes.timeout.len(),
        outcomes.unviable.len()
    )
}

fn ensure_installed() -> Result<(), String> {
    let present = Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        return Ok(());
    }
    crate::run(Command::new("cargo").args(["install", "--locked", CARGO_MUTANTS]))
}

fn run_scope(
    root: &Path,
    scope: &Scope,
    shard: Option<&str>,
    folder: &PathBuf,
) -> Result<Outcomes, String> {
    std::fs::create_dir_all(folder)
        .map_err(|error| format!("cannot make {}: {error}", folder.display()))?;
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        .args(["mutants", "--package", scope.package])
        .args(["--test-package", scope.package])
        .args(["--timeout-multiplier", "3", "--no-shuffle"])
        // The copy each mutant is built in leaves out what git ignores: the Python environment
        // and the caches are gigabytes no mutant needs.
        .args(["--gitignore", "true"])
        .arg("--output")
        .arg(folder);
    for file in scope.files {
        command.args(["--file", file]);
    }
    if let Some(shard) = shard {
        command.args(["--shard", shard, "--sharding", "round-robin"]);
    }
    let status = command
        .status()
        .map_err(|error| format!("cannot run cargo mutants: {error}"))?;
    // 0: every mutant caught; 2: some missed; 3: some timed out. Anything else means the run
    // itself failed (1: bad usage, 4: the unmutated tests fail).
    if !matches!(status.code(), Some(0 | 2 | 3)) {
        return Err(format!(
            "cargo mutants on {} ended with {status}",
            scope.name
        ));
    }
    Outcomes::read(&folder.join("mutants.out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_read_as_cargo_mutants_takes_them() {
        assert_eq!(parse_shard("0/8"), Ok((0, 8)));
        assert_eq!(parse_shard("7/8"), Ok((7, 8)));
        assert!(parse_shard("8/8").is_err());
        assert!(parse_shard("1").is_err());
        assert!(parse_shard("a/8").is_err());
    }

    #[test]
    fn timeouts_count_as_caught_and_unviable_mutants_as_not_run() {
        let names = |count: usize| vec![String::from("m"); count];
        let outcomes = Outcomes {
            caught: names(8),
            missed: names(1),
            timeout: names(1),
            unviable: names(5),
        };
        assert_eq!(outcomes.caught_share(), Some(0.9));
        assert_eq!(Outcomes::default().caught_share(), None);
        assert_eq!(
            row("planner", &outcomes),
            "| planner | 15 | 8 | 1 | 1 | 5 | 90.0% |\n"
        );
    }
}
