//! One rank's part of the contiguous split ([`crate::SplitMode::Contiguous`]): the tokens it
//! sends (its row) and the tokens its instances receive (their columns), computed without the
//! other ranks' parts.
//!
//! In the contiguous split every replicated expert's tokens form one stream: sources in rank
//! order, each contributing what its own rank's instance does not keep, and the instances take
//! consecutive stretches of it, each as long as what its quota leaves after its local tokens.
//! A source's place in the stream is the sum of the tokens of the sources before it, so one
//! rank's row needs only those prefix sums (additions over the rows before it, contiguous in
//! memory), and its instances' columns only the experts they belong to. No division anywhere.

use crate::{LoadMatrix, Plan, PlanError, SplitEntry};

/// One rank's row and columns of the contiguous split, in buffers kept from call to call: once
/// warm, [`RankSplit::compute`] allocates nothing.
///
/// ```
/// use ultraep_plan::reference::ReferenceScenario;
/// use ultraep_plan::{Balancer, PlanConfig, Planner, RankSplit, SplitMode};
/// let scenario = ReferenceScenario::published(2.0);
/// let load = scenario.generate();
/// let config = PlanConfig { split: SplitMode::None, ..PlanConfig::default() };
/// let mut planner =
///     Planner::new(scenario.layout()?, scenario.domains()?, scenario.slots_per_rank, config)?;
/// let plan = planner.plan(load.matrix())?;
/// let mut mine = RankSplit::default();
/// mine.compute(&plan, load.matrix(), 5)?;
/// // Rank 5 sends every token it routed.
/// let sent: u64 = mine.row().iter().map(|e| u64::from(e.tokens)).sum();
/// assert_eq!(sent, load.matrix().row(5).iter().map(|&t| u64::from(t)).sum::<u64>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RankSplit {
    row: Vec<SplitEntry>,
    columns: Vec<SplitEntry>,
    /// Scratch: every expert's tokens from the sources before the rank. An expert's tokens from
    /// all sources fit in 32 bits (the planner refuses more), so these sums do too, and 32-bit
    /// lanes add eight at a time.
    prefix: Vec<u32>,
    /// Scratch: the local tokens of the instances of the expert at hand.
    locals: Vec<u64>,
}

/// Tokens of `[start, start + len)` that fall in `[from, from + width)`.
fn overlap(start: u64, len: u64, from: u64, width: u64) -> u64 {
    let begin = start.max(from);
    let end = (start + len).min(from + width);
    end.saturating_sub(begin)
}

impl RankSplit {
    /// Computes `rank`'s row and columns for `plan` (made for `loads`, with any split mode)
    /// under the contiguous rule: the entries a plan made with [`crate::SplitMode::Contiguous`]
    /// lists with `rank` as the source (the row) or with an instance on `rank` (the columns),
    /// including those of experts without replicas, whose tokens all go to their master.
    pub fn compute(
        &mut self,
        plan: &Plan,
        loads: LoadMatrix<'_>,
        rank: u32,
    ) -> Result<(), PlanError> {
        let experts = plan.num_experts() as usize;
        let ranks = loads.ranks();
        if loads.experts() != experts || plan.rank_loads().len() != ranks {
            return Err(PlanError::LoadShape {
                rows: ranks,
                columns: loads.experts(),
                num_ranks: plan.rank_loads().len() as u32,
                num_experts: experts as u32,
            });
        }
        if rank as usize >= ranks {
            return Err(PlanError::RankOutOfRange {
                rank,
                num_ranks: ranks as u32,
            });
        }
        self.row.clear();
        self.columns.clear();
        self.prefix.clear();
        self.prefix.resize(experts, 0);
        // The sources before the rank, or (for a rank past the middle, fewer rows to add) the
        // rank and those after it, whose sum the expert's total then turns into the same prefix.
        let after = rank as usize > ranks / 2;
        let rows = if after {
            rank as usize..ranks
        } else {
            0..rank as usize
        };
        for source in rows {
            for (sum, &tokens) in self.prefix.iter_mut().zip(loads.row(source)) {
                // Wrapping only matters for loads that are not the plan's, which the planner
                // would have refused.
                *sum = sum.wrapping_add(tokens);
            }
        }
        let mine = loads.row(rank as usize);
        for expert in 0..experts as u32 {
            let instances = plan.instances_of(expert);
            let first = plan.master_index(expert);
            if instances.len() == 1 {
                self.unreplicated(loads, rank, expert, first, instances[0].rank, mine);
                continue;
            }
            // Each instance's local tokens, and where this rank's stretch of the stream starts.
            self.locals.clear();
            self.locals.extend(instances.iter().map(|instance| {
                u64::from(loads.get(instance.rank as usize, expert as usize))
                    .min(u64::from(instance.quota))
            }));
            let kept_before: u64 = (0..instances.len())
                .filter(|&i| instances[i].rank < rank)
                .map(|i| self.locals[i])
                .sum();
            let before = if after {
                // The quotas of an expert's instances add up to its load.
                let total: u64 = instances.iter().map(|i| u64::from(i.quota)).sum();
                total.saturating_sub(u64::from(self.prefix[expert as usize]))
            } else {
                u64::from(self.prefix[expert as usize])
            };
            let place = before.saturating_sub(kept_before);
            let own = instances.iter().position(|i| i.rank == rank);
            let kept = own.map_or(0, |i| self.locals[i]);
            let rest = u64::from(mine[expert as usize]).saturating_sub(kept);
            let mut from = 0;
            for index in 0..instances.len() {
                let width = u64::from(instances[index].quota) - self.locals[index];
                let mut tokens = overlap(place, rest, from, width);
                if own == Some(index) {
                    tokens += kept;
                }
                if tokens > 0 {
                    self.row.push(SplitEntry {
                        source: rank,
                        expert,
                        instance: first + index as u32,
                        tokens: tokens as u32,
                    });
                }
                if own == Some(index) {
                    self.column(
                        loads,
                        rank,
                        expert,
                        first + index as u32,
                        instances,
                        from,
                        width,
                        kept,
                    );
                }
                from += width;
            }
        }
        Ok(())
    }

    /// The row and column entries of an expert whose tokens all go to its master.
    fn unreplicated(
        &mut self,
        loads: LoadMatrix<'_>,
        rank: u32,
        expert: u32,
        master: u32,
        home: u32,
        mine: &[u32],
    ) {
        let tokens = mine[expert as usize];
        if tokens > 0 {
            self.row.push(SplitEntry {
                source: rank,
                expert,
                instance: master,
                tokens,
            });
        }
        if home == rank {
            for source in 0..loads.ranks() {
                let tokens = loads.get(source, expert as usize);
                if tokens > 0 {
                    self.columns.push(SplitEntry {
                        source: source as u32,
                        expert,
                        instance: master,
                        tokens,
                    });
                }
            }
        }
    }

    /// The column of instance `instance` (on `rank`), whose stretch of the stream is
    /// `[from, from + width)` and which keeps `kept` of its own rank's tokens.
    #[allow(clippy::too_many_arguments)]
    fn column(
        &mut self,
        loads: LoadMatrix<'_>,
        rank: u32,
        expert: u32,
        instance: u32,
        instances: &[crate::Instance],
        from: u64,
        width: u64,
        kept: u64,
    ) {
        let mut place = 0;
        for source in 0..loads.ranks() as u32 {
            let tokens = u64::from(loads.get(source as usize, expert as usize));
            let local = instances
                .iter()
                .find(|i| i.rank == source)
                .map_or(0, |i| tokens.min(u64::from(i.quota)));
            let rest = tokens.saturating_sub(local);
            let mut received = overlap(place, rest, from, width);
            if source == rank {
                received += kept;
            }
            place += rest;
            if received > 0 {
                self.columns.push(SplitEntry {
                    source,
                    expert,
                    instance,
                    tokens: received as u32,
                });
            }
        }
    }

    /// What the rank sends: its tokens for every expert, by instance, ordered by (expert,
    /// instance).
    pub fn row(&self) -> &[SplitEntry] {
        &self.row
    }

    /// What the rank's instances receive, ordered by (expert, source).
    pub fn columns(&self) -> &[SplitEntry] {
        &self.columns
    }
}
