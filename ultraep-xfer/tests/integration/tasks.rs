//! Tile task lists: their runs stay in range, and a share keeps its tasks' destinations.

use ultraep_xfer::{ExpertState, TileTaskList, TransferConfig, TransferSchedule};

use crate::skewed_layer::layer;

const STATE_BYTES: u64 = 1 << 20;

/// A task list is built only from a schedule, or as a share of one: its runs are always in
/// range, and a task from another list reads as no destinations rather than a panic.
#[test]
fn task_lists_cannot_point_out_of_range() {
    let (_, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let schedule =
        TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default()).unwrap();
    let list = TileTaskList::build(&schedule);
    for task in list.tasks() {
        assert_eq!(
            list.destinations_of(task).len(),
            task.destination_count as usize
        );
        if task.wait_flag != ultraep_xfer::NO_FLAG {
            assert!(task.wait_flag < list.flag_count());
        }
    }
    // A share keeps every destination of the tasks it keeps, renumbered into its own runs.
    let mut share = TileTaskList::default();
    list.share_into(
        |task| task.source_rank == list.tasks()[0].source_rank,
        &mut share,
    );
    assert!(!share.tasks().is_empty() && share.tasks().len() <= list.tasks().len());
    let stored: u64 = share.bytes_stored();
    assert!(stored > 0);
    // The last task of the whole list, asked of an empty list.
    let foreign = *list.tasks().last().unwrap();
    assert!(TileTaskList::default().destinations_of(&foreign).is_empty());
}

/// A cleared list is empty, as a backend that does not read task lists is handed one: no tasks,
/// no destinations, no flags, nothing stored. It is then rebuilt in place to the same list.
#[test]
fn a_cleared_list_is_empty_and_rebuilds_alike() {
    let (_, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let schedule =
        TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default()).unwrap();
    let built = TileTaskList::build(&schedule);
    let mut list = built.clone();
    assert!(!list.tasks().is_empty() && list.bytes_stored() > 0);
    list.clear();
    assert!(list.tasks().is_empty());
    assert!(list.destinations().is_empty());
    assert_eq!(list.flag_count(), 0);
    assert_eq!(list.bytes_stored(), 0);
    ultraep_xfer::TaskListBuilder::default().build_into(&schedule, &mut list);
    assert_eq!(list, built);
}
