//! The tiny-MoE example as a test: balanced training equals unbalanced training bit for bit, and
//! balancing lowers the busiest rank's load.

#[path = "../../examples/tiny_moe/model.rs"]
mod model;

use model::{
    TinyMoe, bit_identical, decode, encode, merge, train_balanced, train_threads, train_unbalanced,
};

#[test]
fn balanced_training_equals_the_unbalanced_reference_bit_for_bit() {
    let tiny = TinyMoe::DEFAULT;
    let reference = train_unbalanced(&tiny);
    let balanced = train_balanced(&tiny).unwrap();
    let layer_steps = (tiny.steps * tiny.microbatches * tiny.layers) as usize;
    assert_eq!(balanced.reports.len(), layer_steps);
    assert_eq!(balanced.outputs.len(), layer_steps);
    assert_eq!(
        balanced.gradients.len(),
        (tiny.steps * tiny.layers * tiny.ranks * tiny.experts_per_rank) as usize
    );
    // Replicas did work: every layer step used some, and the gradients are not all zero.
    assert!(balanced.reports.iter().all(|r| r.metrics.replicas > 0));
    assert!(balanced.gradients.iter().flatten().any(|&g| g != 0.0));
    assert!(bit_identical(&balanced, &reference));
    for report in &balanced.reports {
        assert!(report.metrics.initial_imbalance() > 2.0, "{report:?}");
        assert!(report.metrics.imbalance() < 1.05, "{report:?}");
    }
}

#[test]
fn the_comparison_sees_a_single_flipped_bit() {
    let tiny = TinyMoe {
        steps: 1,
        ..TinyMoe::DEFAULT
    };
    let reference = train_unbalanced(&tiny);
    let mut changed = reference.clone();
    let value = &mut changed.gradients[3][5];
    *value = f32::from_bits(value.to_bits() ^ 1);
    assert!(!bit_identical(&changed, &reference));
    let mut changed = reference.clone();
    changed.outputs[1][[2, 3]] += 1.0;
    assert!(!bit_identical(&changed, &reference));
}

#[test]
fn one_engine_per_rank_on_threads_equals_one_engine_for_all_bit_for_bit() {
    let tiny = TinyMoe {
        steps: 2,
        ..TinyMoe::DEFAULT
    };
    let records = train_threads(&tiny).unwrap();
    assert_eq!(records.len(), tiny.ranks as usize);
    // Every rank computed part of the work: its own masters' gradients, and some outputs.
    for record in &records {
        assert_eq!(
            record.gradients.len(),
            (tiny.steps * tiny.layers * tiny.experts_per_rank) as usize
        );
        assert!(record.outputs.iter().any(|o| o.iter().any(|&v| v != 0.0)));
    }
    let merged = merge(&tiny, &records);
    assert!(bit_identical(&merged, &train_unbalanced(&tiny)));
    assert!(bit_identical(&merged, &train_balanced(&tiny).unwrap()));
    // The records survive the trip through bytes that processes use, and nothing else does.
    let bytes = encode(&records[3]);
    assert!(bit_identical(&decode(&bytes).unwrap(), &records[3]));
    assert!(decode(&bytes[..bytes.len() - 4]).is_none());
}
