//! Property tests of the one checksum: fed in pieces or as terms added in any order it equals the
//! whole, and it changes when tiles are swapped, zeroed or cut.

use proptest::prelude::*;
use ultraep_xfer::{Checksum, checksum};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_checksum_fed_in_pieces_equals_the_whole(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(0usize..200, 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut sum = Checksum::new(bytes.len() as u64);
        let mut at = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            sum.update(&bytes[at..cut]);
            at = cut;
        }
        prop_assert_eq!(sum.finish(), checksum(&bytes));
    }

    /// What a GPU does: every word's term computed apart and added in whatever order the threads
    /// finish (here a permutation), then finished; the answer must be the sequential one.
    #[test]
    fn a_checksum_from_terms_added_in_any_order_equals_the_whole(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        order_seed in any::<u64>(),
    ) {
        let mut terms: Vec<u64> = bytes
            .chunks(8)
            .enumerate()
            .map(|(index, word)| {
                let mut padded = [0; 8];
                padded[..word.len()].copy_from_slice(word);
                Checksum::term(index as u64, u64::from_le_bytes(padded))
            })
            .collect();
        // A deterministic shuffle from the seed.
        let mut state = order_seed | 1;
        for i in (1..terms.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            terms.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let sum = terms.into_iter().fold(0u64, u64::wrapping_add);
        prop_assert_eq!(Checksum::from_terms(sum, bytes.len() as u64), checksum(&bytes));
    }

    /// Swapped, zeroed or truncated tiles are what a faulty transfer leaves; each must change
    /// the sum.
    #[test]
    fn a_checksum_changes_when_tiles_are_swapped_zeroed_or_cut(
        bytes in prop::collection::vec(any::<u8>(), 64..256),
        first in 0usize..4,
        second in 0usize..4,
    ) {
        let whole = checksum(&bytes);
        let tile = bytes.len() / 4;
        let (a, b) = (first * tile, second * tile);
        let mut swapped = bytes.clone();
        for i in 0..tile {
            swapped.swap(a + i, b + i);
        }
        if swapped != bytes {
            prop_assert_ne!(checksum(&swapped), whole);
        }
        let mut zeroed = bytes.clone();
        zeroed[a..a + tile].fill(0);
        if zeroed != bytes {
            prop_assert_ne!(checksum(&zeroed), whole);
        }
        prop_assert_ne!(checksum(&bytes[..bytes.len() - 1]), whole);
    }
}
