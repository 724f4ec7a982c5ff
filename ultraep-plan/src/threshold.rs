//! Balancing one domain: the lowest token threshold the greedy export can reach, and its replicas.
//!
//! A probe asks "can every rank of the domain be brought to at most `T` tokens?". Overloaded ranks
//! (most loaded first) export their excess, taking their experts largest first; each exported piece
//! becomes a replica on a rank with slack below `T`, a free slot, and no copy of the expert yet. The
//! target is the rank with the *least* slack that still takes the whole remaining excess in one piece
//! (best fit, which keeps big gaps for big excesses), or, when none does, the rank with the most slack
//! (worst fit, so the piece is as large as possible). Every piece is at least the minimum replica
//! quota; when the excess left is smaller, the piece is raised to that minimum (the source then ends
//! a little below `T`). Ties go to the lower rank, so every machine makes the same choices.
//!
//! The search probes `floor(lower bound * (1 + tolerance))` first, which succeeds on most loads; when
//! it fails, it bisects between that and the domain's current maximum (always feasible: no replicas),
//! and stops once the interval is within the tolerance.
//!
//! Everything is counted in the units of the planner's [`InstanceCost`]: a rank's load is the
//! cost of its instances, a piece of `q` tokens costs its target `per_instance + q * per_token`
//! and relieves its source of `q * per_token` (the master keeps its fixed cost). With
//! [`InstanceCost::TOKENS`] these are token counts and the search is the token objective's.
//!
//! With a [`Residency`], the search then probes its threshold once more, sending each piece that a
//! rank holding the expert's weights can take whole to that rank (the lowest such rank). That probe
//! replaces the first only if it succeeds and its busiest rank is no busier: the preference never
//! costs balance. With a [`crate::TransferEstimate`] it probes once more again, preferring cheap
//! transfers (pieces of at least the copy's worth of tokens; among the ranks that take a piece
//! whole, the one that has received the fewest copies), on the same terms.

use crate::assembler::Replica;
use crate::{InstanceCost, PlanConfig, Residency};

/// One domain's problem, borrowed from the planner.
pub(crate) struct DomainProblem<'a> {
    /// The domain's ranks.
    pub ranks: &'a [u32],
    /// Masters-only cost of every rank (indexed by rank, whole problem), in the units of
    /// `config.cost`.
    pub rank_load: &'a [u64],
    /// Load of every expert (indexed by expert).
    pub expert_load: &'a [u64],
    /// Experts homed on every rank, largest load first: `experts[offsets[r]..offsets[r + 1]]`.
    pub experts: &'a [u32],
    pub offsets: &'a [u32],
    pub slots_per_rank: u32,
    pub config: &'a PlanConfig,
    /// The instance cost in its smallest units ([`InstanceCost::normalized`]).
    pub cost: InstanceCost,
    /// Experts whose weights sit in slots already, to prefer as targets.
    pub residency: Option<&'a Residency>,
}

impl DomainProblem<'_> {
    fn experts_of(&self, rank: u32) -> &[u32] {
        let rank = rank as usize;
        &self.experts[self.offsets[rank] as usize..self.offsets[rank + 1] as usize]
    }

    /// The least a replica may take (at least one token).
    fn min_piece(&self) -> u64 {
        u64::from(self.config.min_replica_tokens.max(1))
    }

    fn cost(&self) -> InstanceCost {
        self.cost
    }

    /// What a replica of `tokens` tokens costs its rank.
    fn piece_cost(&self, tokens: u64) -> u64 {
        self.cost()
            .per_instance
            .saturating_add(tokens.saturating_mul(self.per_token()))
    }

    fn per_token(&self) -> u64 {
        u64::from(self.cost().per_token.max(1))
    }

    /// The least a replica may take when transfers are weighed: enough tokens to pay for its copy.
    fn min_piece_for(&self, preference: Preference) -> u64 {
        match self.config.transfer.filter(|_| preference.cheap_transfers) {
            Some(estimate) => self
                .min_piece()
                .max(estimate.copy_cost.div_ceil(self.per_token())),
            None => self.min_piece(),
        }
    }

    /// Tokens of `expert` its master must keep.
    fn kept_by_master(&self, expert_load: u64) -> u64 {
        u64::from(self.config.master_keeps_token && expert_load > 0)
    }
}

/// What a probe prefers beyond balance.
#[derive(Debug, Clone, Copy, Default)]
struct Preference {
    /// Pieces go to ranks holding the expert's weights when one takes them whole.
    resident: bool,
    /// Pieces pay for their copy, and go to the rank with the fewest copies among those that take
    /// them whole.
    cheap_transfers: bool,
}

/// Buffers reused from call to call so that a search allocates nothing once warm.
#[derive(Debug, Default, Clone)]
pub(crate) struct ExportSearch {
    /// Indexed by rank (whole problem); only the domain's entries are used.
    slack: Vec<u64>,
    slots_free: Vec<u32>,
    /// The domain's overloaded ranks, most loaded first.
    over: Vec<u32>,
    /// Ranks that can still take a piece (room for the minimum, a free slot), in no order.
    candidates: Vec<u32>,
    trial: Vec<Replica>,
    /// The busiest rank of the domain after the last probe, and after the kept one.
    peak: u64,
    best_peak: u64,
    /// The replicas of the best feasible probe so far.
    pub best: Vec<Replica>,
}

impl ExportSearch {
    pub fn new(num_ranks: usize, max_replicas: usize) -> Self {
        Self {
            slack: vec![0; num_ranks],
            slots_free: vec![0; num_ranks],
            over: Vec::with_capacity(num_ranks),
            candidates: Vec::with_capacity(num_ranks),
            trial: Vec::with_capacity(max_replicas),
            peak: 0,
            best_peak: 0,
            best: Vec::with_capacity(max_replicas),
        }
    }

    /// Balances the domain; returns the threshold reached and leaves its replicas in `self.best`.
    pub fn balance(&mut self, domain: &DomainProblem<'_>) -> u64 {
        self.best.clear();
        let total: u64 = domain
            .ranks
            .iter()
            .map(|&r| domain.rank_load[r as usize])
            .sum();
        let max = domain
            .ranks
            .iter()
            .map(|&r| domain.rank_load[r as usize])
            .max()
            .unwrap_or(0);
        let lower = total.div_ceil(domain.ranks.len() as u64);
        let ppm = u64::from(domain.config.tolerance_ppm);
        // Rounded down, so that the tolerance is never exceeded (and never below the bound);
        // in 128 bits, since costs in picoseconds times a million overflow 64.
        let target = u64::try_from(u128::from(lower) * u128::from(1_000_000 + ppm) / 1_000_000)
            .unwrap_or(u64::MAX);
        if max <= target || domain.slots_per_rank == 0 {
            return max;
        }

        self.over.clear();
        self.over.extend(
            domain
                .ranks
                .iter()
                .copied()
                .filter(|&r| domain.rank_load[r as usize] > target),
        );
        self.over
            .sort_unstable_by_key(|&r| (std::cmp::Reverse(domain.rank_load[r as usize]), r));

        let threshold = self.search(domain, target, max, lower, ppm);
        let resident = domain.residency.is_some_and(|r| !r.is_empty());
        if resident && !self.best.is_empty() {
            let preference = Preference {
                resident,
                cheap_transfers: false,
            };
            if self.probe(domain, threshold, preference) && self.peak <= self.best_peak {
                self.keep_trial();
            }
        }
        if domain.config.transfer.is_some() && !self.best.is_empty() {
            let preference = Preference {
                resident,
                cheap_transfers: true,
            };
            if self.probe(domain, threshold, preference) && self.peak <= self.best_peak {
                self.keep_trial();
            }
        }
        threshold
    }

    /// The lowest threshold the greedy export reaches (within the tolerance), its replicas left
    /// in `self.best` and its busiest rank in `self.best_peak`.
    fn search(
        &mut self,
        domain: &DomainProblem<'_>,
        target: u64,
        max: u64,
        lower: u64,
        ppm: u64,
    ) -> u64 {
        if self.probe(domain, target, Preference::default()) {
            self.keep_trial();
            return target;
        }
        // `infeasible` failed, `feasible` succeeded (the current maximum needs no replica).
        let (mut infeasible, mut feasible) = (target, max);
        let precision = u64::try_from(u128::from(lower) * u128::from(ppm) / 1_000_000)
            .unwrap_or(u64::MAX)
            .max(1);
        while feasible - infeasible > precision {
            let middle = infeasible + (feasible - infeasible) / 2;
            if self.probe(domain, middle, Preference::default()) {
                feasible = middle;
                self.keep_trial();
            } else {
                infeasible = middle;
            }
        }
        feasible
    }

    fn keep_trial(&mut self) {
        std::mem::swap(&mut self.best, &mut self.trial);
        self.best_peak = self.peak;
    }

    /// Whether greedy export brings every rank of the domain to at most `threshold`; the replicas
    /// it made are left in `self.trial` and the busiest rank's load in `self.peak`, preferring
    /// what `preference` says among the targets that keep the threshold.
    fn probe(
        &mut self,
        domain: &DomainProblem<'_>,
        threshold: u64,
        preference: Preference,
    ) -> bool {
        self.trial.clear();
        self.candidates.clear();
        self.peak = 0;
        let min_piece = domain.min_piece_for(preference);
        let per_token = domain.per_token();
        // The least slack a rank needs to take a piece: the smallest piece's cost.
        let min_room = domain.piece_cost(min_piece);
        for &rank in domain.ranks {
            let slack = threshold.saturating_sub(domain.rank_load[rank as usize]);
            self.slack[rank as usize] = slack;
            self.slots_free[rank as usize] = domain.slots_per_rank;
            if slack >= min_room {
                self.candidates.push(rank);
            }
        }
        for &source in &self.over {
            let load = domain.rank_load[source as usize];
            if load <= threshold {
                break;
            }
            let mut excess = load - threshold;
            let mut exported = 0;
            // Fixed costs of master instances left without a token, which their rank no longer
            // pays: its final cost, and so the peak, is that much lower.
            let mut freed = 0;
            for &expert in domain.experts_of(source) {
                let expert_load = domain.expert_load[expert as usize];
                let mut available = expert_load - domain.kept_by_master(expert_load);
                while excess > 0 && available >= min_piece {
                    // The tokens that would clear the excess, if the expert has them.
                    let whole = excess.div_ceil(per_token).min(available);
                    let Some(position) = self.choose_target(domain, whole, expert, preference)
                    else {
                        break;
                    };
                    let target = self.candidates[position] as usize;
                    // As many tokens as the target's slack pays for after the instance's fixed
                    // cost; a piece below the minimum is raised to it (the target has room).
                    let room = (self.slack[target] - domain.cost().per_instance) / per_token;
                    let piece = whole.min(room).max(min_piece);
                    self.trial.push(Replica {
                        expert,
                        rank: target as u32,
                        quota: piece as u32,
                    });
                    self.slack[target] -= domain.piece_cost(piece);
                    self.slots_free[target] -= 1;
                    if self.slack[target] < min_room || self.slots_free[target] == 0 {
                        self.candidates.swap_remove(position);
                    }
                    excess = excess.saturating_sub(piece * per_token);
                    exported += piece * per_token;
                    available -= piece;
                }
                if expert_load > 0 && available == 0 && domain.kept_by_master(expert_load) == 0 {
                    freed += domain.cost().per_instance;
                }
                if excess == 0 {
                    break;
                }
            }
            if excess > 0 {
                return false;
            }
            // The source ends at the threshold, or below it when the last piece was raised.
            self.peak = self.peak.max((load - exported).saturating_sub(freed));
        }
        for &rank in domain.ranks {
            if domain.rank_load[rank as usize] <= threshold {
                self.peak = self.peak.max(threshold - self.slack[rank as usize]);
            }
        }
        true
    }

    /// The candidate (as a position in `self.candidates`) to take a piece of up to `whole` tokens:
    /// best fit among ranks that take it whole (with cheap transfers preferred, the one with the
    /// most free slots first), else the rank with the most slack; ties go to the lower rank.
    /// Pieces of one expert never meet on a rank: after a piece that did not finish the export,
    /// the target's slack is spent (or the expert is).
    fn choose_target(
        &self,
        domain: &DomainProblem<'_>,
        whole: u64,
        expert: u32,
        preference: Preference,
    ) -> Option<usize> {
        let whole = domain.piece_cost(whole);
        if let Some(residency) = domain.residency.filter(|_| preference.resident) {
            let holder = self
                .candidates
                .iter()
                .enumerate()
                .filter(|&(_, &rank)| {
                    self.slack[rank as usize] >= whole && residency.holds(rank, expert)
                })
                .min_by_key(|&(_, &rank)| rank);
            if let Some((position, _)) = holder {
                return Some(position);
            }
        }
        // Under the transfer preference a rank with more free slots (fewer copies coming in)
        // fits better; otherwise every rank counts as equally free.
        let copies = |rank: u32| {
            if preference.cheap_transfers {
                domain.slots_per_rank - self.slots_free[rank as usize]
            } else {
                0
            }
        };
        let mut best_fit: Option<(u32, u64, u32, usize)> = None;
        let mut most_slack: Option<(u64, u32, usize)> = None;
        for (position, &rank) in self.candidates.iter().enumerate() {
            let slack = self.slack[rank as usize];
            let fit = (copies(rank), slack, rank);
            if slack >= whole && best_fit.is_none_or(|(c, s, r, _)| fit < (c, s, r)) {
                best_fit = Some((fit.0, slack, rank, position));
            }
            if most_slack.is_none_or(|(s, r, _)| slack > s || (slack == s && rank < r)) {
                most_slack = Some((slack, rank, position));
            }
        }
        best_fit
            .map(|(_, _, _, position)| position)
            .or(most_slack.map(|(_, _, position)| position))
    }
}
