//! A fast 64-bit checksum that tells whether a replica's bytes equal its master's.
//!
//! Not cryptographic: it detects torn, missing and misplaced tiles, which is what a transfer can
//! get wrong. Words are mixed with a multiply and rotate, and the position of every word counts,
//! so swapped tiles change the sum.

/// The checksum of `bytes`.
///
/// ```
/// use ultraep_xfer::checksum;
/// assert_ne!(checksum(&[1, 2, 3, 4]), checksum(&[1, 2, 4, 3]));
/// assert_eq!(checksum(b"expert"), checksum(b"expert"));
/// ```
pub fn checksum(bytes: &[u8]) -> u64 {
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut state = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let value = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        state = (state ^ value).wrapping_mul(MULTIPLIER).rotate_left(29);
    }
    for &byte in words.remainder() {
        state = (state ^ u64::from(byte))
            .wrapping_mul(MULTIPLIER)
            .rotate_left(29);
    }
    state ^ (state >> 32)
}
