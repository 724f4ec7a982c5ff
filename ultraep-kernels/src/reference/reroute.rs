//! The token reroute: every (token, k) expert id of one source rank -> the instance the plan's
//! split assigns, so that every instance receives exactly its share of that source's tokens.

use bytemuck::{Pod, Zeroable};
use ultraep_plan::{LoadMatrix, Plan};

use crate::KernelError;

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
    pub fn for_source(
        plan: &Plan,
        loads: LoadMatrix<'_>,
        source: u32,
    ) -> Result<Self, KernelError> {
        if !plan.has_split() {
            return Err(KernelError::InvalidInput(
                "the plan has no split to reroute by".into(),
            ));
        }
        if source as usize >= loads.ranks() {
            return Err(KernelError::InvalidInput(format!(
                "source rank {source} is not in the load matrix"
            )));
        }
        let experts = plan.num_experts() as usize;
        let mut per_expert: Vec<Vec<RerouteEntry>> = vec![Vec::new(); experts];
        for entry in plan.split(loads).filter(|entry| entry.source == source) {
            let shares = &mut per_expert[entry.expert as usize];
            let end = shares.last().map_or(0, |last| last.end) + entry.tokens;
            shares.push(RerouteEntry {
                end,
                instance: entry.instance,
            });
        }
        let mut table = RerouteTable {
            offsets: Vec::with_capacity(experts + 1),
            entries: Vec::new(),
        };
        table.offsets.push(0);
        for shares in per_expert {
            table.entries.extend(shares);
            table.offsets.push(table.entries.len() as u32);
        }
        Ok(table)
    }
}

/// The instance of every id, in order, and how many ids could not be placed.
pub fn reroute(ids: &[u32], table: &RerouteTable) -> (Vec<u32>, u32) {
    let experts = table.offsets.len().saturating_sub(1);
    let mut seen = vec![0u32; experts];
    let mut invalid = 0;
    let out = ids
        .iter()
        .map(|&id| {
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
        })
        .collect();
    (out, invalid)
}
