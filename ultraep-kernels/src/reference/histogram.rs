//! The load histogram: a rank's router top-k ids -> its row of the load matrix.

/// Counts of every expert among `ids`, and how many ids name no expert.
///
/// ```
/// let (counts, invalid) = ultraep_kernels::reference::histogram::histogram(&[0, 2, 2, 9], 3);
/// assert_eq!((counts, invalid), (vec![1, 0, 2], 1));
/// ```
pub fn histogram(ids: &[u32], experts: u32) -> (Vec<u32>, u32) {
    let mut counts = vec![0u32; experts as usize];
    let mut invalid = 0;
    for &id in ids {
        match counts.get_mut(id as usize) {
            Some(count) => *count += 1,
            None => invalid += 1,
        }
    }
    (counts, invalid)
}
