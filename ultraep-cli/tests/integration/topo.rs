//! `ultraep topo`: presets, saving a file, reading it back, and refusing bad files.

use std::process::{Command, Output};

fn ultraep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args(args)
        .output()
        .expect("the ultraep binary runs")
}

fn scratch_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ultraep-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

#[test]
fn saved_file_reads_back_as_the_same_topology() {
    let dir = scratch_dir("save");
    let file = dir.join("rack.toml");
    let file = file.to_str().unwrap();
    let saved = ultraep(&[
        "topo",
        "--preset",
        "gb300-nvl72",
        "--count",
        "2",
        "--save",
        file,
    ]);
    assert!(saved.status.success(), "{saved:?}");
    let shown = String::from_utf8(saved.stdout).unwrap();
    assert!(
        shown.starts_with("GB300 NVL72 x2: 144 ranks in 2 scale-up domains\n"),
        "{shown}"
    );

    let read = ultraep(&["topo", "--file", file]);
    assert!(read.status.success(), "{read:?}");
    let reread = String::from_utf8(read.stdout).unwrap();
    assert_eq!(format!("{reread}wrote {file}\n"), shown);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_file_is_a_clear_error_and_a_failure_exit() {
    let dir = scratch_dir("bad");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "name = \"x\"\n[[domain]]\nname = \"a\"\nranks = \"0-7\"\n",
    )
    .unwrap();
    let out = ultraep(&["topo", "--file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = String::from_utf8(out.stderr).unwrap();
    assert!(
        message.contains("scale_up_egress_gb_per_s is not given for domain \"a\""),
        "{message}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_file_names_the_path() {
    let out = ultraep(&["topo", "--file", "/nonexistent/ultraep.toml"]);
    assert!(!out.status.success());
    let message = String::from_utf8(out.stderr).unwrap();
    assert!(message.contains("/nonexistent/ultraep.toml"), "{message}");
}

#[test]
fn list_names_every_preset() {
    let out = ultraep(&["topo", "--list"]);
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    for name in [
        "gb200-nvl72",
        "gb300-nvl72",
        "gb200-nvl36",
        "hgx-h100",
        "hgx-h200",
        "hgx-b200",
    ] {
        assert!(listing.contains(name), "{name} missing from {listing}");
    }
}
