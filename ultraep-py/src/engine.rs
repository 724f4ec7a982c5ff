//! `ultraep.Engine`: one rank's engine in host-driven mode. It takes the gathered load, plans it,
//! and returns this rank's reroute and the group's transfer program as numpy arrays; the caller
//! moves the bytes with its own communication library (`torch.distributed`), and hands the replica
//! gradients back for the sum in the documented order.

use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadwriteArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ultraep_runtime::{
    Dtype, Engine, EngineConfig, ExpertLayout, HostDriven, Mode, ModelShape, Preset, Region,
    RouterOutput, RuntimeError, StepId, StepReport,
};
use ultraep_topo::{Topology, TopologyBuilder};

use crate::errors::runtime_error;

fn value_error(message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(message.to_string())
}

/// A 1-D uint32 array, in place; other dtypes or non-contiguous arrays are refused.
fn words<'a>(array: &'a PyReadonlyArray1<'_, u32>, what: &str) -> PyResult<&'a [u32]> {
    array
        .as_slice()
        .map_err(|_| value_error(format!("{what} must be a contiguous 1-D uint32 array")))
}

/// A group of `labels.len()` ranks with the links of `preset`, where ranks with the same label
/// share a scale-up domain: a group of any size, such as four processes on one machine.
fn labelled_topology(preset: Preset, labels: &[u32]) -> PyResult<Topology> {
    let mut names: Vec<u32> = labels.to_vec();
    names.sort_unstable();
    names.dedup();
    let mut builder = TopologyBuilder::new(format!("{preset} ranks by domain label"))
        .accelerator(preset.accelerator());
    for name in names {
        let ranks = (0u32..).zip(labels).filter(|&(_, &label)| label == name);
        builder = builder.domain(
            format!("domain{name}"),
            ranks.map(|(rank, _)| rank),
            preset.links(),
        );
    }
    builder.build().map_err(value_error)
}

/// What one step planned and moved, as `Engine.step` returns it: the group's figures (every
/// rank has the same).
#[pyclass(module = "ultraep._ultraep", name = "StepFigures", frozen, eq, get_all)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepFigures {
    /// max/mean of the ranks' tokens with every token at its expert's master.
    initial_imbalance: f64,
    /// max/mean of the ranks' tokens under the plan.
    imbalance: f64,
    /// Replicas in the plan.
    replicas: u32,
    /// Replica slots filled for the step (a copy each; some may come from relays).
    copies: u32,
    /// Replicas whose slot already held the expert's current weights: no copy.
    copies_skipped: u32,
    /// Bytes of expert weights the group moves for the step.
    bytes_moved: u64,
}

#[pymethods]
impl StepFigures {
    fn __repr__(&self) -> String {
        format!(
            "StepFigures(initial_imbalance={}, imbalance={}, replicas={}, copies={}, \
             copies_skipped={}, bytes_moved={})",
            self.initial_imbalance,
            self.imbalance,
            self.replicas,
            self.copies,
            self.copies_skipped,
            self.bytes_moved
        )
    }
}

/// A step's figures, as `Engine.step` returns them.
fn figures_of(report: &StepReport) -> StepFigures {
    StepFigures {
        initial_imbalance: report.metrics.initial_imbalance(),
        imbalance: report.metrics.imbalance(),
        replicas: report.metrics.replicas,
        copies: report.copies,
        copies_skipped: report.copies_skipped,
        bytes_moved: report.bytes_moved,
    }
}

impl PyEngine {
    /// Runs `plan` (a step by domain) with the caller's collective; an exception the collective
    /// raised is raised again as it was (a `PeerLostError` stays one).
    fn by_domain<'py>(
        &mut self,
        collective: Bound<'py, PyAny>,
        plan: impl FnOnce(
            &mut Engine<HostDriven>,
            &mut crate::collective::PyCollective<'py>,
        ) -> Result<StepReport, RuntimeError>,
    ) -> PyResult<StepFigures> {
        let rank = self.engine.local_ranks().start;
        let ranks = self.engine.config().layout.num_ranks();
        let mut collective = crate::collective::PyCollective::new(collective, rank, ranks);
        let report = plan(&mut self.engine, &mut collective).map_err(|error| {
            collective
                .take_failure()
                .unwrap_or_else(|| runtime_error(error))
        })?;
        self.moved = report.copies > 0;
        Ok(figures_of(&report))
    }
}

/// One rank's engine of an expert-parallel group, in host-driven mode.
#[pyclass(module = "ultraep._ultraep", name = "Engine", unsendable)]
pub(crate) struct PyEngine {
    engine: Engine<HostDriven>,
    row: Vec<u32>,
    routed: Vec<u32>,
    /// Whether the last step or restore moved weights: the engine keeps its last non-empty
    /// program, and a caller must never replay one that belongs to an earlier step.
    moved: bool,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (rank, homes, *, layers, top_k, hidden, expert_width, preset = "hgx-h100", nodes = 1, domains = None, dtype = "bf16", training = true, slots_per_rank = 2, staging_slots = 0, microbatches_in_flight = 1, min_replica_tokens = 1024, hold_forward = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rank: u32,
        homes: Vec<u32>,
        layers: u32,
        top_k: u32,
        hidden: u64,
        expert_width: u64,
        preset: &str,
        nodes: u32,
        domains: Option<Vec<u32>>,
        dtype: &str,
        training: bool,
        slots_per_rank: u16,
        staging_slots: u16,
        microbatches_in_flight: u16,
        min_replica_tokens: u32,
        hold_forward: bool,
    ) -> PyResult<Self> {
        let preset: Preset = preset.parse().map_err(value_error)?;
        let topology = match domains {
            None => preset.topology(nodes).map_err(value_error)?,
            Some(labels) => labelled_topology(preset, &labels)?,
        };
        let ranks = topology.rank_count() as u32;
        let experts = homes.len() as u32;
        let layout = ExpertLayout::from_homes(ranks, homes).map_err(value_error)?;
        let dtype = match dtype {
            "f32" => Dtype::F32,
            "bf16" => Dtype::Bf16,
            "fp8" => Dtype::Fp8,
            other => {
                return Err(value_error(format!(
                    "dtype {other:?}: use f32, bf16 or fp8"
                )));
            }
        };
        let model = ModelShape {
            layers,
            experts,
            top_k,
            hidden,
            expert_width,
            dtype,
        };
        let mut builder = EngineConfig::builder(topology, layout, model)
            .mode(if training {
                Mode::Training
            } else {
                Mode::Prefill
            })
            .slots_per_rank(slots_per_rank)
            .staging_slots(staging_slots)
            .microbatches_in_flight(microbatches_in_flight)
            .hold_forward(hold_forward);
        let mut plan = ultraep_runtime::PlanConfig {
            split: ultraep_runtime::SplitMode::None,
            ..ultraep_runtime::PlanConfig::default()
        };
        plan.min_replica_tokens = min_replica_tokens;
        builder = builder.plan(plan);
        let config = builder.build().map_err(runtime_error)?;
        let engine = Engine::host_driven(config, rank).map_err(runtime_error)?;
        Ok(Self {
            engine,
            row: Vec::new(),
            routed: Vec::new(),
            moved: false,
        })
    }

    /// This rank's row of the gathered load: its counts of `ids` (its router's top-k expert ids,
    /// token-major) and its metadata digest. All-gather every rank's row (in rank order) and
    /// give the result to `step`.
    fn gather_row<'py>(
        &mut self,
        py: Python<'py>,
        ids: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let ids = words(&ids, "ids")?;
        self.engine
            .gather_row(RouterOutput::Ids(&[ids]), &mut self.row)
            .map_err(runtime_error)?;
        Ok(self.row.clone().into_pyarray(py))
    }

    /// Plans layer `layer` of microbatch `microbatch` from every rank's gathered row; returns
    /// the step's figures. Every rank's digest must agree, or every rank raises. The GIL is
    /// released while it plans.
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        microbatch: u32,
        layer: u32,
        gathered: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<StepFigures> {
        let gathered = words(&gathered, "gathered")?;
        let engine = &mut self.engine;
        let report = py
            .detach(|| engine.step_from_rows(StepId::new(microbatch, layer), gathered))
            .map_err(runtime_error)?;
        self.moved = report.copies > 0;
        Ok(figures_of(&report))
    }

    /// Plans layer `layer` of microbatch `microbatch` by domain, from this rank's router `ids`:
    /// the rank sums every rank's counts with `collective.all_reduce_sum` (or `all_gather`),
    /// plans its own domain, and all-gathers every rank's replicas and a few cells with
    /// `collective.all_gather`, never the whole load matrix; every rank gets the plan the whole
    /// matrix gives. Returns the step's figures, as `step` does; `reroute` then routes `ids`.
    fn step_by_domain<'py>(
        &mut self,
        microbatch: u32,
        layer: u32,
        ids: PyReadonlyArray1<'py, u32>,
        collective: Bound<'py, PyAny>,
    ) -> PyResult<StepFigures> {
        let ids = words(&ids, "ids")?;
        self.by_domain(collective, |engine, collective| {
            engine.step_by_domain(
                StepId::new(microbatch, layer),
                collective,
                RouterOutput::Ids(&[ids]),
            )
        })
    }

    /// Like `step_by_domain`, from this rank's tokens per expert (`counts`, one uint32 per
    /// expert, a histogram made on the device) instead of its router's ids; the same plan.
    /// `split` then gives this rank's row to route its tokens by.
    fn step_by_domain_from_counts<'py>(
        &mut self,
        microbatch: u32,
        layer: u32,
        counts: PyReadonlyArray1<'py, u32>,
        collective: Bound<'py, PyAny>,
    ) -> PyResult<StepFigures> {
        let counts = words(&counts, "counts")?;
        self.by_domain(collective, |engine, collective| {
            engine.step_by_domain(
                StepId::new(microbatch, layer),
                collective,
                RouterOutput::Counts(counts),
            )
        })
    }

    /// The metadata digest this rank appends to its gathered row (the last two words of
    /// `gather_row`, low word first): a caller that counts tokens on its device builds the row
    /// itself from its counts and these words.
    #[getter]
    fn digest(&self) -> u64 {
        self.engine.digest()
    }

    /// The instance of the step's plan each of this rank's `ids` goes to (an index into
    /// `instances`): every instance receives exactly its share.
    fn reroute<'py>(
        &mut self,
        py: Python<'py>,
        microbatch: u32,
        layer: u32,
        ids: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let ids = words(&ids, "ids")?;
        let rank = self.engine.local_ranks().start;
        self.engine
            .reroute(StepId::new(microbatch, layer), rank, ids, &mut self.routed)
            .map_err(runtime_error)?;
        Ok(self.routed.clone().into_pyarray(py))
    }

    /// This rank's part of the step's split: `(row, columns)`, each as rows `[source, expert,
    /// instance, tokens]` (`instance` an index into `instances`). The row is what this rank
    /// sends, ordered by expert then instance (the order `reroute` fills instances in, so its
    /// cumulative tokens are the reroute table); the columns are what this rank's instances
    /// receive, ordered by expert then source, or `None` for a step planned by domain, which
    /// kept only this rank's row.
    #[allow(clippy::type_complexity)]
    ///
    /// `rank` (default: this engine's) asks for another rank's part: any rank's of a step
    /// planned from the whole matrix, which every rank holds.
    #[pyo3(signature = (microbatch, layer, rank = None))]
    fn split<'py>(
        &mut self,
        py: Python<'py>,
        microbatch: u32,
        layer: u32,
        rank: Option<u32>,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, Option<Bound<'py, PyArray2<i64>>>)> {
        let rank = rank.unwrap_or(self.engine.local_ranks().start);
        let (mut row, mut columns) = (Vec::new(), Vec::new());
        let known = self
            .engine
            .rank_split(StepId::new(microbatch, layer), rank, &mut row, &mut columns)
            .map_err(runtime_error)?;
        let rows_of = |entries: &[ultraep_plan::SplitEntry]| -> Vec<i64> {
            entries
                .iter()
                .flat_map(|entry| {
                    [
                        i64::from(entry.source),
                        i64::from(entry.expert),
                        i64::from(entry.instance),
                        i64::from(entry.tokens),
                    ]
                })
                .collect()
        };
        let row = crate::table(py, rows_of(&row), 4)?;
        let columns = if known {
            Some(crate::table(py, rows_of(&columns), 4)?)
        } else {
            None
        };
        Ok((row, columns))
    }

    /// Ends a training step that will have no backward (its forward ran without autograd, or
    /// its graph was freed unused): its slots are released and a later microbatch may take its
    /// place. Refused for a step in its backward.
    fn drop_backward(&mut self, microbatch: u32, layer: u32) -> PyResult<()> {
        self.engine
            .drop_backward(StepId::new(microbatch, layer))
            .map_err(runtime_error)
    }

    /// Abandons a step's backward that `restore` began and `reduce_gradients` did not end (the
    /// framework's backward failed): its slots are released and a later microbatch may take its
    /// place. Refused for a step not in its backward.
    fn abandon_backward(&mut self, microbatch: u32, layer: u32) -> PyResult<()> {
        self.engine
            .abandon_backward(StepId::new(microbatch, layer))
            .map_err(runtime_error)
    }

    /// The step's instances as rows `[expert, rank, slot, quota]` (`slot` -1 for a master).
    fn instances<'py>(
        &self,
        py: Python<'py>,
        microbatch: u32,
        layer: u32,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let step = StepId::new(microbatch, layer);
        let plan = self
            .engine
            .plan(step)
            .ok_or_else(|| runtime_error(RuntimeError::NoPlan { step }))?;
        let mut rows = Vec::with_capacity(plan.instances().len() * 4);
        for (index, instance) in plan.instances().iter().enumerate() {
            let slot = self
                .engine
                .replica_slot(step, index as u32)
                .map_or(-1, |(_, slot)| i64::from(slot));
            rows.extend([
                i64::from(instance.expert),
                i64::from(instance.rank),
                slot,
                i64::from(instance.quota),
            ]);
        }
        crate::table(py, rows, 4)
    }

    /// The messages of the last step (or restore), for the whole group (none if it moved nothing), as
    /// rows `[tag, expert, from_rank, from_slot, to_rank, to_slot, offset, bytes, after]`:
    /// `from_slot` is -1 when the sender reads the expert's master, `after` -1 when the message
    /// waits for nothing (else the tag a relay must have received first). This rank sends the
    /// rows with its `from_rank` and receives those with its `to_rank`.
    fn transfer_program<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let program = self.engine.transfer_program();
        if !self.moved {
            return crate::table(py, Vec::new(), 9);
        }
        let mut rows = Vec::with_capacity(program.transfers().len() * 9);
        for message in program.transfers() {
            let from_slot = match message.from {
                Region::Slot { slot } => i64::from(slot),
                Region::Master { .. } => -1,
            };
            rows.extend([
                i64::from(message.tag),
                i64::from(message.expert),
                i64::from(message.from_rank),
                from_slot,
                i64::from(message.to_rank),
                i64::from(message.to_slot),
                message.offset as i64,
                message.bytes as i64,
                message.after.map_or(-1, i64::from),
            ]);
        }
        crate::table(py, rows, 9)
    }

    /// Brings the step's replicas back before its expert backward (run `transfer_program`
    /// again); returns the copies needed.
    fn restore(&mut self, microbatch: u32, layer: u32) -> PyResult<u32> {
        let copies = self
            .engine
            .restore(StepId::new(microbatch, layer))
            .map_err(runtime_error)?
            .copies;
        self.moved = copies > 0;
        Ok(copies)
    }

    /// Ends the step's backward: afterwards `gradient_sends` names the replica gradients to send
    /// to their masters' ranks, which sum them with `sum_replica_gradients`.
    fn reduce_gradients(&mut self, microbatch: u32, layer: u32) -> PyResult<()> {
        self.engine
            .reduce_gradients(StepId::new(microbatch, layer))
            .map_err(runtime_error)
    }

    /// Rows `[expert, from_rank, from_slot, to_rank]` of the last reduction.
    fn gradient_sends<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let rows: Vec<i64> = self
            .engine
            .gradient_sends()
            .flat_map(|send| {
                [
                    i64::from(send.expert),
                    i64::from(send.from_rank),
                    i64::from(send.from_slot),
                    i64::from(send.to_rank),
                ]
            })
            .collect();
        crate::table(py, rows, 4)
    }

    /// Adds the replica gradients of `expert` (`replicas[rank]`, float32, as received from each
    /// replica's rank) into `master` (its master's float32 gradient, in place) in the
    /// documented order.
    fn sum_replica_gradients(
        &mut self,
        expert: u32,
        mut master: PyReadwriteArray1<'_, f32>,
        replicas: std::collections::HashMap<u32, PyReadonlyArray1<'_, f32>>,
    ) -> PyResult<()> {
        let master = master
            .as_slice_mut()
            .map_err(|_| value_error("master must be a contiguous float32 array"))?;
        let mut slices = std::collections::HashMap::new();
        for (rank, array) in &replicas {
            let values = array
                .as_slice()
                .map_err(|_| value_error("replica gradients must be contiguous float32 arrays"))?;
            slices.insert(*rank, values);
        }
        let empty: &[f32] = &[];
        self.engine
            .sum_replica_gradients(expert, master, |rank| {
                slices.get(&rank).copied().unwrap_or(empty)
            })
            .map_err(runtime_error)
    }

    /// Says that the masters changed (after an optimiser step); every rank calls it.
    fn masters_updated(&mut self) -> PyResult<()> {
        self.engine.masters_updated().map_err(runtime_error)
    }

    /// Begins moving `layer`'s masters to `homes` (one rank per expert, keeping every rank's
    /// number of masters); returns the moves as rows `[expert, from_rank, to_rank, staging_slot,
    /// index]`, `index` being the master's index on `to_rank` after the switch. Every rank calls
    /// it with the same homes.
    fn begin_layout_change<'py>(
        &mut self,
        py: Python<'py>,
        layer: u32,
        homes: Vec<u32>,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let ranks = self.engine.config().layout.num_ranks();
        let layout = ExpertLayout::from_homes(ranks, homes).map_err(value_error)?;
        let moves = self
            .engine
            .begin_layout_change(layer, layout)
            .map_err(runtime_error)?;
        let rows = moves
            .iter()
            .flat_map(|moved| {
                [
                    i64::from(moved.expert),
                    i64::from(moved.from),
                    i64::from(moved.to),
                    i64::from(moved.staging_slot),
                    i64::from(moved.index),
                ]
            })
            .collect();
        crate::table(py, rows, 5)
    }

    /// Stages the next moved masters (at least one, then as many as fit `budget` bytes):
    /// `transfer_program` then holds the messages that copy them from their masters into the
    /// staging slots of their new ranks. Returns `(copied, staged, moves)`.
    fn advance_layout_change(&mut self, budget: u64) -> PyResult<(u32, u32, u32)> {
        let progress = self
            .engine
            .advance_layout_change(budget)
            .map_err(runtime_error)?;
        self.moved = progress.copied > 0;
        Ok((progress.copied, progress.staged, progress.moves))
    }

    /// Switches the layer of the layout change to its new homes, once every moved master is
    /// staged; the caller installs each staged master at its `index` on its new rank.
    fn switch_layout(&mut self) -> PyResult<()> {
        self.engine.switch_layout().map_err(runtime_error)
    }

    /// Abandons the layout change in progress before its switch; the layer keeps its layout.
    fn abort_layout_change(&mut self) -> PyResult<()> {
        self.engine.abort_layout_change().map_err(runtime_error)
    }

    /// The home rank and master index of `expert` in `layer`, in the layout in force.
    fn master_home(&self, layer: u32, expert: u32) -> PyResult<(u32, u32)> {
        self.engine
            .master_home(layer, expert)
            .map_err(runtime_error)
    }

    /// The home rank of every expert of `layer`, in the layout in force.
    fn homes<'py>(&self, py: Python<'py>, layer: u32) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let layout = self.engine.layout(layer).map_err(runtime_error)?;
        Ok(layout.homes().to_vec().into_pyarray(py))
    }

    /// This engine's rank.
    #[getter]
    fn rank(&self) -> u32 {
        self.engine.local_ranks().start
    }

    /// Words of this rank's gathered row.
    #[getter]
    fn row_words(&self) -> usize {
        self.engine.gather_row_len()
    }

    /// Bytes of one expert state (the unit `transfer_program`'s offsets count in).
    #[getter]
    fn state_bytes(&self) -> PyResult<u64> {
        Ok(self
            .engine
            .config()
            .model
            .expert_state()
            .map_err(value_error)?
            .bytes())
    }
}
