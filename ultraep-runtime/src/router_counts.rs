//! Router output as loads: the histogram of every local rank's top-k expert ids, checked to be
//! whole tokens naming existing experts, or counts a framework made itself. Every way into the
//! engine that starts from the router ([`crate::Engine::gather_row`],
//! [`crate::Engine::step_gathered`], [`crate::Engine::step_by_domain`]) takes a
//! [`RouterOutput`], and [`crate::Engine::reroute`] checks ids the same way.

use crate::RuntimeError;

/// One layer's router output on an engine's local ranks, in either form a framework has it.
#[derive(Debug, Clone, Copy)]
pub enum RouterOutput<'a> {
    /// Each local rank's top-k expert ids (`[i]` for the `i`-th local rank), `top_k` per token,
    /// token-major.
    Ids(&'a [&'a [u32]]),
    /// Each local rank's tokens per expert, rank after rank (a histogram the caller made on its
    /// device, say).
    Counts(&'a [u32]),
}

impl RouterOutput<'_> {
    /// Writes the tokens per expert of `ranks` local ranks into `counts` (`ranks x experts`,
    /// row-major), refusing output of another number of ranks, ids that are not whole tokens of
    /// `top_k` or name no expert, and counts of another length.
    pub(crate) fn count_into(
        self,
        ranks: usize,
        experts: u32,
        top_k: u32,
        counts: &mut [u32],
    ) -> Result<(), RuntimeError> {
        match self {
            RouterOutput::Ids(ids) => {
                if ids.len() != ranks {
                    return Err(RuntimeError::InvalidInput(format!(
                        "router ids of {} ranks for an engine that holds {ranks}",
                        ids.len()
                    )));
                }
                count_ids(ids, experts, top_k, counts)
            }
            RouterOutput::Counts(given) => {
                if given.len() != counts.len() {
                    return Err(RuntimeError::InvalidInput(format!(
                        "{} counts for an engine of {ranks} ranks x {experts} experts",
                        given.len()
                    )));
                }
                counts.copy_from_slice(given);
                Ok(())
            }
        }
    }
}

/// Counts every id of every rank into `loads` (`ids.len() x experts`, row-major): every rank's
/// ids must be whole tokens of `top_k` and name experts that exist.
pub(crate) fn count_ids(
    ids: &[&[u32]],
    experts: u32,
    top_k: u32,
    loads: &mut [u32],
) -> Result<(), RuntimeError> {
    loads.fill(0);
    for (rank, ids) in ids.iter().enumerate() {
        if !ids.len().is_multiple_of(top_k as usize) {
            return Err(RuntimeError::InvalidInput(format!(
                "rank {rank} has {} router ids, not whole tokens of top_k = {top_k}",
                ids.len()
            )));
        }
        let row = &mut loads[rank * experts as usize..][..experts as usize];
        for &id in *ids {
            match row.get_mut(id as usize) {
                Some(count) => *count += 1,
                None => {
                    return Err(RuntimeError::InvalidInput(format!(
                        "rank {rank} routes a token to expert {id}, of {experts}"
                    )));
                }
            }
        }
    }
    Ok(())
}
