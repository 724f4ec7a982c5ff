//! Router output as loads: the histogram of every rank's top-k expert ids, checked to be whole
//! tokens naming existing experts. Used by `Engine::step_routed`, `Engine::reroute` and
//! `LoadGather`.

use crate::RuntimeError;

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
