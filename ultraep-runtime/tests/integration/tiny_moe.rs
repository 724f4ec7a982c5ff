//! The tiny-MoE example as a test: balanced training equals unbalanced training bit for bit, and
//! balancing lowers the busiest rank's load.

#[path = "../../examples/tiny_moe/model.rs"]
mod model;

use model::{
    TinyMoe, Values, bit_identical, decode, encode, merge, relative_difference, train_balanced,
    train_threads, train_unbalanced,
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
    one_engine_per_rank_equals_one_engine(8);
}

/// Two ranks (one domain that fills no HGX node): the GPU bundle's first, quick IPC trial runs
/// this configuration on two processes.
#[test]
fn two_ranks_on_threads_equal_one_engine_for_both_bit_for_bit() {
    one_engine_per_rank_equals_one_engine(2);
}

fn one_engine_per_rank_equals_one_engine(ranks: u32) {
    let tiny = TinyMoe {
        steps: 2,
        ranks,
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
    let bytes = encode(&records[1]);
    assert!(bit_identical(&decode(&bytes).unwrap(), &records[1]));
    assert!(decode(&bytes[..bytes.len() - 4]).is_none());
}

/// With values whose sums round (thirds), balancing regroups the sums: the balanced run repeats
/// itself bit for bit, on one engine and on one engine per rank, and one training step (forward
/// and backward of every microbatch) stays within a stated tolerance of the unbalanced run, which
/// it no longer equals bit for bit. (Over several steps sign SGD, which jumps by a whole unit when
/// a gradient element crosses zero, turns rounding differences into different weights.)
#[test]
fn with_rounding_values_balanced_training_repeats_itself_and_stays_close() {
    let tiny = TinyMoe {
        values: Values::Fractions,
        steps: 1,
        ..TinyMoe::DEFAULT
    };
    let first = train_balanced(&tiny).unwrap();
    let second = train_balanced(&tiny).unwrap();
    assert!(bit_identical(&first, &second), "run to run");
    let threads = train_threads(&tiny).unwrap();
    assert!(bit_identical(
        &merge(&tiny, &threads),
        &merge(&tiny, &train_threads(&tiny).unwrap())
    ));
    let reference = train_unbalanced(&tiny);
    let difference = relative_difference(&first, &reference);
    println!("largest difference from the unbalanced run: {difference:e} of the largest value");
    assert!(difference < 1e-5, "{difference}");
    assert!(!bit_identical(&first, &reference), "these sums do round");
}

/// Two 8-GPU nodes, one engine per rank on threads: in the backward no gather separates the calls,
/// so a rank runs ahead of its peers; a rank that sends into a slot must wait until its owner has
/// opened it for that transfer (a race that once hung this run about every other time).
#[test]
fn sixteen_ranks_on_threads_train_like_one_engine() {
    let tiny = TinyMoe {
        ranks: 16,
        steps: 2,
        ..TinyMoe::DEFAULT
    };
    let reference = train_unbalanced(&tiny);
    for _ in 0..3 {
        let records = train_threads(&tiny).unwrap();
        assert!(bit_identical(&merge(&tiny, &records), &reference));
    }
}
