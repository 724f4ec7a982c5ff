//! Trains a tiny MoE layer stack on 8 in-process ranks under skewed routing, balanced by the
//! engine and unbalanced, and shows that the layer outputs and the masters' gradients are equal
//! bit for bit while the busiest rank's load drops.
//!
//! Run it with `cargo run -p ultraep-runtime --example tiny_moe`.

mod model;

use std::process::ExitCode;

use model::{TinyMoe, bit_identical, train_balanced, train_unbalanced};

fn main() -> ExitCode {
    let tiny = TinyMoe::DEFAULT;
    let reference = train_unbalanced(&tiny);
    let balanced = match train_balanced(&tiny) {
        Ok(record) => record,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let steps = balanced.reports.len() as f64;
    let mean = |f: fn(&ultraep_runtime::StepReport) -> f64| {
        balanced.reports.iter().map(f).sum::<f64>() / steps
    };
    println!(
        "{} ranks, {} experts x {} layers, top-{}, {} tokens per rank, {} microbatches x {} steps",
        tiny.ranks,
        tiny.ranks * tiny.experts_per_rank,
        tiny.layers,
        tiny.top_k,
        tiny.tokens,
        tiny.microbatches,
        tiny.steps
    );
    println!(
        "max/mean rank load: {:.3} unbalanced -> {:.3} balanced (mean over {} layer steps)",
        mean(|r| r.metrics.initial_imbalance()),
        mean(|r| r.metrics.imbalance()),
        balanced.reports.len()
    );
    println!(
        "replicas per layer step: {:.1}; copies {}, reused in place {}",
        mean(|r| f64::from(r.metrics.replicas)),
        balanced.reports.iter().map(|r| r.copies).sum::<u32>(),
        balanced
            .reports
            .iter()
            .map(|r| r.copies_skipped)
            .sum::<u32>()
    );
    let identical = bit_identical(&balanced, &reference);
    println!(
        "layer outputs ({}) and master gradients ({}) bit-identical to the unbalanced run: {}",
        balanced.outputs.len(),
        balanced.gradients.len(),
        if identical { "yes" } else { "NO" }
    );
    if identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
