//! Every rank's segment as this process sees them, the bounded wait on a word a peer writes, and
//! the execution of one tile task into peers' slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ultraep_xfer::{NO_FLAG, Region, TileDestination, TileTask, region_of};

use super::segment::{Segment, SegmentLayout};
use crate::RuntimeError;

/// Every rank's segment, as this process sees them.
#[derive(Debug)]
pub(crate) struct Peers {
    pub(super) segments: Vec<Arc<Segment>>,
}

impl Peers {
    pub(super) fn segment(&self, rank: u32) -> Result<&Segment, RuntimeError> {
        self.segments
            .get(rank as usize)
            .map(|s| &**s)
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!(
                    "rank {rank} is not in the group of {}",
                    self.segments.len()
                ))
            })
    }

    /// The rank expected to write (`awaited`) if it is gone; with no rank expected, any rank
    /// that is gone.
    fn lost_peer(&self, awaited: Option<u32>) -> Option<u32> {
        let gone = |rank: u32| {
            self.segments
                .get(rank as usize)
                .is_some_and(|segment| !segment.owner_alive())
        };
        match awaited {
            Some(rank) => Some(rank).filter(|&rank| gone(rank)),
            None => (0..self.segments.len() as u32).find(|&rank| gone(rank)),
        }
    }

    /// Waits until `word` holds `target` (acquire), for at most `timeout`; gives up early when
    /// `failed` is set by another worker, or when a peer is gone (`awaited`, the rank expected to
    /// write the word, is checked first). `what` names the wait in the error.
    pub(super) fn wait_for(
        &self,
        word: &AtomicU64,
        target: u64,
        timeout: Duration,
        failed: Option<&AtomicBool>,
        awaited: Option<u32>,
        what: impl Fn() -> String,
    ) -> Result<(), RuntimeError> {
        wait_until(
            word,
            |value| value == target,
            timeout,
            || {
                if failed.is_some_and(|f| f.load(Ordering::Acquire)) {
                    return Some(RuntimeError::Backend("another worker failed first".into()));
                }
                self.lost_peer(awaited)
                    .map(|rank| RuntimeError::PeerLost { rank })
            },
            what,
        )
    }

    /// Executes one tile task: waits for the tile if the task forwards it from a relay slot,
    /// stores it into every destination slot, and marks it landed there for `round`.
    pub(super) fn execute(
        &self,
        task: &TileTask,
        destinations: &[TileDestination],
        round: u64,
        timeout: Duration,
        failed: &AtomicBool,
    ) -> Result<(), RuntimeError> {
        let source = self.segment(task.source_rank)?;
        let layout = source.layout();
        let tile_bytes = u64::from(layout.tile_bytes.max(1));
        if !task.offset.is_multiple_of(tile_bytes) {
            return Err(RuntimeError::InvalidInput(format!(
                "a tile task at offset {} is not on the {tile_bytes}-byte tile grid",
                task.offset
            )));
        }
        let tile = (task.offset / tile_bytes) as usize;
        let region = region_of(task.source_region);
        if task.wait_flag != NO_FLAG {
            let Region::Slot { slot } = region else {
                return Err(RuntimeError::InvalidInput(
                    "a tile task waits for a master, which never arrives".into(),
                ));
            };
            check_tile(&layout, slot, tile)?;
            self.wait_for(
                source.tile_word(slot, tile),
                round,
                timeout,
                Some(failed),
                None,
                || {
                    format!(
                        "tile {tile} of slot {slot} of relay rank {} to arrive",
                        task.source_rank
                    )
                },
            )?;
        }
        for destination in destinations {
            let target = self.segment(destination.rank)?;
            let Region::Slot { slot } = region_of(destination.region) else {
                return Err(RuntimeError::InvalidInput(
                    "a tile task writes a master; only slots receive".into(),
                ));
            };
            check_tile(&target.layout(), slot, tile)?;
            // Not before the slot's owner has opened it for this round: until then it may still
            // be receiving, or computing with, what an earlier call put there.
            self.wait_for(
                target.open_word(slot),
                round,
                timeout,
                Some(failed),
                Some(destination.rank),
                || {
                    format!(
                        "rank {} to open slot {slot} for transfer round {round}",
                        destination.rank
                    )
                },
            )?;
            source.copy_to(
                region,
                task.offset,
                task.bytes,
                target,
                Region::Slot { slot },
            )?;
            target.tile_word(slot, tile).store(round, Ordering::Release);
        }
        Ok(())
    }
}

/// Waits until `word` (read with acquire ordering) is `ready`, for at most `timeout`: it spins a
/// little, then yields, then sleeps. Now and then it asks `stop` whether to give up at once (a
/// peer is gone, another worker failed). The one bounded wait of the host plane and the
/// shared-memory gather.
pub(crate) fn wait_until(
    word: &AtomicU64,
    ready: impl Fn(u64) -> bool,
    timeout: Duration,
    stop: impl Fn() -> Option<RuntimeError>,
    what: impl Fn() -> String,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let mut spins = 0u32;
    while !ready(word.load(Ordering::Acquire)) {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
            continue;
        }
        if spins.is_multiple_of(256) {
            if let Some(error) = stop() {
                return Err(error);
            }
            if started.elapsed() >= timeout {
                return Err(RuntimeError::Timeout {
                    waited: timeout,
                    what: what(),
                });
            }
        }
        if spins < 4096 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    Ok(())
}

fn check_tile(layout: &SegmentLayout, slot: u16, tile: usize) -> Result<(), RuntimeError> {
    if slot >= layout.slots || tile >= layout.tiles() {
        return Err(RuntimeError::InvalidInput(format!(
            "tile {tile} of slot {slot} does not exist ({} slots of {} tiles)",
            layout.slots,
            layout.tiles()
        )));
    }
    Ok(())
}
