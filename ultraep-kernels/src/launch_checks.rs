//! What a kernel's inputs must pass before anything is launched: counts that fit the kernels' 32-bit
//! indices, dynamic shared memory within what a launch gets without opting in, and task lists
//! whose tiles lie inside the expert state and whose waits can be met. Pure functions, so that
//! every refusal is tested on a machine without a GPU.

use ultraep_xfer::{NO_FLAG, TileTaskList};

use crate::KernelError;

/// Dynamic shared memory a launch gets without opting in to more (48 KiB on every architecture
/// the kernels are built for). A kernel that would need more is refused, not launched.
pub const SHARED_MEMORY_LIMIT: u64 = 48 * 1024;

/// `len` as a 32-bit count, or an error naming `what` (never a silent truncation).
pub fn count32(what: &str, len: usize) -> Result<u32, KernelError> {
    u32::try_from(len).map_err(|_| {
        KernelError::InvalidInput(format!(
            "{what}: {len} is more than the kernels' 32-bit counts allow"
        ))
    })
}

/// The dynamic shared memory of `words` 32-bit words for kernel `kernel`, in bytes, or an error
/// when it exceeds [`SHARED_MEMORY_LIMIT`].
pub fn shared_words(kernel: &str, words: u64) -> Result<u32, KernelError> {
    let bytes = words.saturating_mul(4);
    if bytes > SHARED_MEMORY_LIMIT {
        return Err(KernelError::InvalidInput(format!(
            "{kernel} would need {bytes} bytes of shared memory, more than the {SHARED_MEMORY_LIMIT} a launch gets (too many experts for one block)"
        )));
    }
    Ok(bytes as u32)
}

/// Refuses a task list whose tiles fall outside a state of `state_bytes` bytes, that stores to a
/// rank outside `ranks`, or that waits for a flag more times than the list signals it (such a
/// wait would spin until the kernel's deadline).
pub fn tasks_fit(tasks: &TileTaskList, state_bytes: u64, ranks: usize) -> Result<(), KernelError> {
    let refuse = |message: String| Err(KernelError::InvalidInput(message));
    let flags = tasks.flag_count() as usize;
    let mut signals = vec![0u64; flags];
    for destination in tasks.destinations() {
        if destination.rank as usize >= ranks {
            return refuse(format!(
                "a tile goes to rank {}, but there are {ranks} ranks",
                destination.rank
            ));
        }
        if destination.signal_flag != NO_FLAG {
            match signals.get_mut(destination.signal_flag as usize) {
                Some(count) => *count += 1,
                None => {
                    return refuse(format!(
                        "a tile signals flag {}, but the list has {flags}",
                        destination.signal_flag
                    ));
                }
            }
        }
    }
    for (index, task) in tasks.tasks().iter().enumerate() {
        let end = task.offset.saturating_add(u64::from(task.bytes));
        if end > state_bytes {
            return refuse(format!(
                "task {index} reads bytes {} to {end} of a {state_bytes}-byte state",
                task.offset
            ));
        }
        if task.source_rank as usize >= ranks {
            return refuse(format!(
                "task {index} loads from rank {}, but there are {ranks} ranks",
                task.source_rank
            ));
        }
        if task.wait_flag != NO_FLAG {
            let Some(&signalled) = signals.get(task.wait_flag as usize) else {
                return refuse(format!(
                    "task {index} waits for flag {}, but the list has {flags}",
                    task.wait_flag
                ));
            };
            if u64::from(task.wait_count) > signalled {
                return refuse(format!(
                    "task {index} waits for flag {} to reach {}, but the list signals it {signalled} times",
                    task.wait_flag, task.wait_count
                ));
            }
        }
    }
    Ok(())
}

/// Refuses checksums of regions that are not a positive multiple of 16 bytes (the kernel reads
/// 16-byte vectors) or more regions than 32-bit counts allow; returns the count.
pub fn checksum_regions(regions: usize, bytes: u64) -> Result<u32, KernelError> {
    if bytes == 0 || !bytes.is_multiple_of(16) {
        return Err(KernelError::InvalidInput(format!(
            "checksums on the device take regions of a positive multiple of 16 bytes, not {bytes}"
        )));
    }
    count32("regions to checksum", regions)
}

/// Refuses an arrival wait over slots the layout does not have, or over more `(slot, tile)` pairs
/// than the kernel's 32-bit pair index (with `u32::MAX` meaning "none missing") can name; returns
/// the number of pairs.
pub fn arrival_pairs(
    slots: &[u16],
    tiles_per_state: u64,
    layout_slots: u16,
) -> Result<u32, KernelError> {
    if let Some(&slot) = slots.iter().find(|&&slot| slot >= layout_slots) {
        return Err(KernelError::InvalidInput(format!(
            "an arrival wait on slot {slot}, but the rank has {layout_slots} slots"
        )));
    }
    let pairs = (slots.len() as u64).saturating_mul(tiles_per_state);
    match u32::try_from(pairs) {
        Ok(pairs) if pairs < u32::MAX && u32::try_from(tiles_per_state).is_ok() => Ok(pairs),
        _ => Err(KernelError::InvalidInput(format!(
            "an arrival wait on {pairs} tiles, more than the kernel's 32-bit pair index names"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultraep_topo::Preset;
    use ultraep_xfer::{ExpertState, Fanout, ReplicaSet, TransferConfig, TransferSchedule};

    fn list(state_bytes: u64) -> TileTaskList {
        let topology = Preset::Gb200Nvl72.topology(1).unwrap();
        let replicas = ReplicaSet::new(vec![
            Fanout::new(0, 0, 0, (1..=8).map(|rank| (rank, 0)).collect()).unwrap(),
        ])
        .unwrap();
        let state = ExpertState::opaque(state_bytes).unwrap();
        let schedule =
            TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default())
                .unwrap();
        TileTaskList::build(&schedule)
    }

    #[test]
    fn a_list_built_from_a_schedule_fits_its_state_and_ranks() {
        let tasks = list(4 << 20);
        assert!(tasks.flag_count() > 0, "relays: waits on flags");
        tasks_fit(&tasks, 4 << 20, 72).unwrap();
    }

    #[test]
    fn lists_that_would_read_past_the_state_or_store_past_the_ranks_are_refused() {
        let tasks = list(4 << 20);
        let error = tasks_fit(&tasks, 1 << 20, 72).unwrap_err().to_string();
        assert!(error.contains("-byte state"), "{error}");
        let error = tasks_fit(&tasks, 4 << 20, 4).unwrap_err().to_string();
        assert!(error.contains("there are 4 ranks"), "{error}");
    }

    #[test]
    fn a_wait_the_list_can_never_satisfy_is_refused() {
        // Half the tasks: the relays' waits count tiles the dropped half would have signalled.
        let tasks = list(4 << 20);
        let waiting = tasks
            .tasks()
            .iter()
            .rposition(|task| task.wait_flag != NO_FLAG)
            .unwrap();
        let keep: Vec<_> = tasks.tasks()[..waiting]
            .iter()
            .filter(|task| task.wait_flag == NO_FLAG)
            .take(1)
            .copied()
            .chain(std::iter::once(tasks.tasks()[waiting]))
            .collect();
        let mut share = TileTaskList::default();
        tasks.share_into(|task| keep.contains(task), &mut share);
        let error = tasks_fit(&share, 4 << 20, 72).unwrap_err().to_string();
        assert!(error.contains("signals it"), "{error}");
    }

    #[test]
    fn checksums_of_regions_the_kernel_cannot_read_whole_are_refused() {
        assert_eq!(checksum_regions(3, 4096).unwrap(), 3);
        for bytes in [0, 8, 4100] {
            let error = checksum_regions(3, bytes).unwrap_err().to_string();
            assert!(error.contains("multiple of 16 bytes"), "{error}");
        }
        assert!(checksum_regions(1 << 33, 16).is_err());
    }

    #[test]
    fn arrival_waits_on_missing_slots_or_too_many_tiles_are_refused() {
        assert_eq!(arrival_pairs(&[0, 3], 5, 4).unwrap(), 10);
        assert_eq!(arrival_pairs(&[], 5, 4).unwrap(), 0);
        assert!(arrival_pairs(&[4], 5, 4).is_err());
        assert!(arrival_pairs(&[0, 1], 1 << 31, 4).is_err());
        assert!(arrival_pairs(&[0], u64::from(u32::MAX), 4).is_err());
        assert!(arrival_pairs(&[0], 1 << 32, 4).is_err());
    }

    #[test]
    fn counts_and_shared_memory_beyond_the_kernels_are_refused() {
        assert_eq!(count32("ids", 7).unwrap(), 7);
        assert!(count32("ids", 1 << 33).is_err());
        // The histogram's shared memory is one word per expert: 12,288 fit, 12,289 do not.
        assert_eq!(shared_words("histogram", 12_288).unwrap(), 48 * 1024);
        let error = shared_words("histogram", 12_289).unwrap_err().to_string();
        assert!(error.contains("49156 bytes of shared memory"), "{error}");
    }
}
