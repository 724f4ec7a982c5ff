//! Integer units for bandwidth and time.
//!
//! Every rank builds its own transfer schedule from the same topology and must reach the same
//! decisions, so link figures are integers (bytes per second, nanoseconds) and every computation on
//! them is integer arithmetic. Floating point appears only at the edges: reading a human-written file
//! and printing figures for people.

use std::fmt;
use std::num::NonZeroU64;
use std::ops::Add;

/// Bytes in a (decimal) gigabyte, the unit link bandwidths are quoted in.
pub const GIGABYTE: u64 = 1_000_000_000;

/// A link or memory bandwidth in bytes per second; never zero.
///
/// ```
/// use ultraep_topo::{Bandwidth, Nanos};
/// let nvlink = Bandwidth::gigabytes_per_second(900).unwrap();
/// assert_eq!(nvlink.time_to_move(900_000), Nanos::new(1_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth(NonZeroU64);

impl Bandwidth {
    /// A bandwidth of `bytes_per_second`; `None` for zero.
    pub const fn bytes_per_second(bytes_per_second: u64) -> Option<Self> {
        match NonZeroU64::new(bytes_per_second) {
            Some(value) => Some(Self(value)),
            None => None,
        }
    }

    /// A bandwidth of `gigabytes` decimal gigabytes per second; `None` for zero or overflow.
    pub const fn gigabytes_per_second(gigabytes: u64) -> Option<Self> {
        match gigabytes.checked_mul(GIGABYTE) {
            Some(bytes) => Self::bytes_per_second(bytes),
            None => None,
        }
    }

    /// The bandwidth in bytes per second.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The smaller of two bandwidths: a path runs at the speed of its slowest port.
    pub fn min(self, other: Self) -> Self {
        if other.get() < self.get() {
            other
        } else {
            self
        }
    }

    /// Nanoseconds needed to push `bytes` through this bandwidth, rounded up.
    ///
    /// Saturates at [`Nanos::MAX`] rather than overflow; no real transfer comes near it.
    pub fn time_to_move(self, bytes: u64) -> Nanos {
        let numerator = u128::from(bytes) * 1_000_000_000;
        let nanos = numerator.div_ceil(u128::from(self.get()));
        Nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Bandwidth {
    /// Prints decimal GB/s (or TB/s from 1000 GB/s up), trimmed to what is needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gigabytes = self.get() as f64 / GIGABYTE as f64;
        if gigabytes >= 1000.0 {
            write!(f, "{} TB/s", trim_decimal(gigabytes / 1000.0))
        } else {
            write!(f, "{} GB/s", trim_decimal(gigabytes))
        }
    }
}

/// A duration in nanoseconds.
///
/// ```
/// use ultraep_topo::Nanos;
/// assert_eq!(Nanos::from_micros(3) + Nanos::new(500), Nanos::new(3_500));
/// assert_eq!(Nanos::new(3_500).to_string(), "3.5 us");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(u64);

impl Nanos {
    /// No time at all.
    pub const ZERO: Self = Self(0);
    /// The longest representable duration (about 584 years).
    pub const MAX: Self = Self(u64::MAX);

    /// `nanos` nanoseconds.
    pub const fn new(nanos: u64) -> Self {
        Self(nanos)
    }

    /// `micros` microseconds, saturating.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros.saturating_mul(1_000))
    }

    /// The duration in nanoseconds.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl Add for Nanos {
    type Output = Self;

    /// Saturating addition: durations never wrap around.
    fn add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Nanos {
    /// Prints the duration in the largest unit (ns, us, ms, s) that keeps it at 1 or more.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0 as f64;
        let (value, unit) = match self.0 {
            0..1_000 => (nanos, "ns"),
            1_000..1_000_000 => (nanos / 1e3, "us"),
            1_000_000..1_000_000_000 => (nanos / 1e6, "ms"),
            _ => (nanos / 1e9, "s"),
        };
        write!(f, "{} {unit}", trim_decimal(value))
    }
}

/// Formats `value` with at most three decimals and no trailing zeros ("900", "3.35", "0.5").
pub(crate) fn trim_decimal(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0');
    text.trim_end_matches('.').to_owned()
}
