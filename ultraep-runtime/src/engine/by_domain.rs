//! A step planned by domain: what one rank of a group that spans several scale-up domains
//! computes and gathers when it does not gather the whole load matrix.
//!
//! The plan without a split depends on every expert's total only, and each domain's replicas on
//! the totals only, so a rank all-reduces its counts into the totals, plans its own domain
//! (`Planner::plan_domain_into`), and all-gathers, from every rank, the replicas it hosts and its
//! domain's threshold (with its digest): every rank then assembles the same plan
//! (`Planner::assemble_into`), bit for bit the plan of the whole matrix. For its own part of the
//! split, the only part it needs to reroute its tokens, it needs the tokens the ranks before it
//! routed to each replicated expert (an exclusive prefix sum) and each instance rank's own tokens
//! for the replicated experts it hosts (a small all-gather). Nothing it receives grows with
//! ranks x experts.

use std::time::{Duration, Instant};

use ultraep_plan::{GatheredLoads, RankSplit, Replica};

use super::digest::{DIGEST_WORDS, check_agreement, read_words, write_words};
use super::{Engine, TransfersInFlight};
use crate::{Backend, Collective, RouterOutput, RuntimeError, StepId, StepReport};

/// The buffers of [`Engine::step_by_domain`], kept between steps so that a warm step allocates
/// nothing.
#[derive(Debug, Default)]
pub(super) struct DomainScratch {
    row: Vec<u32>,
    totals: Vec<u32>,
    reduce: Vec<u32>,
    record: Vec<u32>,
    records: Vec<u32>,
    replicas: Vec<Replica>,
    all_replicas: Vec<Replica>,
    thresholds: Vec<u64>,
    replicated: Vec<u32>,
    mine: Vec<u32>,
    prefix_replicated: Vec<u32>,
    prefix: Vec<u32>,
    cells: Vec<(u32, u32, u32)>,
    gathered: GatheredLoads,
    split: RankSplit,
    /// 32-bit words the last step took from its collectives' results.
    received_words: u64,
}

/// Words of a rank's first record before its replicas: the digest, the domain's threshold (2)
/// and the replica count.
const RECORD_HEAD: usize = DIGEST_WORDS + 3;

impl<B: Backend> Engine<B> {
    /// [`Engine::begin_step_by_domain`] and [`Engine::finish_step`] in one call.
    pub fn step_by_domain(
        &mut self,
        step: StepId,
        collective: &mut impl Collective,
        output: RouterOutput<'_>,
    ) -> Result<StepReport, RuntimeError> {
        match self.begin_step_by_domain(step, collective, output)? {
            Ok(report) => Ok(report),
            Err(in_flight) => self.finish_step(in_flight),
        }
    }

    /// Like [`Engine::begin_step`] from this rank's router `output` (its top-k ids or its
    /// tokens per expert), for an engine of one rank whose `collective` holds every rank of the group:
    /// every rank plans only its own domain and gathers the other domains' replicas, every
    /// expert's total and a few cells instead of the whole load matrix, and gets the same plan
    /// (see the module's documentation). The plan has no split; [`Engine::reroute`] routes this
    /// rank's tokens by its own part of the contiguous split, computed here. The planner's
    /// preference for replicas already in their slots does not apply, and
    /// [`Engine::loads`] is `None` for such a step. Ranks whose metadata diverged fail alike with
    /// [`RuntimeError::Diverged`] before any weight moves.
    pub fn begin_step_by_domain(
        &mut self,
        step: StepId,
        collective: &mut impl Collective,
        output: RouterOutput<'_>,
    ) -> Result<Result<StepReport, TransfersInFlight>, RuntimeError> {
        let index = self.check_step_start(step)?;
        self.check_by_domain_members(collective)?;
        let mut scratch = std::mem::take(&mut self.scratch.by_domain);
        let planned = self.plan_by_domain(step, collective, output, &mut scratch);
        self.scratch.by_domain = scratch;
        let planning = planned?;
        self.begin_planned(step, index, planning)
    }

    /// Bytes the last step by domain took from its collectives' results (the totals, every
    /// rank's replicas and cells, the prefix sums), beside `4 x ranks x experts` for the whole
    /// matrix. What the transport moves to deliver them depends on it: the default all-reduce
    /// and prefix sum gather every contribution.
    pub fn domain_gather_bytes(&self) -> u64 {
        4 * self.scratch.by_domain.received_words
    }

    /// Refuses an engine of more than one rank, or a collective that is not every rank's.
    fn check_by_domain_members(&self, collective: &impl Collective) -> Result<(), RuntimeError> {
        let ranks = self.config.layout.num_ranks();
        if self.local.len() != 1
            || collective.ranks() != ranks
            || collective.rank() != self.local.start
        {
            return Err(RuntimeError::InvalidInput(format!(
                "planning by domain takes an engine of one rank and a collective of every rank: \
                 ranks {:?} of {ranks}, member {} of {}",
                self.local,
                collective.rank(),
                collective.ranks()
            )));
        }
        Ok(())
    }

    /// Plans `step` by domain into the candidate plan and split; returns the time it took.
    fn plan_by_domain(
        &mut self,
        step: StepId,
        collective: &mut impl Collective,
        output: RouterOutput<'_>,
        s: &mut DomainScratch,
    ) -> Result<Duration, RuntimeError> {
        let started = Instant::now();
        let rank = self.local.start;
        let ranks = self.config.layout.num_ranks() as usize;
        let experts = self.config.model.experts as usize;
        let slots = usize::from(self.config.slots_per_rank);
        s.row.resize(experts, 0);
        output.count_into(1, experts as u32, self.config.model.top_k, &mut s.row)?;
        s.totals.resize(experts, 0);
        collective.all_reduce_sum(&s.row, &mut s.totals, &mut s.reduce)?;

        // This domain's replicas and threshold, from the totals.
        let planner = self.moved_layouts[step.layer as usize]
            .as_mut()
            .unwrap_or(&mut self.planner);
        let domain = planner.domains().domain_of(rank);
        let threshold = planner.plan_domain_into(domain, &s.totals, &mut s.replicas)?;
        // Every rank's record: its digest, its domain's threshold and the replicas it hosts.
        let width = RECORD_HEAD + 2 * slots;
        s.record.clear();
        s.record.resize(RECORD_HEAD, 0);
        write_words(self.digest, &mut s.record);
        write_words(threshold, &mut s.record[DIGEST_WORDS..]);
        for replica in s.replicas.iter().filter(|replica| replica.rank == rank) {
            s.record.extend_from_slice(&[replica.expert, replica.quota]);
        }
        let hosted = (s.record.len() - RECORD_HEAD) / 2;
        if hosted > slots {
            return Err(RuntimeError::InvalidInput(format!(
                "the plan puts {hosted} replicas on rank {rank} of {slots} slots"
            )));
        }
        s.record[RECORD_HEAD - 1] = hosted as u32;
        s.record.resize(width, 0);
        s.records.resize(width * ranks, 0);
        collective.all_gather(&s.record, &mut s.records)?;
        check_agreement(
            ranks,
            |rank| read_words(&s.records[rank * width..]),
            |rank| rank as u32,
        )?;
        s.all_replicas.clear();
        for (source, record) in s.records.chunks_exact(width).enumerate() {
            let count = record[RECORD_HEAD - 1] as usize;
            if count > slots {
                return Err(RuntimeError::InvalidInput(format!(
                    "rank {source} says it hosts {count} replicas in {slots} slots"
                )));
            }
            for pair in record[RECORD_HEAD..][..2 * count].chunks_exact(2) {
                s.all_replicas.push(Replica {
                    expert: pair[0],
                    rank: source as u32,
                    quota: pair[1],
                });
            }
        }
        s.thresholds.clear();
        for domain in 0..planner.domains().num_domains() {
            let first = planner.domains().ranks_of(domain)[0] as usize;
            let record = &s.records[first * width..];
            s.thresholds.push(read_words(&record[DIGEST_WORDS..]));
        }
        planner.assemble_into(
            &s.totals,
            &s.all_replicas,
            &s.thresholds,
            &mut self.candidate.plan,
        )?;

        // This rank's part of the split: the prefix sums of the replicated experts, and each
        // instance rank's own tokens for the replicated experts it hosts.
        s.replicated.clear();
        s.mine.clear();
        for expert in 0..experts as u32 {
            if self.candidate.plan.instances_of(expert).len() > 1 {
                s.replicated.push(expert);
                s.mine.push(s.row[expert as usize]);
            }
        }
        s.prefix_replicated.resize(s.replicated.len(), 0);
        collective.exclusive_prefix_sum(&s.mine, &mut s.prefix_replicated, &mut s.reduce)?;
        s.prefix.clear();
        s.prefix.resize(experts, 0);
        for (&expert, &before) in s.replicated.iter().zip(&s.prefix_replicated) {
            s.prefix[expert as usize] = before;
        }
        let held_at_most = self
            .masters
            .experts_on_rank
            .iter()
            .copied()
            .max()
            .unwrap_or(0) as usize
            + slots;
        let cell_width = 1 + 2 * held_at_most;
        s.record.clear();
        s.record.push(0);
        for &expert in &s.replicated {
            if self
                .candidate
                .plan
                .instances_of(expert)
                .iter()
                .any(|instance| instance.rank == rank)
            {
                s.record
                    .extend_from_slice(&[expert, s.row[expert as usize]]);
            }
        }
        s.record[0] = ((s.record.len() - 1) / 2) as u32;
        s.record.resize(cell_width, 0);
        s.records.resize(cell_width * ranks, 0);
        collective.all_gather(&s.record, &mut s.records)?;
        s.cells.clear();
        for (source, record) in s.records.chunks_exact(cell_width).enumerate() {
            let count = record[0] as usize;
            if count > held_at_most {
                return Err(RuntimeError::InvalidInput(format!(
                    "rank {source} says it hosts {count} instances of replicated experts, more \
                     than its {held_at_most} masters and slots"
                )));
            }
            for pair in record[1..][..2 * count].chunks_exact(2) {
                s.cells.push((pair[0], source as u32, pair[1]));
            }
        }
        s.gathered
            .set_row_cells(rank, ranks as u32, &s.row, &s.prefix, &s.cells)?;
        s.split
            .compute_row_gathered(&self.candidate.plan, &s.gathered)?;
        s.received_words =
            (experts + width * ranks + s.replicated.len() + cell_width * ranks) as u64;

        self.candidate.split.clear();
        self.candidate.split.extend_from_slice(s.split.row());
        // Only this rank's row: a step by domain never holds the whole matrix.
        self.candidate.loads.clear();
        self.candidate.loads.extend_from_slice(&s.row);
        self.candidate.by_domain = true;
        Ok(started.elapsed())
    }
}
