//! A change of one layer's layout: masters moving home across ranks (and domains), as the slow
//! loop's re-placement (`ultraep_plan::rehome`) decides.
//!
//! Every rank calls the same three steps at the same points, between steps: it names the new
//! layout ([`Engine::begin_layout_change`]), moves the masters in rounds that fit a byte budget
//! ([`Engine::advance_layout_change`], or [`Engine::begin_layout_round`] and
//! [`Engine::finish_layout_round`] around the caller's compute; each round a distribution on the
//! data plane like a step's, verified by checksum, into the *staging slots* of the moved masters'
//! new ranks), and switches
//! ([`Engine::switch_layout`]) once every moved master is staged at its current weights. Until the
//! switch the old layout is in force, complete: staging slots are never given to replicas and a
//! master is only read, so a failed round, a stale staged copy (an optimiser step came between)
//! or a rank that stops half-way loses nothing. The switch copies each staged master into the
//! region its rank's departing master leaves, on the rank itself: no byte crosses ranks then,
//! so the switch cannot half-land on a peer. The next gathered step is the barrier that makes
//! every rank's switch complete before anyone reads a moved master.
//!
//! Which masters a round copies, what counts as landed and verified, and when the switch may
//! happen is `ultraep_xfer::LayoutTransition`'s to say, the same state machine the slow loop's
//! simulation runs, here with one chunk per master (a staging slot takes a master whole). The
//! engine adds what only it knows: a staged copy whose master changed since (an optimiser step)
//! is stale, and is sent again.

use ultraep_plan::{ExpertLayout, MasterMove, Planner};
use ultraep_xfer::{LayoutTransition, MigrationChunk};

use super::{Engine, digest};
use crate::slots::SlotContent;
use crate::{Backend, RuntimeError, StepId};

/// One master that a layout change moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayoutMove {
    /// The expert.
    pub expert: u32,
    /// Its home rank before the switch.
    pub from: u32,
    /// Its home rank after.
    pub to: u32,
    /// The staging slot of `to` that holds it until the switch (numbered after the replica
    /// slots: `slots_per_rank` is the first).
    pub staging_slot: u16,
    /// Its master index on `to` after the switch (the region the master leaving `to` frees).
    pub index: u32,
}

/// The masters of a layout round still moving: the handle [`Engine::begin_layout_round`]
/// returns, to give back to [`Engine::finish_layout_round`].
#[derive(Debug)]
#[must_use = "the round's masters count as staged only once it is finished"]
pub struct LayoutRoundInFlight {
    layer: u32,
}

/// Where a layout change stands after [`Engine::advance_layout_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutProgress {
    /// The layer whose layout changes.
    pub layer: u32,
    /// Masters this round copied.
    pub copied: u32,
    /// Bytes this round stored.
    pub bytes: u64,
    /// Masters staged at their current weights, after this round.
    pub staged: u32,
    /// Masters the change moves.
    pub moves: u32,
}

impl LayoutProgress {
    /// Whether every moved master is staged: [`Engine::switch_layout`] may run.
    pub fn ready(&self) -> bool {
        self.staged == self.moves
    }
}

/// A layout change between its beginning and its switch.
#[derive(Debug)]
pub(super) struct LayoutChange {
    layer: u32,
    /// The layer's planner in the new layout, built when the change began.
    planner: Planner,
    moves: Vec<LayoutMove>,
    /// The moves' progress: chunks handed out, landed, verified; the switch's gate.
    transition: LayoutTransition,
    /// The masters of the round in flight, one chunk each.
    round: Vec<MigrationChunk>,
    /// A switch began and failed part-way: some of the layer's old master regions may hold
    /// new masters already, so the layer waits for the switch to be called again.
    interrupted: bool,
}

/// Marks a layout change's beginning in the digest.
const LAYOUT_CHANGE: u64 = 0x6c61_796f_7574_3a3e;
/// Marks a layout switch in the digest.
const LAYOUT_SWITCH: u64 = 0x7377_6974_6368_2121;
/// Marks a layout round in the digest.
const LAYOUT_ROUND: u64 = 0x726f_756e_643a_3e3e;
/// Marks an abandoned layout change in the digest.
const LAYOUT_ABORT: u64 = 0x6162_6f72_7421_2121;

impl<B: Backend> Engine<B> {
    /// Begins moving `layer`'s masters to `target` (the slow loop's new layout, which every rank
    /// computes the same). `target` must keep every rank's number of masters (the re-placement
    /// swaps experts), and no rank may receive more masters than it has staging slots
    /// ([`crate::EngineConfig::staging_slots`]). Nothing moves yet; the layer keeps its layout
    /// until [`Engine::switch_layout`]. Returns the moves, by expert.
    pub fn begin_layout_change(
        &mut self,
        layer: u32,
        target: ExpertLayout,
    ) -> Result<&[LayoutMove], RuntimeError> {
        self.check_layer(layer)?;
        self.check_no_pending()?;
        if let Some(change) = &self.layout_change {
            return Err(RuntimeError::LayoutChange(format!(
                "the change of layer {}'s layout has not switched yet",
                change.layer
            )));
        }
        let current = self.planner_of(layer);
        if (target.num_ranks(), target.num_experts())
            != (current.layout().num_ranks(), current.layout().num_experts())
        {
            return Err(RuntimeError::LayoutChange(format!(
                "a layout of {} ranks x {} experts for an engine of {} x {}",
                target.num_ranks(),
                target.num_experts(),
                current.layout().num_ranks(),
                current.layout().num_experts()
            )));
        }
        let (_, before) = current.layout().home_indices();
        let (_, after) = target.home_indices();
        if let Some(rank) = (0..before.len()).find(|&rank| before[rank] != after[rank]) {
            return Err(RuntimeError::LayoutChange(format!(
                "rank {rank} would hold {} masters instead of {}: a layout change keeps every \
                 rank's number of masters",
                after[rank], before[rank]
            )));
        }
        let moves = self.moves_to(layer, &target)?;
        let master_moves: Vec<MasterMove> = moves
            .iter()
            .map(|moved| MasterMove {
                expert: moved.expert,
                from: moved.from,
                to: moved.to,
            })
            .collect();
        // One chunk per master: a staging slot receives a master whole.
        let state_bytes = self.state.bytes();
        let transition = LayoutTransition::new(
            current.layout().clone(),
            target.clone(),
            &master_moves,
            state_bytes,
            state_bytes,
        )?;
        let planner = Planner::new(
            target,
            current.domains().clone(),
            current.slots_per_rank(),
            *current.config(),
        )?;
        self.digest = digest::mix(
            self.digest,
            &[
                LAYOUT_CHANGE,
                u64::from(layer),
                layout_hash(planner.layout()),
            ],
        );
        let change = self.layout_change.insert(LayoutChange {
            layer,
            planner,
            moves,
            transition,
            round: Vec::new(),
            interrupted: false,
        });
        Ok(&change.moves)
    }

    /// Every master of `layer` that `target` moves, with its staging slot and its region after.
    fn moves_to(&self, layer: u32, target: &ExpertLayout) -> Result<Vec<LayoutMove>, RuntimeError> {
        let ranks = target.num_ranks() as usize;
        let first_staging = self.config.slots_per_rank;
        let mut arriving = vec![0u16; ranks];
        // The regions departing masters leave on every rank, by ascending expert: arriving
        // masters take them in the same order, so every rank assigns them alike.
        let mut freed: Vec<Vec<u32>> = vec![Vec::new(); ranks];
        for expert in 0..target.num_experts() {
            let (home, index) = self.masters.region(layer, expert);
            if target.home(expert) != home {
                freed[home as usize].push(index);
            }
        }
        let mut taken = vec![0usize; ranks];
        let mut moves = Vec::new();
        for expert in 0..target.num_experts() {
            let (from, _) = self.masters.region(layer, expert);
            let to = target.home(expert);
            if to == from {
                continue;
            }
            let count = &mut arriving[to as usize];
            if *count >= self.config.staging_slots {
                return Err(RuntimeError::LayoutChange(format!(
                    "rank {to} receives more masters than its {} staging slots",
                    self.config.staging_slots
                )));
            }
            let index = freed[to as usize][taken[to as usize]];
            taken[to as usize] += 1;
            moves.push(LayoutMove {
                expert,
                from,
                to,
                staging_slot: first_staging + *count,
                index,
            });
            *count += 1;
        }
        Ok(moves)
    }

    /// The layout change in progress: its layer and its moves.
    pub fn layout_change(&self) -> Option<(u32, &[LayoutMove])> {
        self.layout_change
            .as_ref()
            .map(|change| (change.layer, &change.moves[..]))
    }

    /// Copies the next moved masters (at least one, then as many as fit `budget` bytes) into
    /// their staging slots, on the data plane, verified like a step's replicas; masters staged
    /// earlier whose weights changed since (an optimiser step) are copied again. Every rank calls
    /// it at the same point with the same budget. On error the copies of this round stay not
    /// staged, and the layer keeps its layout. [`Engine::begin_layout_round`] and
    /// [`Engine::finish_layout_round`] in one call.
    pub fn advance_layout_change(&mut self, budget: u64) -> Result<LayoutProgress, RuntimeError> {
        match self.begin_layout_round(budget)? {
            Ok(progress) => Ok(progress),
            Err(in_flight) => self.finish_layout_round(in_flight),
        }
    }

    /// Starts a round of [`Engine::advance_layout_change`] on the data plane and returns: the
    /// progress when nothing had to move, else the handle of the round, which the caller gives
    /// to [`Engine::finish_layout_round`] after other work (a layer's expert compute, say). On
    /// the host data plane with more than one worker the copies run on the workers meanwhile, so
    /// a round within its budget never stalls a step; until it is finished the engine refuses
    /// every call that would change its state, as for a step's transfers.
    pub fn begin_layout_round(
        &mut self,
        budget: u64,
    ) -> Result<Result<LayoutProgress, LayoutRoundInFlight>, RuntimeError> {
        let layer = self.layer_to_carry_on()?;
        self.check_not_switching(layer)?;
        self.send_stale_again(layer)?;
        let mut change = self.layout_change.take().expect("checked above");
        change.transition.next_chunks(budget, &mut change.round);
        let added = self.add_round_fanouts(layer, &change);
        let copied = change.round.len() as u32;
        self.layout_change = Some(change);
        match added.and_then(|()| self.start_copy()) {
            Ok(None) => Ok(Ok(self.layout_progress(layer, 0, 0))),
            Ok(Some(_)) => {
                self.migrating = Some(copied);
                Ok(Err(LayoutRoundInFlight { layer }))
            }
            Err(error) => {
                self.end_round(false)?;
                Err(error)
            }
        }
    }

    /// Waits for the copies of `round` and records which moved masters are now staged. On error
    /// they stay not staged and the layer keeps its layout.
    pub fn finish_layout_round(
        &mut self,
        round: LayoutRoundInFlight,
    ) -> Result<LayoutProgress, RuntimeError> {
        let copied = self
            .migrating
            .take()
            .ok_or_else(|| RuntimeError::LayoutChange("no layout round is in flight".into()))?;
        let finished = self.finish_copy(round.layer);
        self.end_round(finished.is_ok())?;
        let bytes = finished?;
        let progress = self.layout_progress(round.layer, copied, bytes);
        // Ranks whose rounds ended differently would send different copies next: the digest
        // makes the next gathered step say so.
        self.digest = digest::mix(
            self.digest,
            &[
                LAYOUT_ROUND,
                u64::from(progress.copied),
                u64::from(progress.staged),
            ],
        );
        Ok(progress)
    }

    /// Gathers into the engine's fan-outs the copy of every master of `change`'s round, from its
    /// home into its staging slot.
    fn add_round_fanouts(&mut self, layer: u32, change: &LayoutChange) -> Result<(), RuntimeError> {
        self.scratch.fanouts.clear();
        for chunk in &change.round {
            let moved = change
                .moves
                .iter()
                .find(|moved| moved.expert == chunk.expert)
                .ok_or_else(|| {
                    RuntimeError::LayoutChange(format!(
                        "expert {} was handed out but does not move",
                        chunk.expert
                    ))
                })?;
            let (home, index) = self.masters.region(layer, chunk.expert);
            self.scratch
                .fanouts
                .add(chunk.expert, home, index, (moved.to, moved.staging_slot))?;
        }
        Ok(())
    }

    /// Records the round in flight in the transition: every master landed and verified (the
    /// data plane checked each copy's checksum), or, when the round failed, to be sent again.
    fn end_round(&mut self, landed: bool) -> Result<(), RuntimeError> {
        let Some(change) = self.layout_change.as_mut() else {
            return Ok(());
        };
        // Every master of the round is recorded, whatever fails: one the transition cannot
        // record as landed is sent again rather than left handed out.
        let mut refused = None;
        for chunk in change.round.drain(..) {
            let recorded = if landed {
                change
                    .transition
                    .landed(chunk)
                    .and_then(|()| change.transition.verify(chunk.expert, true))
            } else {
                change.transition.failed(chunk.expert)
            };
            if let Err(error) = recorded {
                let _ = change.transition.failed(chunk.expert);
                refused.get_or_insert(error);
            }
        }
        refused.map_or(Ok(()), |error| Err(error.into()))
    }

    /// Sends again every master the transition counts as verified whose staged copy is no longer
    /// at the master's current weights (an optimiser step came between).
    fn send_stale_again(&mut self, layer: u32) -> Result<(), RuntimeError> {
        let Some(mut change) = self.layout_change.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        for &moved in &change.moves {
            if change.transition.is_verified(moved.expert) && !self.staged(layer, moved) {
                result = change.transition.failed(moved.expert);
                if result.is_err() {
                    break;
                }
            }
        }
        self.layout_change = Some(change);
        Ok(result?)
    }

    /// Where the change of `layer` stands after a round that copied `copied` masters.
    fn layout_progress(&self, layer: u32, copied: u32, bytes: u64) -> LayoutProgress {
        let moves = self
            .layout_change
            .as_ref()
            .map_or(&[][..], |change| &change.moves[..]);
        LayoutProgress {
            layer,
            copied,
            bytes,
            staged: moves
                .iter()
                .filter(|&&moved| self.staged(layer, moved))
                .count() as u32,
            moves: moves.len() as u32,
        }
    }

    /// Abandons the layout change in progress before its switch: the layer keeps its layout, the
    /// staged copies are dropped, and another change may begin. Every rank calls it at the same
    /// point. Refused once a switch has failed part-way (some old regions hold new masters
    /// already): only [`Engine::switch_layout`] can finish that one.
    pub fn abort_layout_change(&mut self) -> Result<(), RuntimeError> {
        self.check_no_pending()?;
        let change = self
            .layout_change
            .as_ref()
            .ok_or_else(|| RuntimeError::LayoutChange("no layout change has begun".into()))?;
        self.check_not_switching(change.layer)?;
        let change = self.layout_change.take().expect("checked above");
        for moved in &change.moves {
            self.slots.set_content(moved.to, moved.staging_slot, None);
        }
        self.digest = digest::mix(self.digest, &[LAYOUT_ABORT, u64::from(change.layer)]);
        Ok(())
    }

    /// The layer whose switch failed part-way, if one did.
    pub(super) fn interrupted_layer(&self) -> Option<u32> {
        self.layout_change
            .as_ref()
            .filter(|change| change.interrupted)
            .map(|change| change.layer)
    }

    /// Refuses to plan, read, write or copy the masters of `layer` while its switch is half done
    /// (some of its old regions hold arriving masters already).
    pub(super) fn check_not_switching(&self, layer: u32) -> Result<(), RuntimeError> {
        match &self.layout_change {
            Some(change) if change.layer == layer && change.interrupted => {
                Err(RuntimeError::LayoutChange(format!(
                    "layer {layer}'s layout switch failed part-way; call switch_layout again"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The layer of the change in progress, when the engine may work on it: no step's weights
    /// are moving and every master written since is announced.
    fn layer_to_carry_on(&self) -> Result<u32, RuntimeError> {
        self.check_no_pending()?;
        if self.masters_dirty {
            return Err(RuntimeError::MastersChanged);
        }
        let change = self
            .layout_change
            .as_ref()
            .ok_or_else(|| RuntimeError::LayoutChange("no layout change has begun".into()))?;
        Ok(change.layer)
    }

    /// Whether `moved`'s staging slot holds its master's current weights.
    fn staged(&self, layer: u32, moved: LayoutMove) -> bool {
        let version = self.versions[(layer * self.config.model.experts + moved.expert) as usize];
        self.slots.content(moved.to, moved.staging_slot)
            == Some(SlotContent {
                layer,
                expert: moved.expert,
                version,
            })
    }

    /// Switches the layer of the change in progress to its new layout: every local rank copies
    /// its staged masters into the regions its departing masters leave, and from here on plans,
    /// transfers and master reads of the layer use the new homes. Refused (nothing changes) while
    /// a moved master is not staged at its current weights, or while a plan of the layer is still
    /// in its backward. Kept plans of the layer are dropped: they name the old homes. In
    /// training, call it after the optimiser step: a moved master's gradient region starts over
    /// on its new rank, written by the next backward.
    pub fn switch_layout(&mut self) -> Result<(), RuntimeError> {
        let layer = self.layer_to_carry_on()?;
        self.send_stale_again(layer)?;
        let change = self.layout_change.as_ref().expect("checked above");
        let unstaged = change
            .moves
            .iter()
            .filter(|&&moved| !self.staged(layer, moved))
            .count();
        if unstaged > 0 {
            return Err(RuntimeError::LayoutChange(format!(
                "{unstaged} of layer {layer}'s {} moved masters are not staged at their \
                 current weights",
                change.moves.len()
            )));
        }
        let layers = self.config.model.layers as usize;
        if let Some(open) = self
            .steps
            .iter()
            .skip(layer as usize)
            .step_by(layers)
            .flatten()
            .find(|entry| entry.open)
        {
            return Err(RuntimeError::LayoutChange(format!(
                "microbatch {}'s plan of layer {layer} has not finished its backward",
                open.microbatch
            )));
        }
        if let Some(change) = self.layout_change.as_mut() {
            // Every moved master is staged at its current weights: the transition is ready.
            change.transition.switch()?;
        }
        let change = self.layout_change.as_ref().expect("checked above");
        // The copies are local, between memory the engine owns. One that fails (a broken
        // device) leaves the change pending with every staged copy intact, so a second call
        // repeats them; the layer is not planned in between (`check_not_switching`).
        for moved in &change.moves {
            if self.local.contains(&moved.to)
                && let Err(error) =
                    self.weights
                        .install_staged(moved.to, moved.staging_slot, moved.index)
            {
                if let Some(change) = self.layout_change.as_mut() {
                    change.interrupted = true;
                }
                return Err(error);
            }
        }
        let change = self.layout_change.take().expect("checked above");
        for moved in &change.moves {
            self.masters
                .set(layer, moved.expert, (moved.to, moved.index));
            self.slots.set_content(moved.to, moved.staging_slot, None);
        }
        for entry in self.steps.iter_mut().skip(layer as usize).step_by(layers) {
            // A dropped plan's forward can no longer be released: free its slots now.
            if let Some(dropped) = entry.take() {
                self.slots.release(StepId::new(dropped.microbatch, layer));
            }
        }
        self.moved_layouts[layer as usize] = Some(change.planner);
        self.digest = digest::mix(self.digest, &[LAYOUT_SWITCH, u64::from(layer)]);
        Ok(())
    }
}

/// A hash of a layout's homes, for the digest.
fn layout_hash(layout: &ExpertLayout) -> u64 {
    let homes: Vec<u64> = layout.homes().iter().map(|&home| u64::from(home)).collect();
    digest::mix(0, &homes)
}
