//! The architecture check: the rules of ARCHITECTURE.md, read off `cargo metadata` and the sources.
//!
//! The rules are data (the tables below), so adding a crate or an arrow is a one-line change here and
//! in ARCHITECTURE.md, and a violation names the rule it breaks.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use crate::crate_docs::{STATUS_CELL_LIMIT, long_status_cells, stated_users};

/// Every workspace crate and the workspace crates it may depend on (normal dependencies).
/// Arrows point down this list only, so the graph cannot have a cycle.
pub const ALLOWED_ARROWS: &[(&str, &[&str])] = &[
    ("ultraep-topo", &[]),
    ("ultraep-plan", &[]),
    ("ultraep-xfer", &["ultraep-topo", "ultraep-plan"]),
    (
        "ultraep-kernels",
        &["ultraep-topo", "ultraep-plan", "ultraep-xfer"],
    ),
    (
        "ultraep-runtime",
        &[
            "ultraep-topo",
            "ultraep-plan",
            "ultraep-xfer",
            "ultraep-kernels",
        ],
    ),
    (
        "ultraep-bench",
        &[
            "ultraep-topo",
            "ultraep-plan",
            "ultraep-xfer",
            "ultraep-kernels",
            "ultraep-runtime",
        ],
    ),
    (
        "ultraep-cli",
        &[
            "ultraep-topo",
            "ultraep-plan",
            "ultraep-xfer",
            "ultraep-kernels",
            "ultraep-runtime",
            "ultraep-bench",
        ],
    ),
    (
        "ultraep-py",
        &[
            "ultraep-topo",
            "ultraep-plan",
            "ultraep-xfer",
            "ultraep-kernels",
            "ultraep-runtime",
            "ultraep-bench",
        ],
    ),
    ("xtask", &[]),
];

/// The only crate that may depend on CUDA bindings directly.
pub const CUDA_CRATE: &str = "ultraep-kernels";

/// Packages that bind CUDA.
pub const CUDA_BINDINGS: &[&str] = &["cudarc"];

/// Crates that must not link CUDA bindings even indirectly.
pub const CUDA_FREE: &[&str] = &["ultraep-topo", "ultraep-plan", "ultraep-xfer"];

/// Packages that belong to a command line: argument parsing and progress bars.
pub const COMMAND_LINE_PACKAGES: &[&str] = &["clap", "indicatif"];

/// The crates that may link [`COMMAND_LINE_PACKAGES`]: the `ultraep` command and the task runner.
/// Everything below the command line (the libraries, the Python binding) must not.
pub const COMMAND_LINES: &[&str] = &["ultraep-cli", "xtask"];

/// Crates that link no CUDA bindings when built without their default features: the engine runs
/// its CPU data planes alone, and CUDA comes with its `cuda` feature.
pub const CUDA_FREE_WITHOUT_DEFAULTS: &[&str] = &["ultraep-runtime"];

/// Crates whose library sources must do no I/O, and the paths and macros that would do it.
pub const IO_FREE: &[&str] = &["ultraep-topo", "ultraep-plan"];
pub const IO_MARKERS: &[&str] = &[
    "std::fs",
    "std::io",
    "std::net",
    "std::process",
    "std::env",
    "print!",
    "println!",
    "eprint!",
    "eprintln!",
];

/// Outside the CUDA crate (whose driver calls are all `unsafe`), the only files that may lift the
/// workspace's `unsafe_code = "deny"`: shared memory that other processes write, and the test
/// allocator that counts allocations.
pub const UNSAFE_FILES: &[&str] = &[
    "ultraep-runtime/src/plane/segment.rs",
    "test-support/counting_allocator.rs",
];

/// Crates (folders) whose sources the unsafe rule reads.
pub const UNSAFE_CHECKED: &[&str] = &[
    "ultraep-topo",
    "ultraep-plan",
    "ultraep-xfer",
    "ultraep-runtime",
    "ultraep-bench",
    "ultraep-cli",
    "ultraep-py",
    "xtask",
    "test-support",
];

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A workspace crate the rules do not know.
    UnlistedCrate { name: String },
    /// A dependency arrow the rules do not allow.
    ForbiddenArrow { from: String, to: String },
    /// A crate other than the CUDA crate depends on CUDA bindings directly.
    DirectCuda { from: String, binding: String },
    /// A CUDA-free crate links CUDA bindings through its dependencies.
    LinkedCuda {
        from: String,
        binding: String,
        path: Vec<String>,
    },
    /// A crate below the command line links an argument parser or progress bar.
    LinkedCommandLine {
        from: String,
        package: String,
        path: Vec<String>,
    },
    /// A file lifts the unsafe-code lint without being one of [`UNSAFE_FILES`].
    Unsafe { file: String, line: usize },
    /// A pure crate's source does I/O.
    Io {
        file: String,
        line: usize,
        marker: &'static str,
    },
    /// A crate built without its default features links CUDA bindings.
    CudaWithoutDefaults { krate: String, binding: String },
    /// A crate's `Who uses it:` line names other workspace crates than those that depend on it.
    UsedBy {
        krate: String,
        stated: BTreeSet<String>,
        actual: BTreeSet<String>,
    },
    /// A cell of the README's status table is longer than [`STATUS_CELL_LIMIT`] characters.
    LongStatusCell { row: String, length: usize },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UnlistedCrate { name } => write!(
                f,
                "workspace crate {name} is not in xtask's ALLOWED_ARROWS (add it there and to ARCHITECTURE.md)"
            ),
            Violation::ForbiddenArrow { from, to } => {
                write!(
                    f,
                    "{from} depends on {to}, an arrow ARCHITECTURE.md does not allow"
                )
            }
            Violation::DirectCuda { from, binding } => {
                write!(
                    f,
                    "{from} depends on {binding}; only {CUDA_CRATE} may touch CUDA"
                )
            }
            Violation::LinkedCuda {
                from,
                binding,
                path,
            } => write!(
                f,
                "{from} links {binding} through {}; it must build without CUDA",
                path.join(" -> ")
            ),
            Violation::LinkedCommandLine {
                from,
                package,
                path,
            } => write!(
                f,
                "{from} links {package} through {}; only {} may link command-line packages",
                path.join(" -> "),
                COMMAND_LINES.join(" and ")
            ),
            Violation::Unsafe { file, line } => write!(
                f,
                "{file}:{line} allows unsafe code; only {} may (xtask's UNSAFE_FILES)",
                UNSAFE_FILES.join(", ")
            ),
            Violation::Io { file, line, marker } => {
                write!(f, "{file}:{line} uses {marker}; this crate must do no I/O")
            }
            Violation::UsedBy {
                krate,
                stated,
                actual,
            } => write!(
                f,
                "{krate}'s doc says it is used by {stated:?}, but cargo metadata says {actual:?}"
            ),
            Violation::CudaWithoutDefaults { krate, binding } => write!(
                f,
                "{krate} links {binding} without its default features; CUDA must come only with its `cuda` feature"
            ),
            Violation::LongStatusCell { row, length } => write!(
                f,
                "README status row {row:?} has a cell of {length} characters (at most {STATUS_CELL_LIMIT})"
            ),
        }
    }
}

/// The parts of `cargo metadata --format-version 1` the check reads.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
    resolve: Option<Resolve>,
}

#[derive(Debug, Deserialize)]
struct Package {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Debug, Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Debug, Deserialize)]
struct DepKind {
    /// `None` for a normal dependency, `Some("dev")` or `Some("build")` otherwise.
    kind: Option<String>,
}

/// Runs `cargo metadata` on the workspace at `root` and checks every rule.
pub fn check_workspace(root: &Path) -> Result<Vec<Violation>, String> {
    // All features: a feature that pulled CUDA into the planner would be a violation too.
    let output = cargo(
        root,
        &[
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--locked",
        ],
    )?;
    let metadata: Metadata = serde_json::from_slice(&output)
        .map_err(|error| format!("cannot read cargo metadata: {error}"))?;
    let mut violations = check_dependencies(&metadata);
    for (krate, users) in dependents(&metadata) {
        let lib = root.join(&krate).join("src").join("lib.rs");
        if let Ok(text) = std::fs::read_to_string(&lib)
            && let Some(stated) = stated_users(&text)
            && stated != users
        {
            violations.push(Violation::UsedBy {
                krate,
                stated,
                actual: users,
            });
        }
    }
    for krate in CUDA_FREE_WITHOUT_DEFAULTS {
        violations.extend(check_cuda_without_defaults(root, krate)?);
    }
    let readme = std::fs::read_to_string(root.join("README.md"))
        .map_err(|error| format!("cannot read README.md: {error}"))?;
    violations.extend(
        long_status_cells(&readme)
            .into_iter()
            .map(|(row, length)| Violation::LongStatusCell { row, length }),
    );
    for krate in IO_FREE {
        violations.extend(check_sources(&root.join(krate).join("src"))?);
    }
    for folder in UNSAFE_CHECKED {
        for (file, text) in rust_files(root, &root.join(folder))? {
            violations.extend(scan_unsafe(&file, &text));
        }
    }
    Ok(violations)
}

/// Every `.rs` file under `dir`, with its path relative to `root` and its text.
fn rust_files(root: &Path, dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry
                .map_err(|error| format!("cannot list {}: {error}", dir.display()))?
                .path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name != "target") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                let relative = path.strip_prefix(root).unwrap_or(&path);
                files.push((relative.display().to_string(), text));
            }
        }
    }
    Ok(files)
}

/// Where `file` (relative to the workspace root) lifts the unsafe-code lint, unless it may.
pub fn scan_unsafe(file: &str, text: &str) -> Vec<Violation> {
    if UNSAFE_FILES.contains(&file) {
        return Vec::new();
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim_start();
            (line.starts_with("#![allow(") || line.starts_with("#[allow("))
                && line.contains("unsafe_code")
        })
        .map(|(index, _)| Violation::Unsafe {
            file: file.to_owned(),
            line: index + 1,
        })
        .collect()
}

/// Every package's name by its id.
fn package_names(metadata: &Metadata) -> HashMap<&str, &str> {
    metadata
        .packages
        .iter()
        .map(|package| (package.id.as_str(), package.name.as_str()))
        .collect()
}

/// The names of the workspace's members.
fn member_names(metadata: &Metadata, names: &HashMap<&str, &str>) -> BTreeSet<String> {
    metadata
        .workspace_members
        .iter()
        .map(|id| names.get(id.as_str()).copied().unwrap_or(id).to_owned())
        .collect()
}

/// The dependency rules: arrows, direct CUDA use, CUDA linked indirectly.
pub fn check_dependencies(metadata: &Metadata) -> Vec<Violation> {
    let names = package_names(metadata);
    let name_of = |id: &str| names.get(id).copied().unwrap_or(id).to_owned();
    let members = member_names(metadata, &names);
    let nodes: HashMap<&str, &Node> = metadata
        .resolve
        .iter()
        .flat_map(|resolve| &resolve.nodes)
        .map(|node| (node.id.as_str(), node))
        .collect();
    let mut violations = Vec::new();
    for member_id in &metadata.workspace_members {
        let member = name_of(member_id);
        let Some(&(_, allowed)) = ALLOWED_ARROWS.iter().find(|(name, _)| *name == member) else {
            violations.push(Violation::UnlistedCrate { name: member });
            continue;
        };
        let Some(node) = nodes.get(member_id.as_str()) else {
            continue;
        };
        for dep in &node.deps {
            let to = name_of(&dep.pkg);
            let normal = dep.dep_kinds.iter().any(|kind| kind.kind.is_none());
            if normal && members.contains(&to) && !allowed.contains(&to.as_str()) {
                violations.push(Violation::ForbiddenArrow {
                    from: member.clone(),
                    to: to.clone(),
                });
            }
            if CUDA_BINDINGS.contains(&to.as_str()) && member != CUDA_CRATE {
                violations.push(Violation::DirectCuda {
                    from: member.clone(),
                    binding: to,
                });
            }
        }
        if CUDA_FREE.contains(&member.as_str())
            && let Some((binding, path)) =
                find_normal_path(member_id, CUDA_BINDINGS, &nodes, &name_of)
        {
            violations.push(Violation::LinkedCuda {
                from: member.clone(),
                binding,
                path,
            });
        }
        if !COMMAND_LINES.contains(&member.as_str())
            && let Some((package, path)) =
                find_normal_path(member_id, COMMAND_LINE_PACKAGES, &nodes, &name_of)
        {
            violations.push(Violation::LinkedCommandLine {
                from: member,
                package,
                path,
            });
        }
    }
    violations
}

/// Whether `krate`, built without its default features, links a CUDA binding through its normal
/// dependencies (`cargo tree -e normal`: features resolved for that crate alone, which `cargo
/// metadata` cannot do for one member of a workspace).
fn check_cuda_without_defaults(root: &Path, krate: &str) -> Result<Vec<Violation>, String> {
    let output = cargo(
        root,
        &[
            "tree",
            "--locked",
            "-p",
            krate,
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
        ],
    )?;
    Ok(cuda_in_tree(krate, &String::from_utf8_lossy(&output)))
}

/// What `cargo ARGS` prints in the workspace at `root`, or why it failed.
fn cargo(root: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .output()
        .map_err(|error| format!("could not run cargo {}: {error}", args[0]))?;
    if !output.status.success() {
        return Err(format!(
            "cargo {} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output.stdout)
}

/// The CUDA bindings a `cargo tree --prefix none` listing names.
pub fn cuda_in_tree(krate: &str, tree: &str) -> Vec<Violation> {
    CUDA_BINDINGS
        .iter()
        .filter(|binding| {
            tree.lines()
                .any(|line| line.split_whitespace().next() == Some(**binding))
        })
        .map(|binding| Violation::CudaWithoutDefaults {
            krate: krate.to_owned(),
            binding: (*binding).to_owned(),
        })
        .collect()
}

/// Every workspace crate with the workspace crates that depend on it (normal dependencies).
pub fn dependents(metadata: &Metadata) -> Vec<(String, BTreeSet<String>)> {
    let names = package_names(metadata);
    let name_of = |id: &str| names.get(id).copied().unwrap_or(id).to_owned();
    let members = member_names(metadata, &names);
    let mut users: Vec<(String, BTreeSet<String>)> = members
        .iter()
        .map(|member| (member.clone(), BTreeSet::new()))
        .collect();
    for node in metadata.resolve.iter().flat_map(|resolve| &resolve.nodes) {
        let from = name_of(&node.id);
        if !members.contains(&from) {
            continue;
        }
        for dep in &node.deps {
            let to = name_of(&dep.pkg);
            let normal = dep.dep_kinds.iter().any(|kind| kind.kind.is_none());
            if normal && let Some((_, set)) = users.iter_mut().find(|(name, _)| *name == to) {
                set.insert(from.clone());
            }
        }
    }
    users
}

/// A chain of normal dependencies from `start` to one of the `targets` packages, if there is one.
fn find_normal_path(
    start: &str,
    targets: &[&str],
    nodes: &HashMap<&str, &Node>,
    name_of: &dyn Fn(&str) -> String,
) -> Option<(String, Vec<String>)> {
    let mut seen = BTreeSet::from([start.to_owned()]);
    let mut stack = vec![vec![start.to_owned()]];
    while let Some(path) = stack.pop() {
        let current = path.last()?;
        let Some(node) = nodes.get(current.as_str()) else {
            continue;
        };
        for dep in &node.deps {
            if !dep.dep_kinds.iter().any(|kind| kind.kind.is_none()) {
                continue;
            }
            let mut next = path.clone();
            next.push(dep.pkg.clone());
            let name = name_of(&dep.pkg);
            if targets.contains(&name.as_str()) {
                let names = next.iter().map(|id| name_of(id)).collect();
                return Some((name, names));
            }
            if seen.insert(dep.pkg.clone()) {
                stack.push(next);
            }
        }
    }
    None
}

/// Every use of an I/O path or macro in the `.rs` files under `dir`.
pub fn check_sources(dir: &Path) -> Result<Vec<Violation>, String> {
    let mut violations = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|error| format!("cannot list {}: {error}", dir.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                violations.extend(scan_source(&path.display().to_string(), &text));
            }
        }
    }
    Ok(violations)
}

/// The I/O markers in one file's code; comments (doc examples included) are not code.
pub fn scan_source(file: &str, text: &str) -> Vec<Violation> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .flat_map(|(index, line)| {
            IO_MARKERS
                .iter()
                .filter(move |marker| line.contains(*marker))
                .map(move |&marker| Violation::Io {
                    file: file.to_owned(),
                    line: index + 1,
                    marker,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests;
