//! A fast 64-bit checksum that tells whether a replica's bytes equal its master's.
//!
//! Not cryptographic: it detects torn, missing and misplaced tiles, which is what a transfer can
//! get wrong. Words are mixed with a multiply and rotate in four interleaved chains, and the
//! position of every word counts, so swapped tiles change the sum. [`Checksum`] computes the same sum over bytes that arrive in
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
    /// Four independent chains, one per word of every 32-byte block, so that a processor works
    /// on four multiplies at once instead of waiting for each.
    lanes: [u64; LANES],
    /// Bytes of a block not yet complete.
    pending: [u8; BLOCK],
    pending_len: usize,
}

const LANES: usize = 4;
const BLOCK: usize = 8 * LANES;

fn mix(state: u64, value: u64) -> u64 {
    (state ^ value).wrapping_mul(MULTIPLIER).rotate_left(29)
}

impl Checksum {
    /// A checksum of `total` bytes in all (the length counts in the sum).
    pub fn new(total: u64) -> Self {
        let seed = 0xcbf2_9ce4_8422_2325 ^ total;
        Self {
            lanes: [seed, seed ^ 1, seed ^ 2, seed ^ 3],
            pending: [0; BLOCK],
            pending_len: 0,
        }
    }

    fn mix_block(&mut self, block: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut value = [0; 8];
            value.copy_from_slice(word);
            *lane = mix(*lane, u64::from_le_bytes(value));
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.pending_len > 0 {
            let take = (BLOCK - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < BLOCK {
                return;
            }
            let block = self.pending;
            self.mix_block(&block);
            self.pending_len = 0;
        }
        let mut blocks = bytes.chunks_exact(BLOCK);
        for block in &mut blocks {
            self.mix_block(block);
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The sum: the bytes of an incomplete last block are mixed into the first lane one by one,
    /// then the lanes are folded in order.
    pub fn finish(mut self) -> u64 {
        for index in 0..self.pending_len {
            self.lanes[0] = mix(self.lanes[0], u64::from(self.pending[index]));
        }
        let state = self.lanes[1..]
            .iter()
            .fold(self.lanes[0], |state, &lane| mix(state, lane));
        state ^ (state >> 32)
    }
}
