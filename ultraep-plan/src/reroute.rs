//! The token reroute on the CPU: every (token, k) expert id of one source rank -> the instance the
//! plan's split assigns, so that every instance receives exactly its share of that source's
//! tokens.
//!
//! It lives with the planner, pure and CUDA-free, because a CPU-only engine reroutes with it; the
//! GPU reroute kernels (`ultraep-kernels`) consume its `#[repr(C)]` table as it is and are checked
//! against [`reroute`] bit for bit.

use bytemuck::{Pod, Zeroable};

use crate::{LoadMatrix, Plan, PlanError, SplitEntry};

/// No instance: the id named no expert, or the expert had no more share for this source.
pub const NO_INSTANCE: u32 = u32::MAX;

/// One instance's share of a source's tokens for one expert: occurrences up to `end`
/// (cumulative, in the expert's entry order) go to `instance`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RerouteEntry {
    /// Cumulative occurrence count at which this instance's share ends.
    pub end: u32,
    /// The instance, as an index into the plan's instances.
    pub instance: u32,
}

/// One source rank's reroute table: the entries of expert `e` are
/// `entries[offsets[e]..offsets[e + 1]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RerouteTable {
    /// Per expert, where its entries start (one more than experts).
    pub offsets: Vec<u32>,
    /// The entries, per expert in the split's instance order.
    pub entries: Vec<RerouteEntry>,
}

impl RerouteTable {
    /// The table of `source` under `plan`, made for `loads`.
    pub fn for_source(plan: &Plan, loads: LoadMatrix<'_>, source: u32) -> Result<Self, PlanError> {
        let mut table = Self::default();
        table.rebuild(plan, loads, source)?;
        Ok(table)
    }

    /// Builds the table from one source's row of a split (its [`SplitEntry`]s for every expert,
    /// ordered by expert then instance, as `ultraep_plan::RankSplit::row` gives them), for a plan
    /// of `experts` experts; reuses the table's buffers.
    pub fn rebuild_from_row(&mut self, experts: u32, row: &[SplitEntry]) -> Result<(), PlanError> {
        self.offsets.clear();
        self.entries.clear();
        self.offsets.push(0);
        let mut entries = row.iter().peekable();
        for expert in 0..experts {
            let mut end = 0u32;
            while let Some(entry) = entries.next_if(|entry| entry.expert == expert) {
                end = end.checked_add(entry.tokens).ok_or_else(|| {
                    PlanError::InvalidReroute(format!("expert {expert}'s row overflows 32 bits"))
                })?;
                self.entries.push(RerouteEntry {
                    end,
                    instance: entry.instance,
                });
            }
            self.offsets.push(self.entries.len() as u32);
        }
        if let Some(entry) = entries.next() {
            return Err(PlanError::InvalidReroute(format!(
                "a row entry of expert {} out of order or past the plan's {experts} experts",
                entry.expert
            )));
        }
        Ok(())
    }

    /// Makes this the table of `source` under `plan` for `loads`, reusing its buffers (no
    /// allocation once they are large enough). On error the table is left empty.
    pub fn rebuild(
        &mut self,
        plan: &Plan,
        loads: LoadMatrix<'_>,
        source: u32,
    ) -> Result<(), PlanError> {
        self.offsets.clear();
        self.entries.clear();
        if !plan.has_split() {
            return Err(PlanError::InvalidReroute(
                "the plan has no split to reroute by".into(),
            ));
        }
        if source as usize >= loads.ranks() || loads.experts() != plan.num_experts() as usize {
            return Err(PlanError::InvalidReroute(format!(
                "source rank {source} is not in the {} x {} load matrix of a {}-expert plan",
                loads.ranks(),
                loads.experts(),
                plan.num_experts()
            )));
        }
        self.offsets.push(0);
        for expert in 0..plan.num_experts() {
            if plan.instances_of(expert).len() > 1 {
                // Split entries are ordered by (source, instance) within an expert.
                let split = plan.replicated_split(expert);
                let first = split.partition_point(|entry| entry.source < source);
                let mut end = 0;
                for entry in split[first..].iter().take_while(|e| e.source == source) {
                    end += entry.tokens;
                    self.entries.push(RerouteEntry {
                        end,
                        instance: entry.instance,
                    });
                }
            } else {
                let tokens = loads.get(source as usize, expert as usize);
                if tokens > 0 {
                    self.entries.push(RerouteEntry {
                        end: tokens,
                        instance: plan.master_index(expert),
                    });
                }
            }
            self.offsets.push(self.entries.len() as u32);
        }
        Ok(())
    }
}

/// The instance of every id, in order, and how many ids could not be placed.
pub fn reroute(ids: &[u32], table: &RerouteTable) -> (Vec<u32>, u32) {
    let mut out = Vec::with_capacity(ids.len());
    let invalid = reroute_into(ids, table, &mut Vec::new(), &mut out);
    (out, invalid)
}

/// [`reroute`] into `out` (cleared first), counting occurrences in `seen` (scratch): no
/// allocation once both are large enough. Returns how many ids could not be placed.
pub fn reroute_into(
    ids: &[u32],
    table: &RerouteTable,
    seen: &mut Vec<u32>,
    out: &mut Vec<u32>,
) -> u32 {
    let experts = table.offsets.len().saturating_sub(1);
    seen.clear();
    seen.resize(experts, 0);
    out.clear();
    let mut invalid = 0;
    out.extend(ids.iter().map(|&id| {
        let expert = id as usize;
        if expert >= experts {
            invalid += 1;
            return NO_INSTANCE;
        }
        let occurrence = seen[expert];
        seen[expert] += 1;
        let shares =
            &table.entries[table.offsets[expert] as usize..table.offsets[expert + 1] as usize];
        match shares.iter().find(|share| occurrence < share.end) {
            Some(share) => share.instance,
            None => {
                invalid += 1;
                NO_INSTANCE
            }
        }
    }));
    invalid
}
