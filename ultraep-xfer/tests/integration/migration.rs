//! Layout transitions under random landings, failures and checksum results: the old layout stays
//! in force until every moved state is verified, and a switch before that is refused.

use proptest::prelude::*;
use ultraep_plan::{ExpertLayout, MasterMove};
use ultraep_xfer::{LayoutTransition, MigrationChunk, TransitionPhase};

/// What happens to a chunk handed out, or to a state whose chunks all landed.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Lands,
    Fails,
    LandsCorrupted,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![8 => Just(Fate::Lands), 1 => Just(Fate::Fails), 1 => Just(Fate::LandsCorrupted)]
}

/// Four ranks, eight experts; experts 0-3 swap homes pairwise across the two halves.
fn transition(state_bytes: u64, chunk_bytes: u64) -> LayoutTransition {
    let old = ExpertLayout::contiguous(4, 2).unwrap();
    let mut homes = old.homes().to_vec();
    homes.swap(0, 4);
    homes.swap(1, 6);
    let new = ExpertLayout::from_homes(4, homes).unwrap();
    let moves: Vec<MasterMove> = (0..8u32)
        .filter(|&e| old.home(e) != new.home(e))
        .map(|e| MasterMove {
            expert: e,
            from: old.home(e),
            to: new.home(e),
        })
        .collect();
    LayoutTransition::new(old, new, &moves, state_bytes, chunk_bytes).unwrap()
}

proptest! {
    #[test]
    fn the_old_layout_stays_in_force_until_every_moved_state_is_verified(
        state_bytes in 1u64..5000,
        chunk_bytes in 1u64..3000,
        budget in 0u64..8000,
        fates in prop::collection::vec(fate(), 1..400),
    ) {
        let mut transition = transition(state_bytes, chunk_bytes);
        let old = transition.in_force().clone();
        let mut fates = fates.into_iter().cycle();
        let mut chunks: Vec<MigrationChunk> = Vec::new();
        // Experts whose landed copy is corrupted: their checksum will not match.
        let mut corrupted = [false; 8];
        for _step in 0..200 {
            if transition.phase() != TransitionPhase::Copying {
                break;
            }
            // Not ready: the switch is refused and nothing changes.
            let before = transition.clone();
            prop_assert!(transition.switch().is_err());
            prop_assert_eq!(&transition, &before);
            prop_assert_eq!(transition.in_force(), &old);
            transition.next_chunks(budget, &mut chunks);
            let handed: u64 = chunks.iter().map(|c| c.bytes).sum();
            prop_assert!(handed <= budget.max(chunk_bytes), "a step's chunks stay within its budget");
            // A failed chunk voids the rest of its state's chunks of this step.
            let mut void = [false; 8];
            for chunk in chunks.clone() {
                if void[chunk.expert as usize] {
                    continue;
                }
                match fates.next().unwrap() {
                    Fate::Lands => transition.landed(chunk).unwrap(),
                    Fate::LandsCorrupted => {
                        transition.landed(chunk).unwrap();
                        corrupted[chunk.expert as usize] = true;
                    }
                    Fate::Fails => {
                        transition.failed(chunk.expert).unwrap();
                        corrupted[chunk.expert as usize] = false;
                        void[chunk.expert as usize] = true;
                    }
                }
            }
            for expert in 0..8u32 {
                if transition.awaiting_verification(expert) {
                    let matches = !corrupted[expert as usize];
                    transition.verify(expert, matches).unwrap();
                    corrupted[expert as usize] = false;
                }
            }
        }
        match transition.phase() {
            TransitionPhase::Ready => {
                transition.switch().unwrap();
                prop_assert_eq!(transition.in_force(), transition.target());
            }
            _ => prop_assert_eq!(transition.in_force(), &old),
        }
    }
}

#[test]
fn landing_out_of_order_or_verifying_early_is_refused() {
    let mut transition = transition(1000, 400);
    let mut chunks = Vec::new();
    transition.next_chunks(10_000, &mut chunks);
    assert_eq!(chunks.len(), 4 * 3, "four states of three chunks each");
    assert!(
        transition.landed(chunks[1]).is_err(),
        "the second chunk before the first"
    );
    assert!(transition.verify(0, true).is_err(), "nothing landed yet");
    transition.landed(chunks[0]).unwrap();
    assert!(
        transition.verify(0, true).is_err(),
        "one chunk of three landed"
    );
}

#[test]
fn with_every_chunk_landing_the_transition_is_ready_after_its_bytes_over_the_budget() {
    for (state_bytes, chunk_bytes, budget) in [(1000, 400, 800), (4096, 4096, 1), (10, 3, 100)] {
        let mut transition = transition(state_bytes, chunk_bytes);
        let mut chunks = Vec::new();
        let mut steps = 0;
        while transition.phase() == TransitionPhase::Copying {
            transition.next_chunks(budget, &mut chunks);
            for chunk in &chunks {
                transition.landed(*chunk).unwrap();
            }
            for expert in 0..8 {
                if transition.awaiting_verification(expert) {
                    transition.verify(expert, true).unwrap();
                }
            }
            steps += 1;
            assert!(steps <= 1000, "no progress");
        }
        // Chunks are never split across steps, so a step moves at least one chunk and at most
        // the budget rounded up to whole chunks.
        let chunks_per_state = state_bytes.div_ceil(chunk_bytes);
        let per_step = (budget / chunk_bytes).max(1);
        assert_eq!(
            steps,
            (4 * chunks_per_state).div_ceil(per_step),
            "{state_bytes} {chunk_bytes} {budget}"
        );
        transition.switch().unwrap();
        assert_eq!(transition.phase(), TransitionPhase::Switched);
    }
}
