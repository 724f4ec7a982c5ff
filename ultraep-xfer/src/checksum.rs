//! A fast 64-bit checksum that tells whether a replica's bytes equal its master's.
//!
//! Not cryptographic: it detects torn, missing and misplaced tiles, which is what a transfer can
//! get wrong. Words are mixed with a multiply and rotate, and the position of every word counts,
//! so swapped tiles change the sum. [`Checksum`] computes the same sum over bytes that arrive in
//! pieces (a region's tile blocks), without gathering them first.

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// The checksum of `bytes`.
///
/// ```
/// use ultraep_xfer::checksum;
/// assert_ne!(checksum(&[1, 2, 3, 4]), checksum(&[1, 2, 4, 3]));
/// assert_eq!(checksum(b"expert"), checksum(b"expert"));
/// ```
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut sum = Checksum::new(bytes.len() as u64);
    sum.update(bytes);
    sum.finish()
}

/// The checksum of bytes fed in pieces; equal to [`checksum`] of them all.
///
/// ```
/// use ultraep_xfer::{Checksum, checksum};
/// let mut sum = Checksum::new(11);
/// sum.update(b"exp");
/// sum.update(b"ert sta");
/// sum.update(b"t");
/// assert_eq!(sum.finish(), checksum(b"expert stat"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Checksum {
    state: u64,
    /// Bytes of a word not yet complete.
    pending: [u8; 8],
    pending_len: usize,
}

impl Checksum {
    /// A checksum of `total` bytes in all (the length counts in the sum).
    pub fn new(total: u64) -> Self {
        Self {
            state: 0xcbf2_9ce4_8422_2325 ^ total,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    fn mix(&mut self, value: u64) {
        self.state = (self.state ^ value)
            .wrapping_mul(MULTIPLIER)
            .rotate_left(29);
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.pending));
            self.pending_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut value = [0; 8];
            value.copy_from_slice(word);
            self.mix(u64::from_le_bytes(value));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The sum; trailing bytes that make no whole word are mixed in one by one.
    pub fn finish(mut self) -> u64 {
        for index in 0..self.pending_len {
            let byte = self.pending[index];
            self.mix(u64::from(byte));
        }
        self.state ^ (self.state >> 32)
    }
}
