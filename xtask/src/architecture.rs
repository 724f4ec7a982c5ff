//! The architecture check: the rules of ARCHITECTURE.md, read off `cargo metadata` and the sources.
//!
//! The rules are data (the tables below), so adding a crate or an arrow is a one-line change here and
//! in ARCHITECTURE.md, and a violation names the rule it breaks.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

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

/// The longest cell the README's status table may have: the table says what works and links to
/// the figures; the figures themselves live in the crates' READMEs and `docs/`.
pub const STATUS_CELL_LIMIT: usize = 300;

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
    violations.extend(check_status_table(&readme));
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

/// The dependency rules: arrows, direct CUDA use, CUDA linked indirectly.
pub fn check_dependencies(metadata: &Metadata) -> Vec<Violation> {
    let names: HashMap<&str, &str> = metadata
        .packages
        .iter()
        .map(|package| (package.id.as_str(), package.name.as_str()))
        .collect();
    let name_of = |id: &str| names.get(id).copied().unwrap_or(id).to_owned();
    let members: BTreeSet<String> = metadata
        .workspace_members
        .iter()
        .map(|id| name_of(id))
        .collect();
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
            && let Some((binding, path)) = find_normal_path(member_id, &nodes, &name_of)
        {
            violations.push(Violation::LinkedCuda {
                from: member,
                binding,
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
    let names: HashMap<&str, &str> = metadata
        .packages
        .iter()
        .map(|package| (package.id.as_str(), package.name.as_str()))
        .collect();
    let name_of = |id: &str| names.get(id).copied().unwrap_or(id).to_owned();
    let members: BTreeSet<String> = metadata
        .workspace_members
        .iter()
        .map(|id| name_of(id))
        .collect();
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

/// The workspace crates a crate's `//!` docs name on their `Who uses it:` paragraph (up to
/// `What it may depend on` or the paragraph's end), as `` `ultraep-...` `` in backticks; `None`
/// if the docs have no such paragraph.
pub fn stated_users(lib: &str) -> Option<BTreeSet<String>> {
    let docs: Vec<&str> = lib
        .lines()
        .take_while(|line| line.starts_with("//!") || line.trim().is_empty())
        .filter_map(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let start = docs
        .iter()
        .position(|line| line.starts_with("Who uses it:"))?;
    let mut paragraph = String::new();
    for line in &docs[start..] {
        if line.is_empty() {
            break;
        }
        paragraph.push(' ');
        paragraph.push_str(line);
    }
    let paragraph = paragraph
        .split("What it may depend on")
        .next()
        .unwrap_or_default();
    Some(
        paragraph
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|name| name.starts_with("ultraep-") && !name.contains(' '))
            .map(str::to_owned)
            .collect(),
    )
}

/// Cells of the README's `## Status` table longer than [`STATUS_CELL_LIMIT`].
pub fn check_status_table(readme: &str) -> Vec<Violation> {
    let Some(start) = readme.find("\n## Status") else {
        return Vec::new();
    };
    readme[start + 1..]
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let length = cells.iter().map(|cell| cell.chars().count()).max()?;
            (length > STATUS_CELL_LIMIT).then(|| Violation::LongStatusCell {
                row: cells[0].to_owned(),
                length,
            })
        })
        .collect()
}

/// A chain of normal dependencies from `start` to a CUDA binding, if there is one.
fn find_normal_path(
    start: &str,
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
            if CUDA_BINDINGS.contains(&name.as_str()) {
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
mod tests {
    use super::*;

    /// A metadata document with the given packages and normal-dependency edges.
    fn metadata(members: &[&str], edges: &[(&str, &str)], others: &[&str]) -> Metadata {
        let packages: Vec<_> = members
            .iter()
            .chain(others)
            .map(|name| serde_json::json!({ "id": format!("{name}-id"), "name": name }))
            .collect();
        let nodes: Vec<_> = members
            .iter()
            .chain(others)
            .map(|name| {
                let deps: Vec<_> = edges
                    .iter()
                    .filter(|(from, _)| from == name)
                    .map(|(_, to)| {
                        serde_json::json!({ "pkg": format!("{to}-id"), "dep_kinds": [{ "kind": null }] })
                    })
                    .collect();
                serde_json::json!({ "id": format!("{name}-id"), "deps": deps })
            })
            .collect();
        let members: Vec<_> = members.iter().map(|name| format!("{name}-id")).collect();
        serde_json::from_value(serde_json::json!({
            "packages": packages,
            "workspace_members": members,
            "resolve": { "nodes": nodes },
        }))
        .expect("well-formed test metadata")
    }

    const MEMBERS: &[&str] = &[
        "ultraep-topo",
        "ultraep-plan",
        "ultraep-xfer",
        "ultraep-kernels",
        "ultraep-runtime",
        "ultraep-bench",
        "xtask",
    ];

    #[test]
    fn the_workspace_keeps_its_architecture() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let violations = check_workspace(root).expect("cargo metadata runs");
        let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(violations.is_empty(), "{report:#?}");
    }

    #[test]
    fn the_allowed_arrows_point_down_the_list() {
        for (position, (name, allowed)) in ALLOWED_ARROWS.iter().enumerate() {
            for target in *allowed {
                let target_position = ALLOWED_ARROWS.iter().position(|(other, _)| other == target);
                assert!(
                    target_position < Some(position),
                    "{name} -> {target} points up"
                );
            }
        }
    }

    #[test]
    fn cudarc_in_the_planner_is_caught() {
        let meta = metadata(
            MEMBERS,
            &[("ultraep-plan", "cudarc"), ("ultraep-kernels", "cudarc")],
            &["cudarc"],
        );
        let violations = check_dependencies(&meta);
        assert!(violations.contains(&Violation::DirectCuda {
            from: "ultraep-plan".into(),
            binding: "cudarc".into()
        }));
        assert!(violations.iter().any(|violation| matches!(
            violation,
            Violation::LinkedCuda { from, .. } if from == "ultraep-plan"
        )));
        assert_eq!(
            violations.len(),
            2,
            "kernels may use cudarc: {violations:?}"
        );
    }

    #[test]
    fn cudarc_reached_through_another_crate_is_caught() {
        let meta = metadata(
            MEMBERS,
            &[("ultraep-topo", "helper"), ("helper", "cudarc")],
            &["helper", "cudarc"],
        );
        assert_eq!(
            check_dependencies(&meta),
            vec![Violation::LinkedCuda {
                from: "ultraep-topo".into(),
                binding: "cudarc".into(),
                path: vec!["ultraep-topo".into(), "helper".into(), "cudarc".into()],
            }]
        );
    }

    #[test]
    fn upward_arrows_and_unlisted_crates_are_caught() {
        let mut members = MEMBERS.to_vec();
        members.push("ultraep-newcomer");
        let meta = metadata(&members, &[("ultraep-plan", "ultraep-topo")], &[]);
        assert_eq!(
            check_dependencies(&meta),
            vec![
                Violation::ForbiddenArrow {
                    from: "ultraep-plan".into(),
                    to: "ultraep-topo".into()
                },
                Violation::UnlistedCrate {
                    name: "ultraep-newcomer".into()
                },
            ]
        );
    }

    #[test]
    fn who_uses_a_crate_is_read_off_its_docs() {
        let lib = "//! A crate.\n//!\n//! Who uses it: people, `ultraep-runtime` and\n//! `ultraep-py`. What it may depend on: `ultraep-plan`.\n//!\n//! Unrelated: `ultraep-bench`.\n\npub mod x;\n";
        let stated = stated_users(lib).unwrap();
        assert_eq!(
            stated,
            BTreeSet::from(["ultraep-runtime".to_owned(), "ultraep-py".to_owned()])
        );
        assert_eq!(stated_users("//! No such line.\n"), None);
        assert_eq!(
            stated_users("//! Who uses it: people.\n"),
            Some(BTreeSet::new())
        );
    }

    #[test]
    fn cuda_in_a_tree_is_caught() {
        let clean = "ultraep-runtime v0.1.0 (/w)\nthiserror v2.0.21\nultraep-plan v0.1.0 (/w)\n";
        assert!(cuda_in_tree("ultraep-runtime", clean).is_empty());
        let cuda = "ultraep-runtime v0.1.0 (/w)\nultraep-kernels v0.1.0 (/w)\ncudarc v0.19.0\n";
        assert_eq!(
            cuda_in_tree("ultraep-runtime", cuda),
            vec![Violation::CudaWithoutDefaults {
                krate: "ultraep-runtime".into(),
                binding: "cudarc".into()
            }]
        );
    }

    #[test]
    fn a_long_status_cell_is_caught() {
        let short = "x".repeat(STATUS_CELL_LIMIT);
        let long = "y".repeat(STATUS_CELL_LIMIT + 1);
        let readme = format!(
            "# t\n\n## Status\n\n| piece | works |\n|---|---|\n| a | {short} |\n| b | {long} |\n\n## License\n\n| c | {long} |\n"
        );
        assert_eq!(
            check_status_table(&readme),
            vec![Violation::LongStatusCell {
                row: "b".into(),
                length: STATUS_CELL_LIMIT + 1
            }]
        );
    }

    #[test]
    fn io_in_code_is_caught_but_not_in_comments() {
        let text = "//! Reads with std::fs in the caller.\nfn f() {\n    let _ = std::fs::read(\"x\");\n    println!(\"hi\");\n}\n";
        let violations = scan_source("lib.rs", text);
        assert_eq!(
            violations,
            vec![
                Violation::Io {
                    file: "lib.rs".into(),
                    line: 3,
                    marker: "std::fs"
                },
                Violation::Io {
                    file: "lib.rs".into(),
                    line: 4,
                    marker: "println!"
                },
            ]
        );
    }

    #[test]
    fn unsafe_code_is_allowed_only_where_listed() {
        let text = "//! Peer memory.\n#![allow(unsafe_code)]\nfn f() {}\n";
        assert!(scan_unsafe("ultraep-runtime/src/plane/segment.rs", text).is_empty());
        assert_eq!(
            scan_unsafe("ultraep-runtime/src/engine/mod.rs", text),
            vec![Violation::Unsafe {
                file: "ultraep-runtime/src/engine/mod.rs".into(),
                line: 2
            }]
        );
        // A comment or a string that names the lint is not an attribute.
        let mention = "// allow(unsafe_code) here?\nlet s = \"#[allow(unsafe_code)]\";\n";
        assert!(scan_unsafe("xtask/src/main.rs", mention).is_empty());
    }
}
