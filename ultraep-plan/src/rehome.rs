//! The slow loop: re-placing masters across scale-up domains so that the domains' expected loads
//! even out.
//!
//! Replicas stay in their master's domain (copying an expert over the scale-out network takes
//! about a millisecond, far more than a microbatch allows), so when one domain's experts are hotter
//! than another's, the per-microbatch planner cannot fix it: its lower bound is the domain's own
//! mean. The slow loop works on another timescale: every few hundred steps it looks at a decaying
//! history of every expert's load ([`LoadHistory`]) and swaps masters between the hottest and the
//! coldest domain ([`rehome`]), each swap the pair whose load difference is closest to half the
//! domains' gap, until the gap is within the tolerance or the move budget is spent. A swap keeps
//! every rank's number of masters, so every rank's memory stays as it was.
//!
//! Integer and deterministic like the planner: every rank computes the same new layout from the
//! same history, and the moves are carried out by the data planes in the background and switched
//! in at a step boundary (see `ultraep_xfer::LayoutTransition`).

use crate::{ExpertLayout, LoadMatrix, PlanError, RankDomains};

/// A decaying history of every expert's load: after each step, `h = h - h / 2^shift + load`, so
/// a step's load weighs half as much after `0.69 * 2^shift` steps, and a steady load `x` settles
/// at `x * 2^shift`. Integer arithmetic only, so every rank holds the same history.
///
/// ```
/// use ultraep_plan::{LoadHistory, LoadMatrix};
/// let mut history = LoadHistory::new(2, 3)?; // 2 experts, shift 3
/// for _ in 0..200 {
///     history.record(LoadMatrix::new(&[10, 2], 1, 2)?)?;
/// }
/// assert_eq!(history.expected(), &[80, 16]); // 10 x 8 and 2 x 8
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadHistory {
    totals: Vec<u64>,
    shift: u32,
}

impl LoadHistory {
    /// An empty history of `experts` experts that decays by `1 / 2^shift` per step (`shift` at
    /// most 32).
    pub fn new(experts: u32, shift: u32) -> Result<Self, PlanError> {
        if experts == 0 {
            return Err(PlanError::NoExperts);
        }
        if shift > 32 {
            return Err(PlanError::InvalidSetting(
                "a history shift above 32 keeps loads for longer than a run",
            ));
        }
        Ok(Self {
            totals: vec![0; experts as usize],
            shift,
        })
    }

    /// Adds one layer's loads of one step (the column sums of `loads`).
    pub fn record(&mut self, loads: LoadMatrix<'_>) -> Result<(), PlanError> {
        if loads.experts() != self.totals.len() {
            return Err(PlanError::LoadShape {
                rows: loads.ranks(),
                columns: loads.experts(),
                num_ranks: loads.ranks() as u32,
                num_experts: self.totals.len() as u32,
            });
        }
        for total in &mut self.totals {
            *total -= *total >> self.shift;
        }
        for source in 0..loads.ranks() {
            for (total, &count) in self.totals.iter_mut().zip(loads.row(source)) {
                *total = total.saturating_add(u64::from(count));
            }
        }
        Ok(())
    }

    /// Every expert's expected load, in the history's units (steps' loads times about `2^shift`).
    pub fn expected(&self) -> &[u64] {
        &self.totals
    }
}

/// The slow loop's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RehomeConfig {
    /// Stop once the gap between the hottest and the coldest domain's expected load is within
    /// this many parts per million of the domains' mean.
    pub tolerance_ppm: u32,
    /// The most experts one re-placement may move (a swap moves two).
    pub max_moves: u32,
}

impl Default for RehomeConfig {
    fn default() -> Self {
        Self {
            tolerance_ppm: 10_000,
            max_moves: 16,
        }
    }
}

/// An expert whose master moves: from its home rank to another domain's rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasterMove {
    /// The expert.
    pub expert: u32,
    /// Its home rank before.
    pub from: u32,
    /// Its home rank after.
    pub to: u32,
}

/// A re-placement: the new layout, the moves that make it, and the domains' expected loads
/// before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehoming {
    /// The layout after the moves.
    pub layout: ExpertLayout,
    /// Every expert whose home changed, by expert number (an expert swapped twice counts once,
    /// from its first home to its last).
    pub moves: Vec<MasterMove>,
    /// Expected load of every domain before.
    pub domain_loads_before: Vec<u64>,
    /// Expected load of every domain after.
    pub domain_loads_after: Vec<u64>,
}

impl Rehoming {
    /// The largest domain load over the mean, before and after (1.0 is even).
    pub fn imbalance(&self) -> (f64, f64) {
        let ratio = |loads: &[u64]| {
            let total: u64 = loads.iter().sum();
            let max = loads.iter().copied().max().unwrap_or(0);
            if total == 0 {
                1.0
            } else {
                max as f64 * loads.len() as f64 / total as f64
            }
        };
        (
            ratio(&self.domain_loads_before),
            ratio(&self.domain_loads_after),
        )
    }
}

/// Re-places masters of `layout` across `domains` so that the domains' `expected` loads (one
/// per expert, e.g. [`LoadHistory::expected`]) even out, with as few moves as it can.
///
/// Each round swaps two masters between the hottest domain and the coldest (ties: the lower
/// domain number): the pair whose load difference is closest to half the two domains' gap
/// without reaching the whole gap (ties: lower hot expert, then lower cold expert), so the
/// hottest domain never gets hotter and the coldest never colder. It stops when the gap is within
/// the tolerance of the domains' mean, when no swap narrows it, or after `max_moves / 2` swaps
/// (so at most `max_moves` experts move). Every rank keeps its number of masters.
///
/// ```
/// use ultraep_plan::{ExpertLayout, RankDomains, RehomeConfig, rehome};
/// // Two domains of two ranks, one expert per rank; domain 0 holds the two hot experts.
/// let layout = ExpertLayout::contiguous(4, 1)?;
/// let domains = RankDomains::uniform(4, 2)?;
/// let rehoming = rehome(&layout, &domains, &[100, 90, 10, 20], &RehomeConfig::default())?;
/// assert_eq!(rehoming.domain_loads_before, [190, 30]);
/// assert_eq!(rehoming.domain_loads_after, [110, 110]); // expert 1 (90) swapped with expert 2 (10)
/// assert_eq!(rehoming.moves.len(), 2);
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
pub fn rehome(
    layout: &ExpertLayout,
    domains: &RankDomains,
    expected: &[u64],
    config: &RehomeConfig,
) -> Result<Rehoming, PlanError> {
    if domains.num_ranks() != layout.num_ranks() {
        return Err(PlanError::DomainTableLength {
            got: domains.num_ranks() as usize,
            num_ranks: layout.num_ranks(),
        });
    }
    if expected.len() != layout.num_experts() as usize {
        return Err(PlanError::LoadLength {
            rows: 1,
            columns: layout.num_experts() as usize,
            len: expected.len(),
        });
    }
    let mut homes = layout.homes().to_vec();
    let domain_of = |rank: u32| domains.domain_of(rank) as usize;
    let mut loads = vec![0u64; domains.num_domains() as usize];
    for (expert, &home) in homes.iter().enumerate() {
        loads[domain_of(home)] = loads[domain_of(home)].saturating_add(expected[expert]);
    }
    let before = loads.clone();
    let total: u64 = loads.iter().fold(0, |sum, &load| sum.saturating_add(load));
    let allowed = u64::try_from(
        u128::from(total) * u128::from(config.tolerance_ppm)
            / (1_000_000 * loads.len().max(1) as u128),
    )
    .unwrap_or(u64::MAX);
    let mut swaps = 0u32;
    // The cold domain's experts, sorted by load, for the search of each round.
    let mut cold_experts: Vec<u32> = Vec::new();
    while (swaps + 1) * 2 <= config.max_moves && loads.len() > 1 {
        let hot = (0..loads.len())
            .max_by_key(|&d| (loads[d], std::cmp::Reverse(d)))
            .unwrap_or(0);
        let cold = (0..loads.len()).min_by_key(|&d| (loads[d], d)).unwrap_or(0);
        let gap = loads[hot] - loads[cold];
        if gap <= allowed || hot == cold {
            break;
        }
        cold_experts.clear();
        cold_experts
            .extend((0..homes.len() as u32).filter(|&e| domain_of(homes[e as usize]) == cold));
        cold_experts.sort_unstable_by_key(|&e| (expected[e as usize], e));
        // The pair (hot expert h, cold expert c) with 0 < load(h) - load(c) < gap and
        // |gap - 2 (load(h) - load(c))| smallest.
        let mut best: Option<(u64, u32, u32)> = None;
        for hot_expert in (0..homes.len() as u32).filter(|&e| domain_of(homes[e as usize]) == hot) {
            let load = expected[hot_expert as usize];
            // Ideal cold load: load - gap / 2; look at its neighbours in the sorted list.
            let ideal = load.saturating_sub(gap / 2);
            let at = cold_experts.partition_point(|&e| expected[e as usize] < ideal);
            for position in [at.wrapping_sub(1), at] {
                let Some(&cold_expert) = cold_experts.get(position) else {
                    continue;
                };
                let cold_load = expected[cold_expert as usize];
                if cold_load >= load || load - cold_load >= gap {
                    continue;
                }
                let delta = load - cold_load;
                let miss = gap.abs_diff(delta.saturating_mul(2));
                if best.is_none_or(|(m, h, c)| (miss, hot_expert, cold_expert) < (m, h, c)) {
                    best = Some((miss, hot_expert, cold_expert));
                }
            }
        }
        let Some((_, hot_expert, cold_expert)) = best else {
            break;
        };
        let (hot_rank, cold_rank) = (homes[hot_expert as usize], homes[cold_expert as usize]);
        homes[hot_expert as usize] = cold_rank;
        homes[cold_expert as usize] = hot_rank;
        let delta = expected[hot_expert as usize] - expected[cold_expert as usize];
        loads[hot] -= delta;
        loads[cold] += delta;
        swaps += 1;
    }
    let moves = homes
        .iter()
        .zip(layout.homes())
        .enumerate()
        .filter(|(_, (to, from))| to != from)
        .map(|(expert, (&to, &from))| MasterMove {
            expert: expert as u32,
            from,
            to,
        })
        .collect();
    Ok(Rehoming {
        layout: ExpertLayout::from_homes(layout.num_ranks(), homes)?,
        moves,
        domain_loads_before: before,
        domain_loads_after: loads,
    })
}
