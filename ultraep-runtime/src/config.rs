//! How an engine is built: the machine, where experts live, the model, and the knobs of planning
//! and transfers.

use ultraep_plan::{ExpertLayout, PlanConfig, SplitMode};
use ultraep_topo::Topology;
use ultraep_xfer::TransferConfig;

use crate::{Mode, ModelShape, RuntimeError};

/// What an engine is built for.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The machine: one rank per GPU of the expert-parallel group.
    pub topology: Topology,
    /// Where every expert of a layer lives at start (the same for every layer; a layout change
    /// may move a layer's experts later, keeping every rank's number of masters).
    pub layout: ExpertLayout,
    /// The model's MoE shape; its `experts` must match the layout.
    pub model: ModelShape,
    /// Training or forward only.
    pub mode: Mode,
    /// Redundant slots per rank, shared by all layers.
    pub slots_per_rank: u16,
    /// Extra slots per rank, beyond `slots_per_rank` and never given to replicas, where a change
    /// of layout stages the masters moving to the rank until the switch (see
    /// [`crate::Engine::begin_layout_change`]). Zero, the default, allows no layout change.
    pub staging_slots: u16,
    /// Microbatches that may be between their first step and the end of their backward at once
    /// (pipeline parallelism keeps several in flight); at least 1.
    pub microbatches_in_flight: u16,
    /// The planner's configuration.
    pub plan: PlanConfig,
    /// Let the planner put replicas where slots already hold the expert's current weights, when
    /// that costs no balance (no copy is then needed).
    pub prefer_resident_replicas: bool,
    /// Hold a step's slots from its step until [`crate::Engine::release_forward`], so that no
    /// other step (the next layer's, planned and prefetched while this one computes) takes them;
    /// a step that would need a held slot is refused with [`crate::RuntimeError::SlotsBusy`].
    /// Off, a later step may take them, and the earlier step's replicas turn stale.
    pub hold_forward: bool,
    /// How weights are cut up and moved.
    pub transfer: TransferConfig,
    /// Worker threads of the CPU backend.
    pub workers: usize,
}

impl EngineConfig {
    /// A configuration for `model` on `topology` with experts placed by `layout`, with the
    /// defaults of [`EngineConfigBuilder`]; change any of them before [`EngineConfigBuilder::build`].
    ///
    /// ```
    /// use ultraep_runtime::{Dtype, EngineConfig, ExpertLayout, Mode, ModelShape, Preset};
    /// let model = ModelShape {
    ///     layers: 4, experts: 32, top_k: 4, hidden: 64, expert_width: 64, dtype: Dtype::F32,
    /// };
    /// let config = EngineConfig::builder(
    ///     Preset::HgxH100.topology(1)?,
    ///     ExpertLayout::contiguous(8, 4)?,
    ///     model,
    /// )
    /// .mode(Mode::Prefill)
    /// .slots_per_rank(1)
    /// .build()?;
    /// assert_eq!(config.microbatches_in_flight, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(
        topology: Topology,
        layout: ExpertLayout,
        model: ModelShape,
    ) -> EngineConfigBuilder {
        EngineConfigBuilder {
            config: Self {
                topology,
                layout,
                model,
                mode: Mode::Training,
                slots_per_rank: 2,
                staging_slots: 0,
                microbatches_in_flight: 1,
                plan: PlanConfig {
                    split: SplitMode::None,
                    ..PlanConfig::default()
                },
                prefer_resident_replicas: true,
                hold_forward: false,
                transfer: TransferConfig::default(),
                workers: 1,
            },
        }
    }

    /// Checks that the parts hold together: the topology, the layout and the model agree on
    /// ranks and experts, and the counts are usable.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let ranks = self.layout.num_ranks();
        let invalid = |message: String| Err(RuntimeError::InvalidConfig(message));
        if self.topology.rank_count() != ranks as usize {
            return invalid(format!(
                "the topology has {} ranks, the expert layout {ranks}",
                self.topology.rank_count()
            ));
        }
        if self.model.layers == 0 || self.model.top_k == 0 {
            return invalid("the model needs at least one MoE layer and top_k >= 1".into());
        }
        if self.model.experts != self.layout.num_experts() {
            return invalid(format!(
                "the model has {} experts a layer, the expert layout {}",
                self.model.experts,
                self.layout.num_experts()
            ));
        }
        if self
            .slots_per_rank
            .checked_add(self.staging_slots)
            .is_none()
        {
            return invalid("slots_per_rank plus staging_slots must fit in 16 bits".into());
        }
        if self.microbatches_in_flight == 0 {
            return invalid("microbatches_in_flight must be at least 1".into());
        }
        self.transfer.validate()?;
        Ok(())
    }
}

/// Builds an [`EngineConfig`] from the machine, the layout and the model, with defaults for the
/// rest: training, 2 slots per rank, no staging slots, 1 microbatch in flight, the planner's defaults but no split
/// (each rank splits only its own tokens, see `ultraep_plan::RankSplit`), replicas preferred
/// where they already are, forward slots not held, the default transfers, 1 worker thread.
#[derive(Debug, Clone)]
#[must_use]
pub struct EngineConfigBuilder {
    config: EngineConfig,
}

impl EngineConfigBuilder {
    /// Training (with gradients) or forward only.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Redundant slots per rank, shared by all layers.
    pub fn slots_per_rank(mut self, slots: u16) -> Self {
        self.config.slots_per_rank = slots;
        self
    }

    /// Extra slots per rank where a change of layout stages incoming masters.
    pub fn staging_slots(mut self, slots: u16) -> Self {
        self.config.staging_slots = slots;
        self
    }

    /// Microbatches between their first step and the end of their backward at once.
    pub fn microbatches_in_flight(mut self, microbatches: u16) -> Self {
        self.config.microbatches_in_flight = microbatches;
        self
    }

    /// The planner's configuration.
    pub fn plan(mut self, plan: PlanConfig) -> Self {
        self.config.plan = plan;
        self
    }

    /// Whether the planner prefers replicas whose weights are already in a slot.
    pub fn prefer_resident_replicas(mut self, prefer: bool) -> Self {
        self.config.prefer_resident_replicas = prefer;
        self
    }

    /// Whether a step's slots are held until its forward is released.
    pub fn hold_forward(mut self, hold: bool) -> Self {
        self.config.hold_forward = hold;
        self
    }

    /// How weights are cut up and moved.
    pub fn transfer(mut self, transfer: TransferConfig) -> Self {
        self.config.transfer = transfer;
        self
    }

    /// Worker threads that move this process's bytes.
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// The configuration, once [`EngineConfig::validate`] accepts it.
    pub fn build(self) -> Result<EngineConfig, RuntimeError> {
        self.config.validate()?;
        Ok(self.config)
    }
}
