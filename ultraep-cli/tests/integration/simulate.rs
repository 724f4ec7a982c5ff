//! `ultraep simulate` on recorded traces, and `ultraep engine` writing one.

use std::process::Command;

use ultraep_bench::trace::Trace;

use crate::fixtures::{scratch, small_model, small_trace};

#[test]
fn simulate_replays_a_trace() {
    let dir = scratch("simulate");
    let path = dir.join("qwen3.jsonl");
    std::fs::write(&path, small_trace(8, 128, 2, 2).to_jsonl().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args([
            "simulate",
            "--trace",
            path.to_str().unwrap(),
            "--model",
            "qwen3-235b",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| ultraep |"), "{table}");
    let wrong_model = Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args([
            "simulate",
            "--trace",
            path.to_str().unwrap(),
            "--model",
            "deepseek-v3",
        ])
        .output()
        .unwrap();
    assert_eq!(wrong_model.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong_model.stderr).contains("128 experts"));
    std::fs::remove_dir_all(dir).ok();
}

/// A trace the runtime's engine wrote while it ran: `ultraep simulate` replays it.
#[test]
fn simulate_replays_a_trace_the_engine_wrote() {
    use ultraep_plan::{ExpertLayout, PlanConfig};
    use ultraep_runtime::{Engine, EngineConfig, Mode, StepId, TraceWriter};

    let recorded = small_trace(8, 128, 2, 2);
    let mut engine = Engine::new(EngineConfig {
        topology: ultraep_topo::Preset::HgxH100.topology(1).unwrap(),
        layout: ExpertLayout::contiguous(8, 16).unwrap(),
        model: small_model(),
        mode: Mode::Prefill,
        slots_per_rank: 2,
        staging_slots: 0,
        microbatches_in_flight: 1,
        prefer_resident_replicas: true,
        hold_forward: false,
        plan: PlanConfig {
            min_replica_tokens: 16,
            ..PlanConfig::default()
        },
        transfer: ultraep_xfer::TransferConfig {
            tile_bytes: 512,
            chunk_bytes: 1024,
            ..ultraep_xfer::TransferConfig::default()
        },
        workers: 2,
    })
    .unwrap();
    let mut writer = TraceWriter::new(Vec::new(), 8, 128, 2, Some(8)).unwrap();
    for (microbatch, layers) in recorded.steps.iter().enumerate() {
        for (layer, loads) in layers.iter().enumerate() {
            let step = StepId::new(100 + microbatch as u32, layer as u32);
            let matrix = ultraep_plan::LoadMatrix::new(loads, 8, 128).unwrap();
            let report = engine.step(step, matrix).unwrap();
            writer.record(&report, matrix).unwrap();
        }
    }
    let text = String::from_utf8(writer.finish().unwrap()).unwrap();
    assert!(text.contains(r#""metrics": {"#));
    assert_eq!(Trace::from_jsonl(&text, "engine.jsonl").unwrap(), recorded);

    let dir = scratch("engine");
    let path = dir.join("engine.jsonl");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args([
            "simulate",
            "--trace",
            path.to_str().unwrap(),
            "--model",
            "qwen3-235b",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("| ultraep |")
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `ultraep engine` runs a scenario through the runtime's engine and writes a trace that reads
/// back with every step's loads.
#[test]
fn the_engine_command_runs_a_scenario_and_writes_its_trace() {
    let dir = scratch("engine-command");
    let path = dir.join("run.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args([
            "engine",
            "--scenario",
            "GLM-4.5-Air",
            "--steps",
            "2",
            "--layers",
            "2",
            "--trace",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| max/mean before -> after | 2."), "{table}");
    assert!(
        table.contains("| copies again before the backward |"),
        "{table}"
    );
    let trace = Trace::load(&path).unwrap();
    assert_eq!((trace.ranks, trace.experts, trace.layers()), (64, 128, 2));
    assert_eq!(trace.steps.len(), 2);
    let bad = Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args(["engine", "--scenario", "no such model"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    std::fs::remove_dir_all(dir).ok();
}
