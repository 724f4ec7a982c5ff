//! The command as a user runs it: its name, scenario matching, early errors, JSON output and logs.

fn ultraep(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_command_names_itself_and_matches_scenarios_ignoring_case() {
    let version = ultraep(&["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("ultraep "));
    let help = String::from_utf8_lossy(&ultraep(&["--help"]).stdout).into_owned();
    assert!(help.starts_with("ultraep: "), "{help}");

    let missing = ultraep(&["bench", "--only", "llama", "--quiet"]);
    assert_eq!(missing.status.code(), Some(2));
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        message.contains("no such scenario; known: GLM-4.5-Air training"),
        "{message}"
    );

    let found = ultraep(&["simulate", "--scenario", "deepseek"]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert!(String::from_utf8_lossy(&found.stdout).contains("| DeepSeek-V3 training |"));
}

#[test]
fn a_bad_report_folder_fails_before_the_work() {
    let file = std::env::temp_dir().join(format!("ultraep-not-a-folder-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    // Not --quiet and not a terminal: every scenario run would log a line.
    let out = ultraep(&["bench", "--out", file.join("report").to_str().unwrap()]);
    std::fs::remove_file(&file).ok();
    assert_eq!(out.status.code(), Some(2));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("ultraep-not-a-folder"), "{message}");
    assert!(
        !message.contains("done"),
        "it ran scenarios first: {message}"
    );
}

#[test]
fn every_report_command_speaks_json() {
    for args in [
        &["simulate", "--scenario", "GLM-4.7 prefill mixed", "--json"][..],
        &["topo", "--preset", "hgx-h100", "--count", "2", "--json"][..],
        &["topo", "--list", "--json"][..],
        &["xfer", "--replicas", "4", "--no-reference", "--json"][..],
        &["engine", "--steps", "1", "--layers", "1", "--json"][..],
    ] {
        let out = ultraep(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|error| panic!("{args:?}: {error}"));
        assert!(value.is_object() || value.is_array(), "{args:?}");
    }
    let topo = ultraep(&["topo", "--preset", "hgx-h100", "--count", "2", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&topo.stdout).unwrap();
    assert_eq!(value["ranks"], 16);
    assert_eq!(value["domains"].as_array().map(Vec::len), Some(2));
}

#[test]
fn xfer_tells_a_log_it_is_working() {
    // Not a terminal: the slow reference rows each log a line on stderr, the table stays whole.
    let out = ultraep(&["xfer", "--replicas", "1"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("ultraep xfer: EP64 plan at 3.0 done"), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| EP64 plan at 3.0 |"));
}
