//! The receiving side of a peer transfer: which tile, if any, has not arrived yet.

/// The index of the first `(slot, tile)` pair whose arrival word in `words` does not hold
/// `round`, in the order `slots[0]`'s tiles, then `slots[1]`'s, and so on: pair `i` is tile
/// `i % tiles_per_state` of slot `slots[i / tiles_per_state]`, whose arrival word is
/// `slots[..] * tiles_per_state + tile`. `None` when every tile has arrived. A word outside
/// `words` counts as missing.
///
/// ```
/// use ultraep_kernels::reference::arrivals::first_missing;
/// // Two slots of three tiles; slot 1's tile 2 is still at the previous round.
/// let words = [7, 7, 7, 7, 7, 6];
/// assert_eq!(first_missing(&words, &[0, 1], 3, 7), Some(5));
/// assert_eq!(first_missing(&words, &[0], 3, 7), None);
/// // Slot 1 alone: its tile 2 is pair 2.
/// assert_eq!(first_missing(&words, &[1], 3, 7), Some(2));
/// ```
pub fn first_missing(
    words: &[u64],
    slots: &[u32],
    tiles_per_state: u32,
    round: u64,
) -> Option<u32> {
    let tiles = u64::from(tiles_per_state);
    let mut pair = 0u32;
    for &slot in slots {
        for tile in 0..tiles {
            let index = u64::from(slot) * tiles + tile;
            let arrived = usize::try_from(index)
                .ok()
                .and_then(|index| words.get(index))
                .is_some_and(|&word| word == round);
            if !arrived {
                return Some(pair);
            }
            pair += 1;
        }
    }
    None
}
