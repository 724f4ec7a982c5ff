//! The all-gather among processes of one host: every member writes its row into a segment of
//! its own that the others map, then raises its round word; a member reads a peer's row once
//! that peer's word shows the round. Rows alternate between two buffers, so a fast member's next
//! round never overwrites a row a slow member is still reading (nobody can start round `n + 2`
//! before everyone has finished round `n`, since everyone must arrive at round `n + 1` first).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ultraep_xfer::Region;

use super::Collective;
use crate::RuntimeError;
use crate::plane::segment::{Owner, Segment, SegmentLayout};
use crate::plane::{segment_path, wait_until};

/// Word 0 of a gather segment: the last round the member arrived at. Words 1 and 2: the round
/// (high 32 bits) and row length (low 32 bits) in each of the two buffers, so that a reader never
/// takes a row of another round for this one. The buffers are the segment's two "master" regions.
const ROUND: u32 = 0;
const LENGTH: u32 = 1;

/// One process's end of an all-gather among the processes of one host, over shared memory.
///
/// Every member calls [`ShmCollective::join`] with the same group name, member count and row
/// capacity; a member that is gone makes the others' calls return [`RuntimeError::PeerLost`], one
/// that hangs [`RuntimeError::Timeout`], never a wait without end.
#[derive(Debug)]
pub struct ShmCollective {
    rank: u32,
    segments: Vec<Segment>,
    owner: Owner,
    round: u64,
    timeout: Duration,
    capacity: usize,
}

impl ShmCollective {
    /// Joins the gather of group `group` as member `rank` of `ranks`, for rows of at most
    /// `capacity` words; waits up to `timeout` for every member to join (and, later, for each
    /// round).
    pub fn join(
        group: &str,
        rank: u32,
        ranks: u32,
        capacity: usize,
        timeout: Duration,
    ) -> Result<Self, RuntimeError> {
        if rank >= ranks {
            return Err(RuntimeError::InvalidConfig(format!(
                "member {rank} of a gather of {ranks}"
            )));
        }
        let layout = SegmentLayout {
            // Two row buffers and a third region whose only use is its word: the checksum words
            // of the three regions are the round word and the two row lengths.
            masters: 3,
            slots: 0,
            state_bytes: (capacity.max(1) * 4) as u64,
            tile_bytes: 64,
        };
        let own = Segment::create(&segment_path(group, "gather", rank)?, layout)?;
        let owner = Owner::of(&own);
        let started = Instant::now();
        let mut segments = Vec::with_capacity(ranks as usize);
        let mut own = Some(own);
        for member in 0..ranks {
            if member == rank {
                segments.extend(own.take());
                continue;
            }
            let path = segment_path(group, "gather", member)?;
            loop {
                if let Some(segment) = Segment::open(&path, layout)? {
                    segments.push(segment);
                    break;
                }
                if started.elapsed() >= timeout {
                    return Err(RuntimeError::Timeout {
                        waited: timeout,
                        what: format!("member {member} to join the gather"),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(Self {
            rank,
            segments,
            owner,
            round: 0,
            timeout,
            capacity: capacity.max(1),
        })
    }

    /// Waits until `member` has arrived at this round.
    fn wait_for(&self, member: u32) -> Result<(), RuntimeError> {
        let segment = &self.segments[member as usize];
        wait_until(
            segment.checksum_word(ROUND),
            |round| round >= self.round,
            self.timeout,
            || (!segment.owner_alive()).then_some(RuntimeError::PeerLost { rank: member }),
            || format!("member {member}'s row of gather round {}", self.round),
        )
    }
}

impl Collective for ShmCollective {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn ranks(&self) -> u32 {
        self.segments.len() as u32
    }

    fn all_gather(&mut self, local: &[u32], gathered: &mut [u32]) -> Result<(), RuntimeError> {
        let members = self.segments.len();
        if local.len() > self.capacity || gathered.len() != local.len() * members {
            return Err(RuntimeError::Collective(format!(
                "a row of {} words (capacity {}) gathered into {} for {members} members",
                local.len(),
                self.capacity,
                gathered.len()
            )));
        }
        self.round += 1;
        let buffer = (self.round % 2) as u32;
        let own = &self.segments[self.rank as usize];
        let row = own.region_mut(&mut self.owner, Region::Master { index: buffer })?;
        row[..local.len() * 4].copy_from_slice(bytemuck::cast_slice(local));
        own.checksum_word(LENGTH + buffer)
            .store((self.round << 32) | local.len() as u64, Ordering::Relaxed);
        own.checksum_word(ROUND)
            .store(self.round, Ordering::Release);
        for member in 0..members as u32 {
            self.wait_for(member)?;
            let segment = &self.segments[member as usize];
            let tag = segment
                .checksum_word(LENGTH + buffer)
                .load(Ordering::Relaxed);
            let (round, length) = (tag >> 32, tag & 0xffff_ffff);
            if round != self.round & 0xffff_ffff {
                return Err(RuntimeError::Collective(format!(
                    "member {member} is at gather round {round}, this member at {}: a member \
                     gave up on an earlier round; rebuild the group",
                    self.round
                )));
            }
            if length != local.len() as u64 {
                return Err(RuntimeError::Collective(format!(
                    "member {member} gathered a row of {length} words, this member {}",
                    local.len()
                )));
            }
            let row = segment.region(Region::Master { index: buffer })?;
            let into = &mut gathered[member as usize * local.len()..][..local.len()];
            for (value, bytes) in into.iter_mut().zip(row.chunks_exact(4)) {
                *value = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        Ok(())
    }
}
