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
        check_rank(plan, loads, rank)?;
        let (experts, ranks) = (loads.experts(), loads.ranks());
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
        self.split_rank(plan, &loads, rank, loads.row(rank as usize), after, true)
    }

    /// Like [`RankSplit::compute`], from what `rank` gathered ([`GatheredLoads`]) instead of the
    /// whole matrix: the same entries, bit for bit. A cell the split needs that was not gathered
    /// is an error ([`PlanError::NotGathered`]), never a wrong split.
    pub fn compute_gathered(
        &mut self,
        plan: &Plan,
        gathered: &GatheredLoads,
    ) -> Result<(), PlanError> {
        self.split_gathered(plan, gathered, true)
    }

    /// Like [`RankSplit::compute_gathered`], the row only (what the rank sends; the columns stay
    /// empty): all a rank needs to reroute its tokens. It reads the rank's own row, the prefix
    /// sums of the replicated experts and the local tokens of their instances' ranks, which
    /// [`GatheredLoads::set_row_cells`] holds, nothing else.
    pub fn compute_row_gathered(
        &mut self,
        plan: &Plan,
        gathered: &GatheredLoads,
    ) -> Result<(), PlanError> {
        self.split_gathered(plan, gathered, false)
    }

    fn split_gathered(
        &mut self,
        plan: &Plan,
        gathered: &GatheredLoads,
        with_columns: bool,
    ) -> Result<(), PlanError> {
        let experts = plan.num_experts() as usize;
        if gathered.row.len() != experts || plan.rank_loads().len() != gathered.ranks as usize {
            return Err(PlanError::LoadShape {
                rows: gathered.ranks as usize,
                columns: gathered.row.len(),
                num_ranks: plan.rank_loads().len() as u32,
                num_experts: experts as u32,
            });
        }
        self.prefix.clear();
        self.prefix.extend_from_slice(&gathered.prefix);
        let (rank, row) = (gathered.rank, &gathered.row);
        self.split_rank(plan, gathered, rank, row, false, with_columns)
    }

    /// The row and columns of `rank` from its own tokens `mine`, the prefix sums in
    /// `self.prefix` (of the sources before the rank, or with `after` of the rank and those after
    /// it), and the cells of `loads`.
    fn split_rank(
        &mut self,
        plan: &Plan,
        loads: &impl Cells,
        rank: u32,
        mine: &[u32],
        after: bool,
        with_columns: bool,
    ) -> Result<(), PlanError> {
        let experts = plan.num_experts() as usize;
        self.row.clear();
        self.columns.clear();
        for expert in 0..experts as u32 {
            let instances = plan.instances_of(expert);
            let first = plan.master_index(expert);
            if instances.len() == 1 {
                let home = instances[0].rank;
                self.unreplicated(loads, rank, expert, first, home, mine, with_columns)?;
                continue;
            }
            // Each instance's local tokens, and where this rank's stretch of the stream starts.
            self.locals.clear();
            for instance in instances {
                let local = loads.cell(instance.rank, expert)?;
                self.locals
                    .push(u64::from(local).min(u64::from(instance.quota)));
            }
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
                if own == Some(index) && with_columns {
                    self.column(
                        loads,
                        rank,
                        expert,
                        first + index as u32,
                        instances,
                        from,
                        width,
                        kept,
                    )?;
                }
                from += width;
            }
        }
        Ok(())
    }

    /// The row and (with `with_columns`) column entries of an expert whose tokens all go to its
    /// master.
    #[allow(clippy::too_many_arguments)]
    fn unreplicated(
        &mut self,
        loads: &impl Cells,
        rank: u32,
        expert: u32,
        master: u32,
        home: u32,
        mine: &[u32],
        with_columns: bool,
    ) -> Result<(), PlanError> {
        let tokens = mine[expert as usize];
        if tokens > 0 {
            self.row.push(SplitEntry {
                source: rank,
                expert,
                instance: master,
                tokens,
            });
        }
        if home == rank && with_columns {
            let column = loads.column_of(expert);
            for source in 0..loads.ranks() {
                let tokens = loads.cell_in(column, source, expert)?;
                if tokens > 0 {
                    self.columns.push(SplitEntry {
                        source,
                        expert,
                        instance: master,
                        tokens,
                    });
                }
            }
        }
        Ok(())
    }

    /// The column of instance `instance` (on `rank`), whose stretch of the stream is
    /// `[from, from + width)` and which keeps `kept` of its own rank's tokens.
    #[allow(clippy::too_many_arguments)]
    fn column(
        &mut self,
        loads: &impl Cells,
        rank: u32,
        expert: u32,
        instance: u32,
        instances: &[crate::Instance],
        from: u64,
        width: u64,
        kept: u64,
    ) -> Result<(), PlanError> {
        let mut place = 0;
        let column = loads.column_of(expert);
        for source in 0..loads.ranks() {
            let tokens = u64::from(loads.cell_in(column, source, expert)?);
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
        Ok(())
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

/// Refuses a matrix that is not the plan's shape, and a rank outside it.
fn check_rank(plan: &Plan, loads: LoadMatrix<'_>, rank: u32) -> Result<(), PlanError> {
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
    Ok(())
}

/// Where the split reads a source's tokens for an expert: the whole matrix, or what one rank
/// gathered.
trait Cells {
    /// Source ranks.
    fn ranks(&self) -> u32;
    /// Tokens `source` routed to `expert`, or an error if they were not gathered.
    fn cell(&self, source: u32, expert: u32) -> Result<u32, PlanError>;
    /// The whole column of `expert`, where it is stored contiguously: the fast path of the loops
    /// over every source.
    fn column_of(&self, _expert: u32) -> Option<&[u32]> {
        None
    }
    /// Tokens `source` routed to `expert`, through `column` when there is one.
    fn cell_in(&self, column: Option<&[u32]>, source: u32, expert: u32) -> Result<u32, PlanError> {
        match column.and_then(|column| column.get(source as usize)) {
            Some(&tokens) => Ok(tokens),
            None => self.cell(source, expert),
        }
    }
}

impl Cells for LoadMatrix<'_> {
    fn ranks(&self) -> u32 {
        LoadMatrix::ranks(self) as u32
    }

    fn cell(&self, source: u32, expert: u32) -> Result<u32, PlanError> {
        Ok(self.get(source as usize, expert as usize))
    }
}

/// What one rank gathers of a layer's loads to compute its part of the contiguous split
/// ([`RankSplit::compute_gathered`]) without the whole matrix: its own row, the tokens the ranks
/// before it routed to every expert (an exclusive prefix sum over ranks), and single cells: for
/// every replicated expert, the tokens each of its instances' ranks routed to it, and the whole
/// column of every expert this rank holds an instance of. With [`crate::Planner::plan_totals_into`]
/// (every expert's total: an all-reduce), that is everything one rank needs per layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatheredLoads {
    rank: u32,
    ranks: u32,
    row: Vec<u32>,
    prefix: Vec<u32>,
    /// The experts this rank holds an instance of, ascending, and their whole columns:
    /// `columns[i * ranks + source]` for `held[i]`.
    held: Vec<u32>,
    columns: Vec<u32>,
    /// For replicated experts not held here: `(expert, instance rank, tokens)`, sorted.
    cells: Vec<(u32, u32, u32)>,
}

impl GatheredLoads {
    /// What `rank` gathers under `plan` (made for `loads`): built here from the whole matrix, for
    /// tests and benchmarks; a deployment receives the same values from its collectives.
    pub fn gather(plan: &Plan, loads: LoadMatrix<'_>, rank: u32) -> Result<Self, PlanError> {
        check_rank(plan, loads, rank)?;
        let (experts, ranks) = (loads.experts(), loads.ranks());
        let mut prefix = vec![0u32; experts];
        for source in 0..rank as usize {
            for (sum, &tokens) in prefix.iter_mut().zip(loads.row(source)) {
                *sum = sum.wrapping_add(tokens);
            }
        }
        let (mut held, mut columns, mut cells) = (Vec::new(), Vec::new(), Vec::new());
        for expert in 0..experts as u32 {
            let instances = plan.instances_of(expert);
            if instances.iter().any(|i| i.rank == rank) {
                held.push(expert);
                columns.extend((0..ranks).map(|s| loads.get(s, expert as usize)));
            } else if instances.len() > 1 {
                cells.extend(
                    instances
                        .iter()
                        .map(|i| (expert, i.rank, loads.get(i.rank as usize, expert as usize))),
                );
            }
        }
        cells.sort_unstable();
        Ok(Self {
            rank,
            ranks: ranks as u32,
            row: loads.row(rank as usize).to_vec(),
            prefix,
            held,
            columns,
            cells,
        })
    }

    /// Replaces what these hold with what rank `rank` of `ranks` needs for its row alone
    /// ([`RankSplit::compute_row_gathered`]): its own tokens to every expert (`row`), the
    /// tokens the ranks before it routed to every expert (`prefix`; only replicated experts'
    /// are read), and for every replicated expert the tokens each of its instances' ranks routed
    /// to it (`cells`, as `(expert, instance rank, tokens)` in any order). Reuses the buffers,
    /// so a warm caller allocates nothing. Refused: a rank outside the group, or a prefix not as
    /// long as the row.
    pub fn set_row_cells(
        &mut self,
        rank: u32,
        ranks: u32,
        row: &[u32],
        prefix: &[u32],
        cells: &[(u32, u32, u32)],
    ) -> Result<(), PlanError> {
        if rank >= ranks {
            return Err(PlanError::RankOutOfRange {
                rank,
                num_ranks: ranks,
            });
        }
        if prefix.len() != row.len() {
            return Err(PlanError::LoadShape {
                rows: ranks as usize,
                columns: prefix.len(),
                num_ranks: ranks,
                num_experts: row.len() as u32,
            });
        }
        self.rank = rank;
        self.ranks = ranks;
        self.row.clear();
        self.row.extend_from_slice(row);
        self.prefix.clear();
        self.prefix.extend_from_slice(prefix);
        self.held.clear();
        self.columns.clear();
        self.cells.clear();
        self.cells.extend_from_slice(cells);
        self.cells.sort_unstable();
        Ok(())
    }

    /// The rank these are of.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Bytes the rank received to assemble these (4 bytes per prefix sum and per cell; its own
    /// row is its own), beside the 4 x ranks x experts of gathering the whole matrix.
    pub fn bytes_received(&self) -> u64 {
        4 * (self.prefix.len() + self.columns.len() + self.cells.len()) as u64
    }
}

impl Cells for GatheredLoads {
    fn ranks(&self) -> u32 {
        self.ranks
    }

    fn column_of(&self, expert: u32) -> Option<&[u32]> {
        let index = self.held.binary_search(&expert).ok()?;
        let ranks = self.ranks as usize;
        self.columns.get(index * ranks..(index + 1) * ranks)
    }

    fn cell(&self, source: u32, expert: u32) -> Result<u32, PlanError> {
        if source == self.rank {
            return self
                .row
                .get(expert as usize)
                .copied()
                .ok_or(PlanError::NotGathered {
                    from_rank: source,
                    expert,
                });
        }
        if let Ok(index) = self.held.binary_search(&expert) {
            return self
                .columns
                .get(index * self.ranks as usize + source as usize)
                .copied()
                .ok_or(PlanError::NotGathered {
                    from_rank: source,
                    expert,
                });
        }
        self.cells
            .binary_search_by_key(&(expert, source), |&(e, s, _)| (e, s))
            .map(|at| self.cells[at].2)
            .map_err(|_| PlanError::NotGathered {
                from_rank: source,
                expert,
            })
    }
}
