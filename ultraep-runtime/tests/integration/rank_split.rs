//! A rank's part of a step's split, for a framework that moves tokens itself: its row routes its
//! tokens exactly as `Engine::reroute` does, and every rank's columns receive exactly what the
//! other ranks' rows send; a step that will have no backward gives its place back.

use ultraep_plan::{SplitEntry, SplitMode};
use ultraep_runtime::{Engine, EngineConfig, HostDriven, RouterOutput, RuntimeError, StepId};

use crate::fixture::base_config;
use crate::processes::ids;

const RANKS: u32 = 8;

/// Host-driven engines of every rank, all planned for `step` from the same gathered rows.
fn planned(config: &EngineConfig, step: StepId, hot: u32) -> Vec<Engine<HostDriven>> {
    let mut engines: Vec<_> = (0..RANKS)
        .map(|rank| Engine::host_driven(config.clone(), rank).unwrap())
        .collect();
    let (mut gathered, mut row) = (Vec::new(), Vec::new());
    for (rank, engine) in engines.iter().enumerate() {
        engine
            .gather_row(RouterOutput::Ids(&[&ids(rank as u32, hot)]), &mut row)
            .unwrap();
        gathered.extend_from_slice(&row);
    }
    for engine in &mut engines {
        engine.step_from_rows(step, &gathered).unwrap();
    }
    engines
}

/// The instance of every id when each expert's ids, in order, fill the row's entries in order.
fn route_by_row(ids: &[u32], row: &[SplitEntry]) -> Vec<u32> {
    let mut left: Vec<(u32, u32, u32)> = row
        .iter()
        .map(|entry| (entry.expert, entry.instance, entry.tokens))
        .collect();
    ids.iter()
        .map(|&expert| {
            let share = left
                .iter_mut()
                .find(|(e, _, tokens)| *e == expert && *tokens > 0)
                .expect("the row has a share for every id");
            share.2 -= 1;
            share.1
        })
        .collect()
}

#[test]
fn a_ranks_row_routes_like_reroute_and_the_columns_receive_what_the_rows_send() {
    for split in [SplitMode::LocalityAware, SplitMode::None] {
        let mut config = base_config();
        config.plan.split = split;
        let step = StepId::new(0, 1);
        let mut engines = planned(&config, step, 5);
        let (mut sent, mut received) = (Vec::new(), Vec::new());
        let (mut row, mut columns, mut routed) = (Vec::new(), Vec::new(), Vec::new());
        for rank in 0..RANKS {
            let engine = &mut engines[rank as usize];
            let known = engine
                .rank_split(step, rank, &mut row, &mut columns)
                .unwrap();
            assert!(
                known,
                "{split:?}: a step from the whole matrix knows its columns"
            );
            let mine = ids(rank, 5);
            engine.reroute(step, rank, &mine, &mut routed).unwrap();
            assert_eq!(route_by_row(&mine, &row), routed, "{split:?} rank {rank}");
            assert!(row.windows(2).all(|pair| pair[0].expert <= pair[1].expert));
            let plan = engine.plan(step).unwrap();
            assert!(
                columns
                    .iter()
                    .all(|entry| plan.instances()[entry.instance as usize].rank == rank)
            );
            sent.extend(row.iter().filter(|entry| entry.tokens > 0).copied());
            received.extend(columns.iter().filter(|entry| entry.tokens > 0).copied());
        }
        let key = |entry: &SplitEntry| (entry.source, entry.expert, entry.instance);
        sent.sort_by_key(key);
        received.sort_by_key(key);
        assert!(engines[0].plan(step).unwrap().metrics().replicas > 0);
        assert_eq!(sent, received, "{split:?}");
    }
}

#[test]
fn a_rank_split_of_an_unknown_rank_or_step_is_refused() {
    let step = StepId::new(0, 0);
    let mut engines = planned(&base_config(), step, 3);
    let (mut row, mut columns) = (Vec::new(), Vec::new());
    let engine = &mut engines[0];
    assert!(matches!(
        engine.rank_split(step, RANKS, &mut row, &mut columns),
        Err(RuntimeError::InvalidInput(_))
    ));
    assert!(
        engine
            .rank_split(StepId::new(0, 2), 0, &mut row, &mut columns)
            .is_err()
    );
    assert!(row.is_empty() && columns.is_empty());
}

#[test]
fn a_step_dropped_before_its_backward_gives_its_place_to_the_next_microbatch() {
    // One microbatch in flight: the next one's step of the same layer is refused until the first
    // ends, by its backward or by being dropped.
    let config = base_config();
    let first = StepId::new(0, 0);
    let mut engines = planned(&config, first, 3);
    let engine = &mut engines[0];
    let (mut gathered, mut row) = (Vec::new(), Vec::new());
    for rank in 0..RANKS {
        engine
            .gather_row(RouterOutput::Ids(&[&ids(rank, 7)]), &mut row)
            .unwrap();
        gathered.extend_from_slice(&row);
    }
    let second = StepId::new(1, 0);
    assert!(matches!(
        engine.step_from_rows(second, &gathered),
        Err(RuntimeError::InFlight { .. })
    ));
    engine.drop_backward(first).unwrap();
    // Dropped, it has no backward to restore for.
    assert!(engine.restore(first).is_err());
    engine.step_from_rows(second, &gathered).unwrap();
    // A step in its backward is not dropped: its replicas' gradients are owed.
    engine.restore(second).unwrap();
    assert!(matches!(
        engine.drop_backward(second),
        Err(RuntimeError::InvalidInput(_))
    ));
    engine.reduce_gradients(second).unwrap();
    // Ended, it is left alone.
    engine.drop_backward(second).unwrap();
}

#[test]
fn a_backward_abandoned_after_its_restore_gives_its_place_back() {
    let config = base_config();
    let first = StepId::new(0, 0);
    let mut engines = planned(&config, first, 3);
    let engine = &mut engines[0];
    // Not in its backward yet: nothing to abandon.
    assert!(matches!(
        engine.abandon_backward(first),
        Err(RuntimeError::InvalidInput(_))
    ));
    engine.restore(first).unwrap();
    engine.abandon_backward(first).unwrap();
    // Ended: no reduction, no second abandon, and the next microbatch takes its place.
    assert!(engine.reduce_gradients(first).is_err());
    assert!(engine.abandon_backward(first).is_err());
    let (mut gathered, mut row) = (Vec::new(), Vec::new());
    for rank in 0..RANKS {
        engine
            .gather_row(RouterOutput::Ids(&[&ids(rank, 7)]), &mut row)
            .unwrap();
        gathered.extend_from_slice(&row);
    }
    engine.step_from_rows(StepId::new(1, 0), &gathered).unwrap();
}
