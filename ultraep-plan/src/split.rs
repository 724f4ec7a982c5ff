//! How every source rank's tokens for one expert are shared among the expert's instances.
//!
//! First, with the locality-aware split, tokens that already sit on an instance's rank fill that
//! instance (up to its quota): they never leave the GPU. Then the sources, in rank order, share out
//! what is left in proportion to the instances' *remaining* quotas, with largest-remainder rounding
//! (ties to the lower instance). Splitting in proportion to what remains, rather than to the full
//! quotas, keeps both sums exact with integers only: every source sends exactly its tokens, and every
//! instance receives exactly its quota, because a share `rest * remaining_i / remaining_total` never
//! exceeds `remaining_i` and the last source takes exactly what is left.

use crate::{Instance, LoadMatrix, SplitEntry};

/// Buffers reused from call to call so that splitting allocates nothing once warm.
#[derive(Debug, Default, Clone)]
pub(crate) struct SplitScratch {
    capacity: Vec<u64>,
    local_take: Vec<u64>,
    give: Vec<u64>,
    remainder: Vec<u64>,
    /// (rank, instance index) of every instance, by rank: lets the source loop find the instance
    /// on its own rank with a pointer that only moves forward.
    by_rank: Vec<(u32, u32)>,
}

impl SplitScratch {
    /// Fills the buffers for one expert's `instances`: what each keeps of its own rank's tokens
    /// (`local_take`, nothing unless `locality_aware`), what its quota leaves for others
    /// (`capacity`), the instances by rank (`by_rank`), and `give` zeroed.
    fn prepare(
        &mut self,
        instances: &[Instance],
        loads: LoadMatrix<'_>,
        column: usize,
        locality_aware: bool,
    ) {
        self.capacity.clear();
        self.local_take.clear();
        self.by_rank.clear();
        for (index, instance) in instances.iter().enumerate() {
            let quota = u64::from(instance.quota);
            let local = if locality_aware {
                u64::from(loads.get(instance.rank as usize, column)).min(quota)
            } else {
                0
            };
            self.local_take.push(local);
            self.capacity.push(quota - local);
            self.by_rank.push((instance.rank, index as u32));
        }
        self.by_rank.sort_unstable();
        self.give.clear();
        self.give.resize(instances.len(), 0);
    }
}

/// The instance on rank `source`, if any, from `by_rank` (instances by rank) with a position
/// `next` that sources in ascending order only move forward.
fn instance_on(by_rank: &[(u32, u32)], next: &mut usize, source: usize) -> Option<usize> {
    while *next < by_rank.len() && (by_rank[*next].0 as usize) < source {
        *next += 1;
    }
    (*next < by_rank.len() && by_rank[*next].0 as usize == source)
        .then(|| by_rank[*next].1 as usize)
}

/// Appends the split of `expert` (whose instances start at index `first_instance` of the plan and
/// whose quotas sum to its load) to `out`, ordered by (source, instance). Returns the tokens that
/// leave their source rank.
pub(crate) fn split_expert(
    expert: u32,
    first_instance: u32,
    instances: &[Instance],
    loads: LoadMatrix<'_>,
    locality_aware: bool,
    scratch: &mut SplitScratch,
    out: &mut Vec<SplitEntry>,
) -> u64 {
    let count = instances.len();
    let column = expert as usize;
    scratch.prepare(instances, loads, column, locality_aware);
    let SplitScratch {
        capacity,
        local_take,
        give,
        remainder,
        by_rank,
    } = scratch;
    remainder.clear();
    remainder.resize(count, 0);

    let mut remaining_total: u64 = capacity.iter().sum();
    let mut next_local = 0;
    let mut leaving = 0;
    for source in 0..loads.ranks() {
        let tokens = u64::from(loads.get(source, column));
        let local = instance_on(by_rank, &mut next_local, source);
        if tokens == 0 {
            continue;
        }
        let kept = local.map_or(0, |index| local_take[index]);
        let rest = tokens - kept;
        leaving += rest;
        if rest == 0 {
            give.fill(0);
        } else if rest == remaining_total {
            // The last source with tokens takes exactly what is left.
            give.copy_from_slice(capacity);
        } else {
            share_in_proportion(rest, remaining_total, capacity, give, remainder);
        }
        remaining_total -= rest;
        for index in 0..count {
            let share = give[index];
            capacity[index] -= share;
            let total = share + if local == Some(index) { kept } else { 0 };
            if total > 0 {
                out.push(SplitEntry {
                    source: source as u32,
                    expert,
                    instance: first_instance + index as u32,
                    tokens: total as u32,
                });
            }
        }
        // Shares sent to the instance on the source's own rank do not leave it.
        if let Some(index) = local {
            leaving -= give[index];
        }
    }
    leaving
}

/// Appends the contiguous split of `expert` to `out` (see [`crate::SplitMode::Contiguous`]),
/// ordered by (source, instance); returns the tokens that leave their source rank. Tokens already
/// on an instance's rank fill it first; the rest of every source, in rank order, fills the
/// instances in index order, each up to what remains of its quota, like water poured into
/// buckets in a row. No division: a source's tokens reach at most the instances its stretch of
/// the row spans, usually one or two.
pub(crate) fn split_expert_contiguous(
    expert: u32,
    first_instance: u32,
    instances: &[Instance],
    loads: LoadMatrix<'_>,
    scratch: &mut SplitScratch,
    out: &mut Vec<SplitEntry>,
) -> u64 {
    let column = expert as usize;
    scratch.prepare(instances, loads, column, true);
    let SplitScratch {
        capacity,
        local_take,
        give,
        by_rank,
        ..
    } = scratch;
    let mut cursor = 0;
    let mut next_local = 0;
    let mut leaving = 0;
    for source in 0..loads.ranks() {
        let tokens = u64::from(loads.get(source, column));
        let local = instance_on(by_rank, &mut next_local, source);
        if tokens == 0 {
            continue;
        }
        let kept = local.map_or(0, |index| local_take[index]);
        let mut rest = tokens - kept;
        let first = cursor;
        while rest > 0 && cursor < capacity.len() {
            let take = rest.min(capacity[cursor]);
            give[cursor] += take;
            capacity[cursor] -= take;
            rest -= take;
            if capacity[cursor] == 0 {
                cursor += 1;
            }
        }
        debug_assert_eq!(rest, 0, "the quotas of an expert sum to its load");
        let last = cursor.min(capacity.len() - 1);
        let touched = |index: usize| (first..=last).contains(&index) || local == Some(index);
        for index in (0..instances.len()).filter(|&index| touched(index)) {
            let total = give[index] + if local == Some(index) { kept } else { 0 };
            if total > 0 {
                out.push(SplitEntry {
                    source: source as u32,
                    expert,
                    instance: first_instance + index as u32,
                    tokens: total as u32,
                });
            }
            // What went to another rank's instance leaves the source.
            if local != Some(index) {
                leaving += give[index];
            }
            give[index] = 0;
        }
    }
    leaving
}

/// Shares `rest` tokens among the instances in proportion to their remaining `capacity` (which sums
/// to `total > rest`) into `give`, rounding by largest remainder (ties: lower instance).
fn share_in_proportion(
    rest: u64,
    total: u64,
    capacity: &[u64],
    give: &mut [u64],
    remainder: &mut [u64],
) {
    // Every count fits in 32 bits (a source's tokens for one expert, an instance's quota), so the
    // products fit in 64. One division per source instead of one per instance: divisions are the
    // slowest step of planning.
    let divisor = Reciprocal::new(total);
    let mut assigned = 0;
    for index in 0..capacity.len() {
        let (share, rest_of_share) = divisor.divide(rest * capacity[index]);
        give[index] = share;
        remainder[index] = rest_of_share;
        assigned += share;
    }
    // The shares' fractions add up to `rest - assigned`, each below one, so at least that many
    // instances have a nonzero remainder to round up.
    for _ in assigned..rest {
        let mut best = 0;
        for index in 1..remainder.len() {
            if remainder[index] > remainder[best] {
                best = index;
            }
        }
        give[best] += 1;
        remainder[best] = 0;
    }
}

/// Exact integer division by a fixed divisor through multiplication by its reciprocal.
///
/// `inverse = floor((2^64 - 1) / d)`, so `floor(n * inverse / 2^64)` is at most the true quotient
/// and at most two below it; the correction loop makes the result exact. Integer arithmetic only,
/// so every machine computes the same quotients.
#[derive(Debug, Clone, Copy)]
struct Reciprocal {
    divisor: u64,
    inverse: u64,
}

impl Reciprocal {
    /// `divisor` must be positive.
    fn new(divisor: u64) -> Self {
        Self {
            divisor,
            inverse: u64::MAX / divisor,
        }
    }

    /// `(n / divisor, n % divisor)`.
    fn divide(self, n: u64) -> (u64, u64) {
        let mut quotient = ((u128::from(n) * u128::from(self.inverse)) >> 64) as u64;
        let mut remainder = n - quotient * self.divisor;
        while remainder >= self.divisor {
            quotient += 1;
            remainder -= self.divisor;
        }
        (quotient, remainder)
    }
}

#[cfg(test)]
mod tests {
    use super::Reciprocal;

    #[test]
    fn reciprocal_division_is_exact_at_the_edges() {
        let divisors = [
            1,
            2,
            3,
            7,
            1000,
            65_535,
            1 << 32,
            (1 << 32) + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        let numerators = [0, 1, 2, 999, 1 << 40, u64::MAX / 3, u64::MAX - 1, u64::MAX];
        for divisor in divisors {
            let reciprocal = Reciprocal::new(divisor);
            for n in numerators {
                assert_eq!(
                    reciprocal.divide(n),
                    (n / divisor, n % divisor),
                    "{n} / {divisor}"
                );
            }
        }
    }
}
