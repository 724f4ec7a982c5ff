//! Traces: the JSON-lines round trip, TensorRT-LLM dumps, and every kind of bad file.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, serialize};
use ultraep_bench::trace::Trace;

use crate::fixtures::{scratch, small_model, small_trace};

#[test]
fn jsonl_round_trip() {
    let trace = small_trace(4, 16, 3, 2);
    let text = trace.to_jsonl().unwrap();
    assert_eq!(Trace::from_jsonl(&text, "t").unwrap(), trace);
    // Records may come in any order.
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].reverse();
    assert_eq!(Trace::from_jsonl(&lines.join("\n"), "t").unwrap(), trace);
}

fn refused(text: &str, fragment: &str) {
    let error = Trace::from_jsonl(text, "bad.jsonl")
        .unwrap_err()
        .to_string();
    assert!(error.contains(fragment), "{error:?} lacks {fragment:?}");
    assert!(error.starts_with("bad.jsonl: "), "{error}");
}

const HEADER: &str = r#"{"ultraep_trace": 1, "ranks": 2, "experts": 2, "layers": 1}"#;

#[test]
fn empty_trace() {
    refused("", "empty");
}

#[test]
fn header_with_an_unknown_key() {
    refused(
        r#"{"ultraep_trace": 1, "ranks": 2, "experts": 2, "layers": 1, "lyers": 2}"#,
        "unknown field",
    );
}

#[test]
fn unknown_version() {
    refused(
        r#"{"ultraep_trace": 2, "ranks": 2, "experts": 2, "layers": 1}"#,
        "version 2",
    );
}

#[test]
fn header_without_records() {
    refused(HEADER, "no records");
}

#[test]
fn record_with_too_few_counts() {
    refused(
        &format!("{HEADER}\n{{\"step\": 0, \"layer\": 0, \"rank\": 0, \"counts\": [1]}}"),
        "line 2: 1 counts",
    );
}

#[test]
fn record_of_an_unknown_rank() {
    refused(
        &format!("{HEADER}\n{{\"step\": 0, \"layer\": 0, \"rank\": 2, \"counts\": [1, 2]}}"),
        "rank 2 layer 0",
    );
}

#[test]
fn negative_count() {
    refused(
        &format!("{HEADER}\n{{\"step\": 0, \"layer\": 0, \"rank\": 0, \"counts\": [-1, 2]}}"),
        "line 2",
    );
}

#[test]
fn duplicate_record() {
    let record = r#"{"step": 0, "layer": 0, "rank": 0, "counts": [1, 2]}"#;
    refused(&format!("{HEADER}\n{record}\n{record}"), "appears twice");
}

#[test]
fn truncated_trace() {
    let trace = small_trace(2, 2, 2, 1).to_jsonl().unwrap();
    let cut: Vec<&str> = trace.lines().collect();
    refused(
        &cut[..cut.len() - 1].join("\n"),
        "step 1 layer 0 rank 1 is missing",
    );
    // A line cut in the middle is a syntax error naming its line.
    let half = &trace[..trace.len() - 10];
    refused(half, "line 5");
}

/// Writes a TensorRT-LLM dump of `trace` (int64 bincounts per "{iter}_{layer}", iterations from 100).
fn write_trtllm(dir: &Path, trace: &Trace) {
    std::fs::write(
        dir.join("meta_info.json"),
        format!(
            "{{\"num_experts\": {}, \"num_experts_per_token\": 8, \"ep_size\": {}}}",
            trace.experts, trace.ranks
        ),
    )
    .unwrap();
    for rank in 0..trace.ranks as usize {
        let mut buffers = Vec::new();
        for (step, layers) in trace.steps.iter().enumerate() {
            for (layer, matrix) in layers.iter().enumerate() {
                let row =
                    &matrix[rank * trace.experts as usize..(rank + 1) * trace.experts as usize];
                let bytes: Vec<u8> = row
                    .iter()
                    .flat_map(|&c| i64::from(c).to_le_bytes())
                    .collect();
                buffers.push((format!("{}_{}", 100 + step, layer * 2), bytes));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(key, bytes)| {
                (
                    key.clone(),
                    TensorView::new(Dtype::I64, vec![trace.experts as usize], bytes).unwrap(),
                )
            })
            .collect();
        std::fs::write(
            dir.join(format!("rank{rank}.safetensors")),
            serialize(views, None).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn tensorrt_llm_dump_reads_back() {
    let dir = scratch("trtllm");
    let trace = small_trace(4, 16, 2, 3);
    write_trtllm(&dir, &trace);
    assert_eq!(Trace::load(&dir).unwrap(), trace);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn tensorrt_llm_dump_errors_name_the_problem() {
    let dir = scratch("trtllm-bad");
    let trace = small_trace(2, 4, 1, 1);
    write_trtllm(&dir, &trace);
    // A truncated rank file.
    let rank1 = dir.join("rank1.safetensors");
    let bytes = std::fs::read(&rank1).unwrap();
    std::fs::write(&rank1, &bytes[..bytes.len() - 7]).unwrap();
    let error = Trace::load(&dir).unwrap_err().to_string();
    assert!(error.contains("rank1.safetensors"), "{error}");
    // Counts that are not integers.
    let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::F32, vec![4], &floats).unwrap();
    std::fs::write(
        &rank1,
        serialize(vec![("100_0".to_owned(), view)], None).unwrap(),
    )
    .unwrap();
    let error = Trace::load(&dir).unwrap_err().to_string();
    assert!(error.contains("must be integers"), "{error}");
    // A key a rank lacks.
    let counts: Vec<u8> = [1i64, 2, 3, 4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::I64, vec![4], &counts).unwrap();
    std::fs::write(
        &rank1,
        serialize(vec![("101_0".to_owned(), view)], None).unwrap(),
    )
    .unwrap();
    let error = Trace::load(&dir).unwrap_err().to_string();
    assert!(error.contains("lacks key"), "{error}");
    // A negative count.
    let negative: Vec<u8> = [1i64, -2, 3, 4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::I64, vec![4], &negative).unwrap();
    std::fs::write(
        &rank1,
        serialize(vec![("100_0".to_owned(), view)], None).unwrap(),
    )
    .unwrap();
    let error = Trace::load(&dir).unwrap_err().to_string();
    assert!(error.contains("negative"), "{error}");
    // No meta_info.json.
    std::fs::remove_file(dir.join("meta_info.json")).unwrap();
    let error = Trace::load(&dir).unwrap_err().to_string();
    assert!(error.contains("meta_info.json"), "{error}");
    std::fs::remove_dir_all(dir).ok();
}

/// A layout change the engine made is written to its trace, reads back, and `simulate` replays
/// the steps after it in the new layout: with the hot experts spread over the ranks, no
/// balancing is even, where the same loads in the old layout put every token on rank 0.
#[test]
fn a_recorded_layout_change_is_replayed() {
    use ultraep_bench::simulation::{SimulationInput, simulate};
    use ultraep_bench::trace::LayoutRecord;
    use ultraep_plan::{ExpertLayout, LoadMatrix};
    use ultraep_runtime::{Engine, EngineConfig, Mode, StepId, TraceWriter};

    let config = EngineConfig::builder(
        ultraep_topo::Preset::HgxH100.topology(1).unwrap(),
        ExpertLayout::contiguous(8, 16).unwrap(),
        small_model(),
    )
    .mode(Mode::Prefill)
    .staging_slots(14)
    .build()
    .unwrap();
    let mut engine = Engine::new(config).unwrap();
    // Every rank sends 64 tokens to each of experts 0-15, all mastered on rank 0.
    let loads: Vec<u32> = (0..8 * 128)
        .map(|cell| if cell % 128 < 16 { 64 } else { 0 })
        .collect();
    let matrix = LoadMatrix::new(&loads, 8, 128).unwrap();
    // Experts 0-15 go two to a rank; the first two of ranks 1-7 come to rank 0 in exchange.
    let mut homes: Vec<u32> = (0..128).map(|expert| expert / 16).collect();
    for rank in 1..8u32 {
        homes.swap(rank as usize, (16 * rank) as usize);
        homes.swap(rank as usize + 8, (16 * rank + 1) as usize);
    }
    let spread = ExpertLayout::from_homes(8, homes.clone()).unwrap();

    let mut writer = TraceWriter::new(Vec::new(), 8, 128, 2, Some(8)).unwrap();
    for microbatch in 0..3 {
        if microbatch == 1 {
            engine.begin_layout_change(0, spread.clone()).unwrap();
            while !engine.advance_layout_change(1 << 20).unwrap().ready() {}
            engine.switch_layout().unwrap();
            writer.record_layout(0, engine.layout(0).unwrap()).unwrap();
        }
        for layer in 0..2 {
            let report = engine.step(StepId::new(microbatch, layer), matrix).unwrap();
            writer.record(&report, matrix).unwrap();
        }
    }
    let text = String::from_utf8(writer.finish().unwrap()).unwrap();
    let trace = Trace::from_jsonl(&text, "moved.jsonl").unwrap();
    assert_eq!(
        trace.layouts,
        [LayoutRecord {
            step: 1,
            layer: 0,
            homes
        }]
    );
    assert_eq!(
        Trace::from_jsonl(&trace.to_jsonl().unwrap(), "again").unwrap(),
        trace
    );

    let none_imbalance = |trace: Trace| {
        let result = simulate(
            &SimulationInput::Trace {
                trace,
                source: "moved.jsonl".into(),
                model: "qwen3-235b".into(),
                mode: ultraep_bench::step::Mode::Prefill,
                sequence: 4096,
            },
            false,
        )
        .unwrap();
        let none = result
            .balancers
            .iter()
            .find(|b| b.balancer == "none")
            .unwrap();
        none.imbalance
    };
    let replayed = none_imbalance(trace.clone());
    let unmoved = none_imbalance(Trace {
        layouts: Vec::new(),
        ..trace
    });
    // Six layers: four with every token on rank 0 (8.0), two even (1.0) in the new layout.
    assert!((unmoved - 8.0).abs() < 1e-9, "{unmoved}");
    assert!(
        (replayed - (4.0 * 8.0 + 2.0) / 6.0).abs() < 1e-9,
        "{replayed}"
    );
}

#[test]
fn layout_changes_that_do_not_fit_the_header_are_refused() {
    let header = r#"{"ultraep_trace": 1, "ranks": 2, "experts": 4, "layers": 1}"#;
    let loads = "{\"step\": 0, \"layer\": 0, \"rank\": 0, \"counts\": [1, 2, 3, 4]}\n\
                 {\"step\": 0, \"layer\": 0, \"rank\": 1, \"counts\": [1, 2, 3, 4]}";
    let refused = |homes: &str, step: u32, layer: u32| {
        let text = format!(
            "{header}\n{loads}\n{{\"step\": {step}, \"layer\": {layer}, \"homes\": {homes}}}"
        );
        Trace::from_jsonl(&text, "t.jsonl").unwrap_err().to_string()
    };
    assert!(refused("[0, 1, 1, 0]", 0, 1).contains("layer 1"));
    assert!(refused("[0, 1, 1]", 0, 0).contains("3 homes"));
    assert!(refused("[0, 1, 2, 0]", 0, 0).contains("home rank 2"));
    assert!(refused("[1, 0, 0, 1]", 1, 0).contains("after the last step"));
    // A starting layout (step 0) may be any; a later change must swap masters.
    let steps = |step0: &str, step1: &str| {
        let more = "{\"step\": 1, \"layer\": 0, \"rank\": 0, \"counts\": [1, 2, 3, 4]}\n\
                    {\"step\": 1, \"layer\": 0, \"rank\": 1, \"counts\": [1, 2, 3, 4]}";
        let mut text = format!("{header}\n{loads}\n{more}");
        for (step, homes) in [(0, step0), (1, step1)] {
            if !homes.is_empty() {
                text.push_str(&format!(
                    "\n{{\"step\": {step}, \"layer\": 0, \"homes\": {homes}}}"
                ));
            }
        }
        Trace::from_jsonl(&text, "t.jsonl")
    };
    assert_eq!(steps("[0, 0, 0, 1]", "").unwrap().layouts.len(), 1);
    assert_eq!(
        steps("[0, 0, 0, 1]", "[1, 0, 0, 0]").unwrap().layouts.len(),
        2
    );
    let uneven = steps("[0, 0, 0, 1]", "[0, 1, 0, 1]")
        .unwrap_err()
        .to_string();
    assert!(uneven.contains("swaps masters"), "{uneven}");
    let unbalanced = steps("", "[0, 0, 0, 1]").unwrap_err().to_string();
    assert!(unbalanced.contains("swaps masters"), "{unbalanced}");
    assert_eq!(steps("", "[1, 0, 0, 1]").unwrap().layouts.len(), 1);
    // A header of billions of ranks costs nothing to check.
    let huge = r#"{"ultraep_trace": 1, "ranks": 4000000000, "experts": 4, "layers": 1}"#;
    let text = format!("{huge}\n{{\"step\": 0, \"layer\": 0, \"homes\": [0, 1, 2, 3]}}");
    assert!(Trace::from_jsonl(&text, "t.jsonl").is_err());
}
