//! The engine: per layer and microbatch, plan the exact load, put every replica's weights in a
//! slot, and report what it did.

use std::time::{Duration, Instant};

use ultraep_plan::{
    Balancer, ExpertLayout, LoadMatrix, Plan, PlanConfig, PlanMetrics, Planner, RankDomains,
};
use ultraep_topo::Topology;
use ultraep_xfer::{
    CpuTransport, ExpertState, Fanout, ReplicaSet, TileTaskList, TransferConfig, TransferSchedule,
    Transport,
};

use crate::RuntimeError;

/// What an engine is built for.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The machine.
    pub topology: Topology,
    /// Where every expert of a layer lives (the same for every layer).
    pub layout: ExpertLayout,
    /// MoE layers of the model.
    pub layers: u32,
    /// Redundant slots per rank, shared by all layers.
    pub slots_per_rank: u16,
    /// Bytes of one expert's weights.
    pub state_bytes: u64,
    /// Bytes of one expert's FP32 weight gradient in training (a multiple of 4); 0 for inference,
    /// where there are no gradients to reduce.
    pub gradient_bytes: u64,
    /// The planner's configuration.
    pub plan: PlanConfig,
    /// How weights are cut up and moved.
    pub transfer: TransferConfig,
    /// Worker threads of the CPU transport.
    pub workers: usize,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The layer.
    pub layer: u32,
    /// The plan's figures (imbalance before and after, replicas, traffic).
    pub metrics: PlanMetrics,
    /// Replicas whose weights were copied into a slot.
    pub copies: u32,
    /// Replicas whose slot already held the expert's current weights: no copy needed.
    pub copies_skipped: u32,
    /// Bytes the transfers stored.
    pub bytes_moved: u64,
    /// Time spent planning.
    pub planning: Duration,
    /// Time spent moving weights.
    pub transfer: Duration,
}

fn bytes_of(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn floats_of(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A complete, verified copy held by a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotContent {
    layer: u32,
    expert: u32,
    version: u64,
}

/// The balancing engine on in-process CPU ranks.
///
/// Masters of every layer live on their home rank; the `slots_per_rank` redundant slots of every
/// rank are shared by all layers, so a slot costs one expert's weights, not one per layer. A slot
/// that already holds the expert a plan wants, with its current weights, is used without a copy.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    planner: Planner,
    /// The plan of every layer's last successful step, and the buffer the next one is made in.
    plans: Vec<Option<Plan>>,
    candidate: Plan,
    state: ExpertState,
    transport: CpuTransport,
    /// Master gradients (every layer's) and replica gradient slots, in training.
    gradients: Option<(ExpertState, CpuTransport)>,
    /// Experts homed on each rank, and every expert's index among them.
    experts_on_rank: Vec<u32>,
    local_index: Vec<u32>,
    /// What every slot (rank-major) holds.
    slots: Vec<Option<SlotContent>>,
    /// The weights version of every (layer, expert), bumped when the master changes.
    versions: Vec<u64>,
    /// The physical slot of every instance of every layer's plan (`None` for masters).
    placements: Vec<Vec<Option<(u32, u16)>>>,
}

/// What bringing a layer's replica weights back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    /// Replicas whose weights were copied again (a later layer had taken their slot).
    pub copies: u32,
    /// Replicas whose slot still held their weights.
    pub copies_skipped: u32,
    /// Bytes the transfers stored.
    pub bytes_moved: u64,
}

impl Engine {
    /// An engine for `config`; every master and slot starts zeroed.
    pub fn new(config: EngineConfig) -> Result<Self, RuntimeError> {
        let ranks = config.layout.num_ranks();
        if config.topology.rank_count() != ranks as usize {
            return Err(RuntimeError::InvalidConfig(format!(
                "the topology has {} ranks, the expert layout {ranks}",
                config.topology.rank_count()
            )));
        }
        if config.layers == 0 {
            return Err(RuntimeError::InvalidConfig(
                "the model has no MoE layer".into(),
            ));
        }
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
        let state = ExpertState::opaque(config.state_bytes)?;
        config.transfer.validate()?;
        let (local_index, experts_on_rank) = config.layout.home_indices();
        let masters: Vec<u32> = experts_on_rank.iter().map(|&n| n * config.layers).collect();
        let transport = CpuTransport::new(
            &masters,
            config.slots_per_rank,
            config.state_bytes,
            config.transfer.tile_bytes,
            config.workers,
        );
        let gradients = match config.gradient_bytes {
            0 => None,
            bytes if !bytes.is_multiple_of(4) => {
                return Err(RuntimeError::InvalidConfig(format!(
                    "a gradient of {bytes} bytes is not whole FP32 values"
                )));
            }
            bytes => Some((
                ExpertState::opaque(bytes)?,
                CpuTransport::new(
                    &masters,
                    config.slots_per_rank,
                    bytes,
                    config.transfer.tile_bytes,
                    config.workers,
                ),
            )),
        };
        let experts = config.layout.num_experts() as usize;
        Ok(Self {
            gradients,
            slots: vec![None; ranks as usize * usize::from(config.slots_per_rank)],
            versions: vec![0; config.layers as usize * experts],
            planner,
            plans: vec![None; config.layers as usize],
            candidate: Plan::default(),
            state,
            transport,
            experts_on_rank,
            local_index,
            placements: vec![Vec::new(); config.layers as usize],
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The plan of `layer`'s last successful step, if it has had one.
    pub fn plan(&self, layer: u32) -> Option<&Plan> {
        self.plans.get(layer as usize).and_then(Option::as_ref)
    }

    /// The (rank, slot) holding the weights of instance `instance` of `layer`'s plan; `None` for
    /// a master (whose weights are its own) or an unknown instance.
    pub fn replica_slot(&self, layer: u32, instance: u32) -> Option<(u32, u16)> {
        self.placements
            .get(layer as usize)
            .and_then(|placement| placement.get(instance as usize))
            .copied()
            .flatten()
    }

    fn check_layer(&self, layer: u32) -> Result<(), RuntimeError> {
        if layer >= self.config.layers {
            return Err(RuntimeError::UnknownLayer {
                layer,
                layers: self.config.layers,
            });
        }
        Ok(())
    }

    /// The master region index of `expert` of `layer` on its home rank.
    fn master_index(&self, layer: u32, expert: u32) -> u32 {
        let home = self.config.layout.home(expert);
        layer * self.experts_on_rank[home as usize] + self.local_index[expert as usize]
    }

    /// Sets the master weights of `expert` in `layer` (after an optimiser step, for instance);
    /// copies of the old weights in slots stop counting as current.
    pub fn write_master(
        &mut self,
        layer: u32,
        expert: u32,
        weights: &[u8],
    ) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        if expert >= self.config.layout.num_experts() {
            return Err(RuntimeError::InvalidConfig(format!(
                "expert {expert} does not exist"
            )));
        }
        if weights.len() as u64 != self.config.state_bytes {
            return Err(RuntimeError::WeightSize {
                got: weights.len(),
                expected: self.config.state_bytes,
            });
        }
        let home = self.config.layout.home(expert);
        self.transport
            .write_master(home, self.master_index(layer, expert), weights)?;
        self.versions[(layer * self.config.layout.num_experts() + expert) as usize] += 1;
        Ok(())
    }

    /// The weights in slot `slot` of `rank`, if the slot holds a complete copy.
    pub fn read_slot(&self, rank: u32, slot: u16) -> Result<Vec<u8>, RuntimeError> {
        Ok(self.transport.read_slot(rank, slot)?)
    }

    fn gradient_store(&mut self) -> Result<&mut (ExpertState, CpuTransport), RuntimeError> {
        self.gradients.as_mut().ok_or_else(|| {
            RuntimeError::InvalidConfig("the engine has no gradients (gradient_bytes is 0)".into())
        })
    }

    /// Sets the gradient of `expert`'s master in `layer` (what its own tokens contributed).
    pub fn write_master_gradient(
        &mut self,
        layer: u32,
        expert: u32,
        values: &[f32],
    ) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        let home = self.config.layout.home(expert);
        let index = self.master_index(layer, expert);
        let (_, store) = self.gradient_store()?;
        store.write_master(home, index, &bytes_of(values))?;
        Ok(())
    }

    /// The gradient of `expert`'s master in `layer`.
    pub fn read_master_gradient(
        &mut self,
        layer: u32,
        expert: u32,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.check_layer(layer)?;
        let home = self.config.layout.home(expert);
        let index = self.master_index(layer, expert);
        let (_, store) = self.gradient_store()?;
        Ok(floats_of(&store.read_master(home, index)?))
    }

    /// Sets the gradient a replica (instance `instance` of `layer`'s plan) computed for its
    /// tokens; it waits in the gradient slot twin of the replica's weight slot.
    pub fn write_replica_gradient(
        &mut self,
        layer: u32,
        instance: u32,
        values: &[f32],
    ) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        let expert = self
            .plan(layer)
            .and_then(|plan| plan.instances().get(instance as usize))
            .map(|instance| instance.expert)
            .ok_or(RuntimeError::NoPlan { layer })?;
        let (rank, slot) = self.replica_slot(layer, instance).ok_or_else(|| {
            RuntimeError::InvalidConfig(format!(
                "instance {instance} of layer {layer} is not a replica"
            ))
        })?;
        let (_, store) = self.gradient_store()?;
        store.write_slot(rank, slot, expert, &bytes_of(values))?;
        Ok(())
    }

    /// Sums every replica gradient of `layer` into its master's gradient, in the documented order
    /// of `ultraep_xfer::reduce_gradients`, and empties the replica gradient slots. Every replica
    /// must have written its gradient; otherwise nothing changes.
    pub fn reduce_gradients(&mut self, layer: u32) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        let plan = self.plan(layer).ok_or(RuntimeError::NoPlan { layer })?;
        let mut fanouts: Vec<Fanout> = Vec::new();
        for (index, instance) in plan.instances().iter().enumerate() {
            let Some(destination) = self.replica_slot(layer, index as u32) else {
                continue;
            };
            self.add_destination(&mut fanouts, layer, instance.expert, destination);
        }
        for fanout in &mut fanouts {
            fanout.destinations.sort_unstable();
        }
        let replicas = ReplicaSet { fanouts };
        let topology = self.config.topology.clone();
        let transfer = self.config.transfer;
        let (state, store) = self.gradient_store()?;
        let schedule = TransferSchedule::build(&replicas, state, &topology, transfer)?;
        store.reduce_gradients(&schedule)?;
        Ok(())
    }

    /// Makes the next weight transfer fail at tile task `task` (for failure tests).
    pub fn inject_transfer_failure(&mut self, task: usize) {
        self.transport.inject_failure_at(task);
    }

    /// Plans `loads` for `layer` and puts every replica's current weights in a slot. On error the
    /// engine keeps the layer's previous plan; slots a failed transfer was writing are marked empty.
    pub fn step(&mut self, layer: u32, loads: LoadMatrix<'_>) -> Result<StepReport, RuntimeError> {
        self.check_layer(layer)?;
        let started = Instant::now();
        self.planner.plan_into(loads, &mut self.candidate)?;
        let planning = started.elapsed();

        let started = Instant::now();
        let (replicas, skipped, placement) = self.place_replicas(layer, self.candidate.instances());
        let copies = replicas.replica_count() as u32;
        let bytes_moved = self.copy(layer, &replicas)?;
        let metrics = *self.candidate.metrics();
        let plan = self.plans[layer as usize].get_or_insert_with(Plan::default);
        std::mem::swap(plan, &mut self.candidate);
        self.placements[layer as usize] = placement;
        Ok(StepReport {
            layer,
            metrics,
            copies,
            copies_skipped: skipped,
            bytes_moved,
            planning,
            transfer: started.elapsed(),
        })
    }

    /// Brings `layer`'s replica weights back into slots before its expert backward: slots are
    /// shared by all layers, so later layers may have taken some. Replicas whose slot still holds
    /// their weights are left alone; the others are copied again (perhaps into another slot, which
    /// [`Engine::replica_slot`] then gives). If it fails, call it again before using the replicas.
    pub fn restore(&mut self, layer: u32) -> Result<RestoreReport, RuntimeError> {
        self.check_layer(layer)?;
        let plan = self.plans[layer as usize]
            .take()
            .ok_or(RuntimeError::NoPlan { layer })?;
        let (replicas, skipped, placement) = self.place_replicas(layer, plan.instances());
        let result = self.copy(layer, &replicas);
        self.plans[layer as usize] = Some(plan);
        let bytes_moved = result?;
        self.placements[layer as usize] = placement;
        Ok(RestoreReport {
            copies: replicas.replica_count() as u32,
            copies_skipped: skipped,
            bytes_moved,
        })
    }

    /// Copies `replicas` of `layer` into their slots and records what the slots now hold; returns
    /// the bytes stored. On failure the slots being written are marked empty.
    fn copy(&mut self, layer: u32, replicas: &ReplicaSet) -> Result<u64, RuntimeError> {
        if replicas.fanouts.is_empty() {
            return Ok(0);
        }
        let schedule = TransferSchedule::build(
            replicas,
            &self.state,
            &self.config.topology,
            self.config.transfer,
        )?;
        let tasks = TileTaskList::build(&schedule);
        let result = self.transport.distribute(&schedule, &tasks);
        let experts = self.config.layout.num_experts();
        for fanout in &replicas.fanouts {
            let content = result.as_ref().ok().map(|_| SlotContent {
                layer,
                expert: fanout.expert,
                version: self.versions[(layer * experts + fanout.expert) as usize],
            });
            for &(rank, slot) in &fanout.destinations {
                let index = self.slot_index(rank, slot);
                self.slots[index] = content;
            }
        }
        result?;
        Ok(tasks.bytes_stored())
    }

    fn slot_index(&self, rank: u32, slot: u16) -> usize {
        rank as usize * usize::from(self.config.slots_per_rank) + usize::from(slot)
    }

    /// Chooses the physical slot of every replica among `instances` (a plan of `layer`): a slot
    /// that already holds the expert's current weights if there is one (no copy), else a slot
    /// these replicas do not use, empty ones first, lowest number first. Returns the copies to
    /// make, how many replicas needed none, and the slot of every instance.
    fn place_replicas(
        &self,
        layer: u32,
        instances: &[ultraep_plan::Instance],
    ) -> (ReplicaSet, u32, Vec<Option<(u32, u16)>>) {
        let experts = self.config.layout.num_experts();
        let slots = usize::from(self.config.slots_per_rank);
        let mut placement = vec![None; instances.len()];
        let mut taken = vec![false; self.slots.len()];
        let mut skipped = 0;
        // First, replicas whose weights are already in a slot of their rank.
        for (index, instance) in instances.iter().enumerate() {
            if !instance.is_replica() {
                continue;
            }
            let wanted = SlotContent {
                layer,
                expert: instance.expert,
                version: self.versions[(layer * experts + instance.expert) as usize],
            };
            let base = instance.rank as usize * slots;
            if let Some(slot) =
                (0..slots).find(|&s| !taken[base + s] && self.slots[base + s] == Some(wanted))
            {
                taken[base + slot] = true;
                placement[index] = Some((instance.rank, slot as u16));
                skipped += 1;
            }
        }
        // Then the others, into free slots.
        let mut fanouts: Vec<Fanout> = Vec::new();
        for (index, instance) in instances.iter().enumerate() {
            if !instance.is_replica() || placement[index].is_some() {
                continue;
            }
            let base = instance.rank as usize * slots;
            let free = (0..slots)
                .filter(|&s| !taken[base + s])
                .min_by_key(|&s| (self.slots[base + s].is_some(), s))
                .unwrap_or(0);
            taken[base + free] = true;
            placement[index] = Some((instance.rank, free as u16));
            self.add_destination(
                &mut fanouts,
                layer,
                instance.expert,
                (instance.rank, free as u16),
            );
        }
        (ReplicaSet { fanouts }, skipped, placement)
    }

    /// Adds `destination` to the fan-out of `expert` of `layer` in `fanouts`, starting one for
    /// the expert if it has none yet.
    fn add_destination(
        &self,
        fanouts: &mut Vec<Fanout>,
        layer: u32,
        expert: u32,
        destination: (u32, u16),
    ) {
        match fanouts.iter_mut().find(|f| f.expert == expert) {
            Some(fanout) => fanout.destinations.push(destination),
            None => fanouts.push(Fanout {
                expert,
                master: self.config.layout.home(expert),
                master_index: self.master_index(layer, expert),
                destinations: vec![destination],
            }),
        }
    }
}
