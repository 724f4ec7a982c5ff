//! The architecture check's rules, each shown to catch what it forbids.

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
    "ultraep-cli",
    "ultraep-py",
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
fn clap_below_the_command_line_is_caught() {
    // The command line and xtask may parse arguments; the simulation library may not, not even
    // through the runtime, and neither may the Python binding through it.
    let meta = metadata(
        MEMBERS,
        &[
            ("ultraep-cli", "clap"),
            ("ultraep-cli", "ultraep-bench"),
            ("xtask", "indicatif"),
            ("ultraep-runtime", "helper"),
            ("helper", "clap"),
            ("ultraep-bench", "ultraep-runtime"),
            ("ultraep-py", "ultraep-bench"),
        ],
        &["clap", "indicatif", "helper"],
    );
    let linked: Vec<(String, String)> = check_dependencies(&meta)
        .into_iter()
        .filter_map(|violation| match violation {
            Violation::LinkedCommandLine { from, package, .. } => Some((from, package)),
            _ => None,
        })
        .collect();
    assert_eq!(
        linked,
        [
            ("ultraep-runtime".to_owned(), "clap".to_owned()),
            ("ultraep-bench".to_owned(), "clap".to_owned()),
            ("ultraep-py".to_owned(), "clap".to_owned()),
        ]
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
