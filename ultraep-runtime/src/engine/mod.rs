//! The engine: per layer and microbatch, plan the exact load, put every replica's weights in a
//! slot, and, in training, bring them back for the backward. Gradients are in `gradients.rs`; the
//! router's ids and the token reroute in `routing.rs`.

mod by_domain;
#[cfg(feature = "cuda")]
mod cuda;
mod digest;
mod forward;
mod gradients;
mod host_driven;
mod layout_change;
mod routing;

pub use forward::TransfersInFlight;
pub use layout_change::{LayoutMove, LayoutProgress, LayoutRoundInFlight};

use std::borrow::Cow;
use std::ops::Range;

use ultraep_plan::{ExpertLayout, LoadMatrix, Plan, Planner, RankDomains, Residency, SplitEntry};
use ultraep_xfer::{
    ExpertState, Region, ScheduleBuilder, TaskListBuilder, TileTaskList, TransferSchedule,
};

use crate::backend::{Backend, MemoryShape, Started};
use crate::plane::{HostPlane, PlaneOptions};
use crate::report::Summary;
use crate::slots::{Placement, SlotContent, SlotTable};
use crate::{EngineConfig, Mode, RuntimeError, StepId};

/// The plan of one (microbatch, layer) and what belongs to it.
#[derive(Debug)]
struct LayerStep {
    microbatch: u32,
    plan: Plan,
    /// The load it was planned for, `ranks x experts` row-major (planned by domain: only the
    /// local rank's row, the rest zero).
    loads: Vec<u32>,
    /// Planned by domain ([`Engine::step_by_domain`]): the local rank's part of the split, the
    /// only one it can compute without the whole matrix.
    own_split: Vec<SplitEntry>,
    by_domain: bool,
    /// The physical slot of every instance (`None` for masters).
    slots: Vec<Option<(u32, u16)>>,
    /// Training: its backward has not finished, so no other microbatch may replace it.
    open: bool,
    /// Its backward is in progress ([`Engine::restore`] ran): it holds its slots.
    holding: bool,
    /// The number of the restore that began its backward: every rank numbers restores alike,
    /// so replica gradients and their reduction agree on it without sending it.
    token: u64,
}

/// The balancing engine of one rank (or of a few ranks of one process), on a [`Backend`].
///
/// An engine holds the bytes of its *local* ranks only: their masters and their slots (and, in
/// training, the gradients of both). Everything else is metadata that every rank derives
/// identically from the all-gathered load: the plans, which slot of which rank holds which
/// expert at which weights version, the transfer schedule. So a process-per-GPU framework builds
/// one engine per process ([`Engine::shared_memory`] on one host), and in-process tools build
/// one per rank ([`Engine::group`]) or one that holds every rank ([`Engine::new`]).
///
/// Masters of every layer live on their home rank; the `slots_per_rank` redundant slots of every
/// rank are shared by all layers, so a slot costs one expert's weights (and, in training, one FP32
/// gradient), not one per layer. A slot that already holds the expert a plan wants, with its
/// current weights, is used without a copy. How a framework drives it: [`crate::guide`].
#[derive(Debug)]
pub struct Engine<B = HostPlane> {
    config: EngineConfig,
    /// The planner of every layer still in the configuration's layout.
    planner: Planner,
    /// The planner of every layer whose layout changed (`None`: the configuration's).
    moved_layouts: Vec<Option<Planner>>,
    /// The layout change in progress, from [`Engine::begin_layout_change`] to its switch.
    layout_change: Option<layout_change::LayoutChange>,
    /// A layout round's copies are moving: the masters it copies.
    migrating: Option<u32>,
    state: ExpertState,
    weights: B,
    /// Training: the gradient state, and master gradients (every layer's) with the gradient twin
    /// of every slot.
    gradients: Option<(ExpertState, B)>,
    masters: MasterRegions,
    /// The weights version of every (layer, expert), bumped by [`Engine::masters_updated`].
    versions: Vec<u64>,
    /// A master that some slot holds a copy of was written since the last
    /// [`Engine::masters_updated`].
    masters_dirty: bool,
    /// Restores so far (see [`LayerStep::token`]).
    restores: u64,
    /// A running digest of every plan, slot choice and weights version so far.
    digest: u64,
    /// The ranks whose memory this engine holds.
    local: Range<u32>,
    slots: SlotTable,
    /// Plans in flight: `microbatches_in_flight x layers`, microbatch-major.
    steps: Vec<Option<LayerStep>>,
    /// The step whose weights are moving, between `begin_step` and `finish_step`.
    pending: Option<forward::Pending>,
    /// How the copy in progress started.
    copy_started: Option<Result<Started, RuntimeError>>,
    /// The step being planned, before it is accepted into `steps`.
    candidate: Candidate,
    /// The last step's transfer schedule and its task list.
    schedule: TransferSchedule,
    tasks: TileTaskList,
    /// Buffers reused by every step, so a warm step does not allocate.
    scratch: Scratch,
    summary: Summary,
}

/// The step being planned: its plan, the load it was planned from (only the rank's own row for a
/// step planned by domain), the rank's part of the split where the plan has none, and whether it
/// was planned by domain. Accepted into the engine's steps by swapping, so it keeps its buffers.
#[derive(Debug, Default)]
struct Candidate {
    plan: Plan,
    loads: Vec<u32>,
    split: Vec<SplitEntry>,
    by_domain: bool,
}

/// The buffers every step reuses, so that a warm step allocates nothing: one per stage of the
/// step (planning by domain, the residency the planner prefers, the slot placement, the
/// fan-outs, the schedule and task-list builders, the reroute and the gathered rows).
#[derive(Debug)]
struct Scratch {
    by_domain: by_domain::DomainScratch,
    residency: Residency,
    placement: Placement,
    fanouts: ultraep_xfer::ReplicaSetBuilder,
    schedule_builder: ScheduleBuilder,
    task_builder: TaskListBuilder,
    reroute: routing::RerouteScratch,
    gather: digest::GatherScratch,
}

impl Engine {
    /// An engine for `config` that holds every rank, in this process's memory (`config.workers`
    /// threads move the bytes); every master and slot starts zeroed. For tests and single-host
    /// tools; a process-per-GPU framework builds one engine per rank.
    pub fn new(config: EngineConfig) -> Result<Self, RuntimeError> {
        let options = PlaneOptions {
            workers: config.workers,
            ..PlaneOptions::default()
        };
        Self::with_backend(config, |shape| HostPlane::in_process(shape, options))
    }

    /// One engine per rank of `config`'s group, each holding only its own rank's memory and
    /// reaching its peers' through anonymous shared segments: ranks that are threads of this
    /// process. Drive each from its own thread, as a process would drive its one engine.
    pub fn group(config: EngineConfig, options: PlaneOptions) -> Result<Vec<Self>, RuntimeError> {
        let ranks = config.layout.num_ranks();
        let mut weights: Vec<Option<HostPlane>> = Vec::new();
        let mut gradients: Vec<Option<HostPlane>> = Vec::new();
        (0..ranks)
            .map(|rank| {
                Self::for_ranks(config.clone(), rank..rank + 1, |shape| {
                    let planes = if shape.purpose == WEIGHTS {
                        &mut weights
                    } else {
                        &mut gradients
                    };
                    if planes.is_empty() {
                        let whole = MemoryShape {
                            local: 0..ranks,
                            ..shape.clone()
                        };
                        *planes = HostPlane::per_rank(&whole, options)?
                            .into_iter()
                            .map(Some)
                            .collect();
                    }
                    planes
                        .get_mut(rank as usize)
                        .and_then(Option::take)
                        .ok_or_else(|| RuntimeError::InvalidConfig("no plane for a rank".into()))
                })
            })
            .collect()
    }

    /// The engine of rank `rank` in the group of processes on this host named `group`: its
    /// memory is a named shared-memory segment that its peers map, and it maps theirs (waiting
    /// up to `options.timeout` for each to appear). Every process of the group calls this with
    /// the same configuration and group name, and a rebuilt group takes a new name.
    pub fn shared_memory(
        config: EngineConfig,
        group: &str,
        rank: u32,
        options: PlaneOptions,
    ) -> Result<Self, RuntimeError> {
        Self::for_ranks(config, rank..rank + 1, |shape| {
            HostPlane::shared_memory(group, shape, options)
        })
    }

    /// The bytes of master `expert` of `layer`, to write in place: a framework may keep its
    /// expert parameters here instead of copying them in with [`Engine::write_master`]. Like a
    /// write, it makes copies of the old weights stale until [`Engine::masters_updated`].
    pub fn master_mut(&mut self, layer: u32, expert: u32) -> Result<&mut [u8], RuntimeError> {
        self.check_layer(layer)?;
        self.check_no_pending()?;
        self.check_not_switching(layer)?;
        self.check_expert(expert)?;
        self.note_master_write(layer, expert);
        let (home, index) = self.masters.region(layer, expert);
        self.weights.master_mut(home, index)
    }

    /// Bytes of expert state this engine holds: its ranks' masters and slots, weights and (in
    /// training) gradients. It does not grow with the number of ranks in the group.
    pub fn owned_state_bytes(&self) -> u64 {
        self.weights.owned_state_bytes()
            + self
                .gradients
                .as_ref()
                .map_or(0, |(_, store)| store.owned_state_bytes())
    }
}

/// The purpose of the weights memory (it names shared-memory segments).
const WEIGHTS: &str = "weights";
/// The purpose of the gradient memory.
const GRADIENTS: &str = "gradients";

impl<B: Backend> Engine<B> {
    /// An engine for `config` that holds every rank, in backends that `make` builds for each
    /// memory shape; every master and slot starts zeroed.
    pub fn with_backend(
        config: EngineConfig,
        make: impl FnMut(&MemoryShape<'_>) -> Result<B, RuntimeError>,
    ) -> Result<Self, RuntimeError> {
        let ranks = config.layout.num_ranks();
        Self::for_ranks(config, 0..ranks, make)
    }

    /// An engine for `config` that holds the ranks `local` (one, in a process-per-GPU
    /// deployment), in backends that `make` builds for each memory shape.
    pub fn for_ranks(
        config: EngineConfig,
        local: Range<u32>,
        mut make: impl FnMut(&MemoryShape<'_>) -> Result<B, RuntimeError>,
    ) -> Result<Self, RuntimeError> {
        let ranks = config.layout.num_ranks();
        if local.is_empty() || local.end > ranks {
            return Err(RuntimeError::InvalidConfig(format!(
                "local ranks {local:?} of a group of {ranks}"
            )));
        }
        config.validate()?;
        let model = config.model;
        let domains = RankDomains::from_labels(
            config
                .topology
                .rank_domains()
                .iter()
                .map(|domain| domain.0)
                .collect(),
        )?;
        let planner = Planner::new(
            config.layout.clone(),
            domains,
            u32::from(config.slots_per_rank),
            config.plan,
        )?;
        let state = model.expert_state()?;
        let regions = MasterRegions::new(&config.layout, model.layers);
        let masters: Vec<u32> = regions
            .experts_on_rank
            .iter()
            .map(|&n| n * model.layers)
            .collect();
        let mut memory = |purpose: &'static str, bytes: u64, slots_per_rank: u16| {
            make(&MemoryShape {
                purpose,
                local: local.clone(),
                masters_per_rank: &masters,
                slots_per_rank,
                state_bytes: bytes,
                tile_bytes: config.transfer.tile_bytes,
                workers: config.workers,
            })
        };
        // Only weights are staged: a moved master's gradient is rebuilt by the next backward.
        let weights = memory(
            WEIGHTS,
            state.bytes(),
            config.slots_per_rank + config.staging_slots,
        )?;
        let gradients = match config.mode {
            Mode::Prefill => None,
            Mode::Training => {
                let gradient = model.gradient_state()?;
                let store = memory(GRADIENTS, gradient.bytes(), config.slots_per_rank)?;
                Some((gradient, store))
            }
        };
        let in_flight = usize::from(config.microbatches_in_flight) * model.layers as usize;
        Ok(Self {
            planner,
            moved_layouts: (0..model.layers).map(|_| None).collect(),
            layout_change: None,
            migrating: None,
            state,
            weights,
            gradients,
            masters: regions,
            versions: vec![0; (model.layers * model.experts) as usize],
            masters_dirty: false,
            restores: 0,
            digest: digest::SEED,
            local,
            slots: SlotTable::new(ranks, config.slots_per_rank, config.staging_slots),
            steps: (0..in_flight).map(|_| None).collect(),
            pending: None,
            copy_started: None,
            candidate: Candidate::default(),
            schedule: TransferSchedule::default(),
            tasks: TileTaskList::default(),
            scratch: Scratch {
                by_domain: by_domain::DomainScratch::default(),
                residency: Residency::new(ranks, u32::from(config.slots_per_rank)),
                placement: Placement::default(),
                fanouts: ultraep_xfer::ReplicaSetBuilder::default(),
                schedule_builder: ScheduleBuilder::default(),
                task_builder: TaskListBuilder::default(),
                reroute: routing::RerouteScratch::default(),
                gather: digest::GatherScratch::default(),
            },
            summary: Summary::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The backend that holds this engine's weights.
    pub fn backend(&self) -> &B {
        &self.weights
    }

    /// The ranks whose memory this engine holds.
    pub fn local_ranks(&self) -> Range<u32> {
        self.local.clone()
    }

    /// The running digest of this engine's plans, slot choices and weights versions: equal on
    /// every rank of a group that made the same calls on the same loads.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Says that the masters changed (after an optimiser step, or after writing any master
    /// that a slot may hold a copy of): every copy of old weights stops counting as current.
    /// Every rank of the group calls it at the same point; a rank that does not diverges, and
    /// the next gathered step says so.
    pub fn masters_updated(&mut self) -> Result<(), RuntimeError> {
        self.check_no_pending()?;
        // New versions would make the staged copies of a half-done switch look stale, and the
        // next round would copy them again from regions the switch has already overwritten.
        if let Some(layer) = self.interrupted_layer() {
            self.check_not_switching(layer)?;
        }
        for version in &mut self.versions {
            *version += 1;
        }
        self.masters_dirty = false;
        self.digest = digest::mix(self.digest, &[digest::MASTERS_UPDATED]);
        Ok(())
    }

    /// Remembers that a master some slot holds a copy of is being written.
    fn note_master_write(&mut self, layer: u32, expert: u32) {
        let version = self.versions[(layer * self.config.model.experts + expert) as usize];
        let current = SlotContent {
            layer,
            expert,
            version,
        };
        if self.slots.holds(current) {
            self.masters_dirty = true;
        }
    }

    /// The weight transfer schedule of the last step or restore that copied anything.
    pub fn last_schedule(&self) -> &TransferSchedule {
        &self.schedule
    }

    /// Figures summed over every successful step so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    fn check_layer(&self, layer: u32) -> Result<(), RuntimeError> {
        if layer >= self.config.model.layers {
            return Err(RuntimeError::UnknownLayer {
                layer,
                layers: self.config.model.layers,
            });
        }
        Ok(())
    }

    fn check_expert(&self, expert: u32) -> Result<(), RuntimeError> {
        if expert >= self.config.model.experts {
            return Err(RuntimeError::UnknownExpert {
                expert,
                experts: self.config.model.experts,
            });
        }
        Ok(())
    }

    /// Where `step`'s plan is kept.
    fn entry_index(&self, step: StepId) -> usize {
        let in_flight = u32::from(self.config.microbatches_in_flight);
        ((step.microbatch % in_flight) * self.config.model.layers + step.layer) as usize
    }

    fn entry(&self, step: StepId) -> Result<&LayerStep, RuntimeError> {
        self.check_layer(step.layer)?;
        entry_in(&self.steps, self.entry_index(step), step)
    }

    /// The plan of `step`, if it ran and no later microbatch's plan has replaced it.
    pub fn plan(&self, step: StepId) -> Option<&Plan> {
        self.entry(step).ok().map(|entry| &entry.plan)
    }

    /// The load `step` was planned for; `None` for a step planned by domain, which never saw the
    /// whole matrix.
    pub fn loads(&self, step: StepId) -> Option<LoadMatrix<'_>> {
        let entry = self.entry(step).ok().filter(|entry| !entry.by_domain)?;
        LoadMatrix::new(
            &entry.loads,
            self.config.layout.num_ranks() as usize,
            self.config.model.experts as usize,
        )
        .ok()
    }

    /// The (rank, slot) holding the weights of instance `instance` of `step`'s plan; `None` for
    /// a master (whose weights are its own) or an unknown instance.
    pub fn replica_slot(&self, step: StepId, instance: u32) -> Option<(u32, u16)> {
        self.entry(step)
            .ok()
            .and_then(|entry| entry.slots.get(instance as usize).copied().flatten())
    }

    /// Where `expert` of `layer` lives now: its home rank and its master's index there (the
    /// index [`crate::TransferProgram`] and [`Backend`] name masters by). Layers start in the
    /// configuration's layout; a switched layout change moves some of a layer's masters.
    pub fn master_home(&self, layer: u32, expert: u32) -> Result<(u32, u32), RuntimeError> {
        self.check_layer(layer)?;
        self.check_expert(expert)?;
        Ok(self.masters.region(layer, expert))
    }

    /// The layout of `layer` in force: the configuration's until a layout change of the layer
    /// switches.
    pub fn layout(&self, layer: u32) -> Result<&ExpertLayout, RuntimeError> {
        self.check_layer(layer)?;
        Ok(self.planner_of(layer).layout())
    }

    /// The planner of `layer`'s layout in force.
    fn planner_of(&self, layer: u32) -> &Planner {
        self.moved_layouts[layer as usize]
            .as_ref()
            .unwrap_or(&self.planner)
    }

    /// Sets the master weights of `expert` in `layer`, which a local rank must hold (at start,
    /// and after every optimiser step). If a slot holds a copy of the old weights, call
    /// [`Engine::masters_updated`] on every rank before the next step.
    pub fn write_master(
        &mut self,
        layer: u32,
        expert: u32,
        weights: &[u8],
    ) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        self.check_expert(expert)?;
        check_size("weights", weights.len(), self.state.bytes())?;
        // The data plane may be reading masters for a transfer still in flight.
        self.check_no_pending()?;
        self.check_not_switching(layer)?;
        let (home, index) = self.masters.region(layer, expert);
        self.weights.write_master(home, index, weights)?;
        self.note_master_write(layer, expert);
        Ok(())
    }

    /// The master weights of `expert` in `layer` (a local rank's), in place where the memory is
    /// the host's.
    pub fn read_master(&self, layer: u32, expert: u32) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.check_layer(layer)?;
        self.check_expert(expert)?;
        self.check_not_switching(layer)?;
        let (home, index) = self.masters.region(layer, expert);
        self.weights.read_master(home, index)
    }

    /// The weights in slot `slot` of local rank `rank`, if the slot holds a complete copy, in
    /// place where the memory is the host's.
    pub fn read_slot(&self, rank: u32, slot: u16) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.weights.read_slot(rank, slot)
    }

    /// The weights instance `instance` of `step`'s plan computes with: its master's for a
    /// master, its slot's for a replica. A replica whose slot no longer holds its current weights
    /// (a later step took the slot, or the master changed) is an error, never stale bytes. The
    /// instance's rank must be local; on host memory the bytes are borrowed in place.
    pub fn instance_weights(
        &self,
        step: StepId,
        instance: u32,
    ) -> Result<Cow<'_, [u8]>, RuntimeError> {
        let (rank, region) = self.instance_region(step, instance)?;
        match region {
            Region::Slot { slot } => self.read_slot(rank, slot),
            Region::Master { index } => self.weights.read_master(rank, index),
        }
    }

    /// Where instance `instance` of `step`'s plan keeps its weights: its master's region, or its
    /// replica's slot if that still holds its current weights.
    fn instance_region(&self, step: StepId, instance: u32) -> Result<(u32, Region), RuntimeError> {
        let entry = self.entry(step)?;
        let found = entry
            .plan
            .instances()
            .get(instance as usize)
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!("{step} has no instance {instance}"))
            })?;
        if self.masters_dirty {
            return Err(RuntimeError::MastersChanged);
        }
        match entry.slots[instance as usize] {
            Some((rank, slot)) => {
                let current = SlotContent {
                    layer: step.layer,
                    expert: found.expert,
                    version: self.versions
                        [(step.layer * self.config.model.experts + found.expert) as usize],
                };
                if self.slots.content(rank, slot) != Some(current) {
                    return Err(RuntimeError::StaleReplica { step, instance });
                }
                Ok((rank, Region::Slot { slot }))
            }
            None => {
                let (home, index) = self.masters.region(step.layer, found.expert);
                Ok((home, Region::Master { index }))
            }
        }
    }

    /// Makes this engine's share of the next weight transfer fail at its tile task `task`: a
    /// test hook, compiled only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub fn inject_transfer_failure(&mut self, task: usize) {
        self.weights.inject_failure_at(task);
    }
}

/// Which plan to place: the one just made, or one kept in the table of plans in flight.
#[derive(Debug, Clone, Copy)]
enum Planned {
    Candidate,
    Kept(usize),
}

/// The plan kept at `index` if it is `step`'s.
fn entry_in(
    steps: &[Option<LayerStep>],
    index: usize,
    step: StepId,
) -> Result<&LayerStep, RuntimeError> {
    steps[index]
        .as_ref()
        .filter(|entry| entry.microbatch == step.microbatch)
        .ok_or(RuntimeError::NoPlan { step })
}

/// Where every layer's master of every expert lives: its home rank, and its region there. At
/// start a rank's experts of layer 0 come first, then layer 1's, and so on; a layout change gives
/// a master that arrives the region of one that left, so every rank keeps its number of masters.
#[derive(Debug)]
struct MasterRegions {
    experts: u32,
    /// The (home rank, master index) of every (layer, expert), layer-major.
    regions: Vec<(u32, u32)>,
    /// Experts of one layer homed on each rank (every layer's layout keeps these counts).
    experts_on_rank: Vec<u32>,
}

impl MasterRegions {
    fn new(layout: &ExpertLayout, layers: u32) -> Self {
        let (local_index, experts_on_rank) = layout.home_indices();
        let regions = (0..layers)
            .flat_map(|layer| {
                let experts_on_rank = &experts_on_rank;
                layout
                    .homes()
                    .iter()
                    .zip(&local_index)
                    .map(move |(&home, &local)| {
                        (home, layer * experts_on_rank[home as usize] + local)
                    })
            })
            .collect();
        Self {
            experts: layout.num_experts(),
            regions,
            experts_on_rank,
        }
    }

    /// The home rank and master region of `expert` of `layer`.
    fn region(&self, layer: u32, expert: u32) -> (u32, u32) {
        self.regions[(layer * self.experts + expert) as usize]
    }

    /// Moves `expert` of `layer` to `region`.
    fn set(&mut self, layer: u32, expert: u32, region: (u32, u32)) {
        self.regions[(layer * self.experts + expert) as usize] = region;
    }
}

/// Refuses a weight or gradient buffer whose size is not one expert state.
fn check_size(what: &'static str, got: usize, expected: u64) -> Result<(), RuntimeError> {
    if got as u64 != expected {
        return Err(RuntimeError::WrongSize {
            what,
            got,
            expected,
        });
    }
    Ok(())
}
