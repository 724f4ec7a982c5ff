//! A fast 64-bit checksum that tells whether a replica's bytes equal its master's.
//!
//! Not cryptographic: it detects torn, missing and misplaced tiles, which is what a transfer can
//! get wrong. The bytes are read as little-endian 64-bit words (the last one padded with zeros);
//! word `i` contributes the term [`Checksum::term`]`(i, word)`, the product of the word's halves
//! each offset by a key of its position, and the terms are added with wrapping arithmetic; the
//! sum and the length are mixed at the end. Addition makes the sum independent
//! of the order in which the terms are computed, so a GPU computes it with thousands of threads
//! and atomic adds and gets the same bits as this sequential code; the position in every term
//! makes swapped tiles change the sum. [`Checksum`] computes the same sum over bytes that arrive
//! in pieces (a region's tile blocks), without gathering them first.

/// Multiplies a word's position into its key (an odd constant, so distinct positions get
/// distinct keys, spread over all 64 bits; a loop computes the next key with one addition).
const POSITION_KEY: u64 = 0x9e37_79b9_7f4a_7c15;
/// Sets the final sum apart from a bare sum of terms, and folds the length in.
const LENGTH_KEY: u64 = 0xcbf2_9ce4_8422_2325;

/// A bijective 64-bit mixer for the final sum: every input bit reaches every output bit after two
/// multiplies.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 32)
}

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
    /// The wrapping sum of the terms of the complete words so far.
    terms: u64,
    /// The position of the next complete word.
    words: u64,
    /// Bytes of a word not yet complete.
    pending: [u8; 8],
    pending_len: usize,
    /// The length the sum is declared for, which counts in it.
    total: u64,
}

impl Checksum {
    /// A checksum of `total` bytes in all (the length counts in the sum).
    pub fn new(total: u64) -> Self {
        Self {
            terms: 0,
            words: 0,
            pending: [0; 8],
            pending_len: 0,
            total,
        }
    }

    /// The term of word `index` (counted in 8-byte words from the start of the bytes) holding
    /// `word` (little-endian). A device that adds the terms of all words, in any order, and
    /// passes the sum to [`Checksum::from_terms`] gets [`checksum`]'s answer.
    ///
    /// ```
    /// use ultraep_xfer::{Checksum, checksum};
    /// let bytes = [7u8; 32];
    /// let terms = (0..4u64)
    ///     .rev() // any order
    ///     .map(|i| Checksum::term(i, u64::from_le_bytes([7; 8])))
    ///     .fold(0u64, u64::wrapping_add);
    /// assert_eq!(Checksum::from_terms(terms, 32), checksum(&bytes));
    /// ```
    pub fn term(index: u64, word: u64) -> u64 {
        // One 32 x 32 -> 64-bit multiply of the word's halves, each offset by its half of the
        // position's key (the multiply-add scheme of the NH universal hash): cheap on a CPU,
        // which vectorises it, and a single wide multiply on a GPU. The final mix of the sum
        // spreads every term's bits.
        let key = index.wrapping_add(1).wrapping_mul(POSITION_KEY);
        let low = (word as u32).wrapping_add(key as u32);
        let high = ((word >> 32) as u32).wrapping_add((key >> 32) as u32);
        u64::from(low) * u64::from(high)
    }

    /// The checksum of `total` bytes whose words' terms add up (wrapping) to `terms`.
    pub fn from_terms(terms: u64, total: u64) -> u64 {
        mix(terms ^ mix(total ^ LENGTH_KEY))
    }

    fn add_word(&mut self, word: &[u8]) {
        let mut value = [0; 8];
        value[..word.len()].copy_from_slice(word);
        self.terms = self
            .terms
            .wrapping_add(Self::term(self.words, u64::from_le_bytes(value)));
        self.words += 1;
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
            let word = self.pending;
            self.add_word(&word);
            self.pending_len = 0;
        }
        // The words summed in locals, which the compiler keeps in registers and vectorises.
        let mut words = bytes.chunks_exact(8);
        let (mut terms, mut index) = (self.terms, self.words);
        for word in &mut words {
            let mut value = [0; 8];
            value.copy_from_slice(word);
            terms = terms.wrapping_add(Self::term(index, u64::from_le_bytes(value)));
            index += 1;
        }
        (self.terms, self.words) = (terms, index);
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The sum: an incomplete last word counts padded with zeros.
    pub fn finish(mut self) -> u64 {
        if self.pending_len > 0 {
            let word = self.pending;
            self.add_word(&word[..self.pending_len]);
        }
        Self::from_terms(self.terms, self.total)
    }
}
