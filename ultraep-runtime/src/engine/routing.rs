//! From the router's output: the load as the histogram of every rank's top-k ids, and every
//! token rerouted to the instance of the plan that processes it.

use ultraep_plan::reroute::{RerouteTable, reroute_into};
use ultraep_plan::{LoadMatrix, RankSplit, SplitEntry};

use super::{Engine, entry_in};
use crate::router_counts::count_ids;
use crate::{Backend, RuntimeError, StepId};

impl<B: Backend> Engine<B> {
    /// Rewrites rank `source`'s top-k expert ids (as given to [`Engine::step_gathered`] or
    /// [`Engine::step_by_domain`], or adding up to its row of the load given to
    /// [`Engine::step`]) to the instance of `step`'s plan
    /// that processes each, into `instances`: every instance receives exactly its share of the
    /// source's tokens, the same for the same input. Allocates nothing once warm; on error
    /// `instances` is left empty.
    pub fn reroute(
        &mut self,
        step: StepId,
        source: u32,
        ids: &[u32],
        instances: &mut Vec<u32>,
    ) -> Result<(), RuntimeError> {
        instances.clear();
        self.check_layer(step.layer)?;
        let entry = entry_in(&self.steps, self.entry_index(step), step)?;
        let ranks = self.config.layout.num_ranks();
        let experts = self.config.model.experts as usize;
        if source >= ranks {
            return Err(RuntimeError::InvalidInput(format!(
                "source rank {source} of {ranks}"
            )));
        }
        // A step planned by domain keeps only its own rank's row of the load, and its own part
        // of the split, the only ones it can compute.
        let row_start = if entry.by_domain {
            if !self.local.contains(&source) {
                return Err(RuntimeError::InvalidInput(format!(
                    "{step} was planned by domain: only rank {} can be rerouted",
                    self.local.start
                )));
            }
            0
        } else {
            source as usize * experts
        };
        let scratch = &mut self.scratch.reroute;
        let row = &entry.loads[row_start..][..experts];
        scratch.counts.resize(experts, 0);
        count_ids(
            &[ids],
            experts as u32,
            self.config.model.top_k,
            &mut scratch.counts,
        )?;
        if let Some(expert) = (0..experts).find(|&e| scratch.counts[e] != row[e]) {
            return Err(RuntimeError::InvalidInput(format!(
                "rank {source}'s ids name expert {expert} {} times, but {step}'s load says {}",
                scratch.counts[expert], row[expert]
            )));
        }
        // A plan without a split (a rank-local engine's) is split here, for this source only.
        let built = if entry.by_domain {
            scratch
                .table
                .rebuild_from_row(experts as u32, &entry.own_split)
        } else {
            let loads = LoadMatrix::new(&entry.loads, ranks as usize, experts)?;
            if entry.plan.has_split() {
                scratch.table.rebuild(&entry.plan, loads, source)
            } else {
                scratch.rank_split.compute(&entry.plan, loads, source)?;
                scratch
                    .table
                    .rebuild_from_row(experts as u32, scratch.rank_split.row())
            }
        };
        built.map_err(|error| RuntimeError::InvalidInput(error.to_string()))?;
        let unplaced = reroute_into(ids, &scratch.table, &mut scratch.seen, instances);
        if unplaced > 0 {
            instances.clear();
            return Err(RuntimeError::InvalidInput(format!(
                "{unplaced} of rank {source}'s ids found no instance"
            )));
        }
        Ok(())
    }
}

/// Buffers of [`Engine::reroute`], kept between calls.
#[derive(Debug, Default)]
pub(super) struct RerouteScratch {
    table: RerouteTable,
    rank_split: RankSplit,
    seen: Vec<u32>,
    counts: Vec<u32>,
}

impl<B: Backend> Engine<B> {
    /// `rank`'s part of `step`'s split, into `row` (what the rank sends: [`SplitEntry`]s ordered
    /// by expert, then instance, the order [`Engine::reroute`] fills instances in) and `columns`
    /// (what the rank's instances receive, ordered by expert, then source). Returns whether the
    /// columns are known: a step planned by domain kept only the local rank's row, so its columns
    /// are left empty and its other ranks are refused.
    ///
    /// A framework that moves tokens itself derives everything from these: the reroute table
    /// (the row's cumulative tokens), how many rows it sends to every rank, and how many it
    /// receives from every source for every instance of its own, with no exchange of counts.
    pub fn rank_split(
        &mut self,
        step: StepId,
        rank: u32,
        row: &mut Vec<SplitEntry>,
        columns: &mut Vec<SplitEntry>,
    ) -> Result<bool, RuntimeError> {
        row.clear();
        columns.clear();
        self.check_layer(step.layer)?;
        let entry = entry_in(&self.steps, self.entry_index(step), step)?;
        let ranks = self.config.layout.num_ranks();
        let experts = self.config.model.experts as usize;
        if rank >= ranks {
            return Err(RuntimeError::InvalidInput(format!(
                "rank {rank} of {ranks}"
            )));
        }
        if entry.by_domain {
            if !self.local.contains(&rank) {
                return Err(RuntimeError::InvalidInput(format!(
                    "{step} was planned by domain: only rank {} has its split",
                    self.local.start
                )));
            }
            row.extend_from_slice(&entry.own_split);
            return Ok(false);
        }
        let loads = LoadMatrix::new(&entry.loads, ranks as usize, experts)?;
        if entry.plan.has_split() {
            // The plan's own split, in its (expert, source, instance) order: the row keeps the
            // source's entries, the columns those of the rank's instances.
            let instances = entry.plan.instances();
            for split in entry.plan.split(loads) {
                if split.source == rank {
                    row.push(split);
                }
                if instances[split.instance as usize].rank == rank {
                    columns.push(split);
                }
            }
        } else {
            let split = &mut self.scratch.reroute.rank_split;
            split.compute(&entry.plan, loads, rank)?;
            row.extend_from_slice(split.row());
            columns.extend_from_slice(split.columns());
        }
        Ok(true)
    }
}
