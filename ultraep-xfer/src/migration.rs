//! Moving masters to new homes in the background, and switching to the new layout only once every
//! byte has landed and been verified.
//!
//! A re-placement of the slow loop (`ultraep_plan::rehome`) names masters that move to another
//! domain. Their states (weights, and in training the FP32 master weights and optimizer state)
//! cross the scale-out network, which takes milliseconds; so a [`LayoutTransition`] hands the
//! bytes out in chunks, a per-step budget at a time, while the old layout stays in force and every
//! step runs as before. A moved state counts only once all its chunks have landed and its checksum
//! matches the source's; a mismatch or a failed chunk sends that state again. Only when every
//! moved state is verified may the transition switch, at a step boundary, and the new layout
//! takes over as a whole. Until then every expert's master is the old one, complete: a migration
//! never leaves an expert without a complete, verified master.
//!
//! Deterministic and without I/O: every rank holds the same transition and the data planes do
//! the copies.

use ultraep_plan::{ExpertLayout, MasterMove};

use crate::XferError;

/// One chunk of a moving state: bytes `offset..offset + bytes` of `expert`'s state, from its old
/// home rank to its new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigrationChunk {
    /// The expert whose state moves.
    pub expert: u32,
    /// Its home before (the source).
    pub from: u32,
    /// Its home after (the destination).
    pub to: u32,
    /// Where the chunk starts in the state.
    pub offset: u64,
    /// Its length.
    pub bytes: u64,
}

/// Where one moving state stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MoveProgress {
    movement: MasterMove,
    /// Bytes handed out for copying.
    sent: u64,
    /// Bytes landed.
    landed: u64,
    /// Whether the landed copy's checksum matched its source's.
    verified: bool,
}

/// The phase of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionPhase {
    /// Chunks are still being copied or verified; the old layout is in force.
    Copying,
    /// Every moved state is verified; the switch may happen at the next step boundary.
    Ready,
    /// The new layout is in force.
    Switched,
}

/// A change of layout carried out in the background: chunks handed out within a per-step
/// budget, landings and verifications recorded, and a switch that is refused until every moved
/// state is verified.
///
/// ```
/// use ultraep_plan::{ExpertLayout, MasterMove};
/// use ultraep_xfer::{LayoutTransition, TransitionPhase};
/// let old = ExpertLayout::contiguous(2, 1)?;
/// let new = ExpertLayout::from_homes(2, vec![1, 0])?;
/// let moves = [MasterMove { expert: 0, from: 0, to: 1 }, MasterMove { expert: 1, from: 1, to: 0 }];
/// let mut transition = LayoutTransition::new(old, new, &moves, 1000, 400)?;
/// let mut chunks = Vec::new();
/// while transition.phase() == TransitionPhase::Copying {
///     transition.next_chunks(800, &mut chunks); // one step's budget
///     for chunk in &chunks {
///         transition.landed(*chunk)?;
///     }
///     for expert in [0, 1] {
///         if transition.awaiting_verification(expert) {
///             transition.verify(expert, true)?; // the checksums matched
///         }
///     }
///     assert_eq!(transition.home(0), 0, "the old layout stays in force until the switch");
/// }
/// transition.switch()?;
/// assert_eq!(transition.home(0), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutTransition {
    old: ExpertLayout,
    new: ExpertLayout,
    moves: Vec<MoveProgress>,
    state_bytes: u64,
    chunk_bytes: u64,
    switched: bool,
}

impl LayoutTransition {
    /// A transition from `old` to `new` by `moves` (exactly the experts whose home differs),
    /// moving `state_bytes` per expert in chunks of at most `chunk_bytes`.
    pub fn new(
        old: ExpertLayout,
        new: ExpertLayout,
        moves: &[MasterMove],
        state_bytes: u64,
        chunk_bytes: u64,
    ) -> Result<Self, XferError> {
        if state_bytes == 0 {
            return Err(XferError::EmptyState);
        }
        if chunk_bytes == 0 {
            return Err(XferError::InvalidConfig {
                reason: "migration chunks must hold at least one byte",
            });
        }
        if old.num_experts() != new.num_experts() || old.num_ranks() != new.num_ranks() {
            return Err(XferError::LayoutMismatch {
                plan: new.num_experts(),
                layout: old.num_experts(),
            });
        }
        let changed = old
            .homes()
            .iter()
            .zip(new.homes())
            .filter(|(a, b)| a != b)
            .count();
        let mut seen = vec![false; old.num_experts() as usize];
        for movement in moves {
            let expert = movement.expert as usize;
            let consistent = expert < seen.len()
                && !seen[expert]
                && old.home(movement.expert) == movement.from
                && new.home(movement.expert) == movement.to
                && movement.from != movement.to;
            if !consistent {
                return Err(XferError::InvalidReplicaSet {
                    expert: movement.expert,
                    reason: "a move that is not from its old home to its new one, or named twice"
                        .into(),
                });
            }
            seen[expert] = true;
        }
        if changed != moves.len() {
            return Err(XferError::InvalidReplicaSet {
                expert: 0,
                reason: format!(
                    "{changed} experts change home but {} moves are given",
                    moves.len()
                ),
            });
        }
        Ok(Self {
            old,
            new,
            moves: moves
                .iter()
                .map(|&movement| MoveProgress {
                    movement,
                    sent: 0,
                    landed: 0,
                    verified: false,
                })
                .collect(),
            state_bytes,
            chunk_bytes,
            switched: false,
        })
    }

    /// Where the transition stands.
    pub fn phase(&self) -> TransitionPhase {
        if self.switched {
            TransitionPhase::Switched
        } else if self.moves.iter().all(|m| m.verified) {
            TransitionPhase::Ready
        } else {
            TransitionPhase::Copying
        }
    }

    /// The home of `expert` in the layout in force: the old one until the switch.
    pub fn home(&self, expert: u32) -> u32 {
        self.in_force().home(expert)
    }

    /// The layout in force.
    pub fn in_force(&self) -> &ExpertLayout {
        if self.switched { &self.new } else { &self.old }
    }

    /// The layout being moved to.
    pub fn target(&self) -> &ExpertLayout {
        &self.new
    }

    /// Bytes every moved state has: what the whole transition moves is this times the moves.
    pub fn bytes_to_move(&self) -> u64 {
        self.state_bytes * self.moves.len() as u64
    }

    /// Replaces `chunks` with the next chunks to copy, in move order, up to `budget` bytes in all
    /// (at least one chunk when any is left, so a budget below a chunk still progresses).
    pub fn next_chunks(&mut self, budget: u64, chunks: &mut Vec<MigrationChunk>) {
        chunks.clear();
        let mut spent = 0u64;
        for progress in &mut self.moves {
            while progress.sent < self.state_bytes {
                let bytes = self.chunk_bytes.min(self.state_bytes - progress.sent);
                if spent + bytes > budget && !chunks.is_empty() {
                    return;
                }
                chunks.push(MigrationChunk {
                    expert: progress.movement.expert,
                    from: progress.movement.from,
                    to: progress.movement.to,
                    offset: progress.sent,
                    bytes,
                });
                progress.sent += bytes;
                spent += bytes;
            }
        }
    }

    fn progress_mut(&mut self, expert: u32) -> Result<&mut MoveProgress, XferError> {
        self.moves
            .iter_mut()
            .find(|m| m.movement.expert == expert)
            .ok_or(XferError::InvalidReplicaSet {
                expert,
                reason: "the expert does not move in this transition".into(),
            })
    }

    /// Records that `chunk` landed at its destination.
    pub fn landed(&mut self, chunk: MigrationChunk) -> Result<(), XferError> {
        if self.switched {
            return Err(XferError::InvalidConfig {
                reason: "a chunk landed after the switch",
            });
        }
        let state_bytes = self.state_bytes;
        let progress = self.progress_mut(chunk.expert)?;
        if chunk.offset != progress.landed || chunk.offset + chunk.bytes > progress.sent {
            return Err(XferError::InvalidConfig {
                reason: "a chunk landed out of order or was never handed out",
            });
        }
        progress.landed += chunk.bytes;
        debug_assert!(progress.landed <= state_bytes);
        Ok(())
    }

    /// Whether `expert`'s moved state has landed whole and matched its source's checksum.
    pub fn is_verified(&self, expert: u32) -> bool {
        self.moves
            .iter()
            .any(|m| m.movement.expert == expert && m.verified)
    }

    /// Whether every chunk of `expert`'s state has landed and awaits its checksum.
    pub fn awaiting_verification(&self, expert: u32) -> bool {
        self.moves
            .iter()
            .any(|m| m.movement.expert == expert && m.landed == self.state_bytes && !m.verified)
    }

    /// Records the checksum comparison of `expert`'s landed state: a match verifies it; a
    /// mismatch sends the whole state again.
    pub fn verify(&mut self, expert: u32, matches: bool) -> Result<(), XferError> {
        let state_bytes = self.state_bytes;
        let progress = self.progress_mut(expert)?;
        if progress.landed != state_bytes {
            return Err(XferError::InvalidConfig {
                reason: "a state verified before all its chunks landed",
            });
        }
        if matches {
            progress.verified = true;
        } else {
            progress.sent = 0;
            progress.landed = 0;
        }
        Ok(())
    }

    /// Records that a chunk of `expert`'s state failed: the state is sent again from the start.
    pub fn failed(&mut self, expert: u32) -> Result<(), XferError> {
        let progress = self.progress_mut(expert)?;
        progress.sent = 0;
        progress.landed = 0;
        progress.verified = false;
        Ok(())
    }

    /// Switches to the new layout; refused (and nothing changes) unless every moved state is
    /// verified.
    pub fn switch(&mut self) -> Result<(), XferError> {
        match self.phase() {
            TransitionPhase::Ready => {
                self.switched = true;
                Ok(())
            }
            TransitionPhase::Switched => Ok(()),
            TransitionPhase::Copying => Err(XferError::InvalidConfig {
                reason: "the layout cannot switch before every moved state is verified",
            }),
        }
    }
}
