//! A tiny MoE layer stack trained on in-process ranks, twice: balanced by the engine (replicas
//! in slots on other ranks, tokens rerouted to them, replica gradients reduced into the masters)
//! and unbalanced (every expert computes all its tokens on its home rank). Shared by the
//! `tiny_moe` example and the runtime's integration tests.
//!
//! Every expert is a SwiGLU-shaped block with a ReLU gate, `y = (relu(x G) * (x U)) D`, with real
//! matrix products (ndarray). Training uses sign SGD (a step of -1, 0 or +1 per weight, clamped
//! to [-2, 2]).
//!
//! With [`Values::Exact`] (the default) inputs, weights and loss gradients are small integers, so
//! every product and every sum of this model is exact in FP32: the balanced run sums a master's
//! gradient in another grouping (its own tokens, then each replica's in the engine's order) and
//! still matches the unbalanced run bit for bit. That equality holds only because the sums are
//! exact. With [`Values::Fractions`] (thirds: ordinary rounding floats) the balanced run is
//! bit-identical from run to run and between ranks on threads and on processes, and matches the
//! unbalanced run within a floating-point tolerance, not bit for bit.

use ndarray::{Array2, ArrayView2, Axis};
use ultraep_plan::{ExpertLayout, PlanConfig};
use ultraep_runtime::{
    Backend, Collective, Dtype, Engine, EngineConfig, InProcessCollective, Mode, ModelShape,
    PlaneOptions, RouterOutput, RuntimeError, StepId, StepReport,
};
use ultraep_topo::Preset;
use ultraep_xfer::TransferConfig;

/// The model and the run.
#[derive(Debug, Clone, Copy)]
pub struct TinyMoe {
    /// In-process ranks (one HGX node).
    pub ranks: u32,
    /// Experts per rank.
    pub experts_per_rank: u32,
    /// MoE layers.
    pub layers: u32,
    /// Experts per token.
    pub top_k: u32,
    /// Hidden size.
    pub hidden: usize,
    /// Expert width.
    pub width: usize,
    /// Tokens per rank and microbatch.
    pub tokens: usize,
    /// Microbatches per training step (all in flight before the first backward).
    pub microbatches: u32,
    /// Training steps.
    pub steps: u32,
    /// Whether the model's sums are exact.
    pub values: Values,
}

/// The numbers the model computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// Small integers: every FP32 product and sum of the model is exact.
    Exact,
    /// Small integers divided by 3: products and sums round, as with real weights.
    Fractions,
}

impl TinyMoe {
    /// 8 ranks, 2 experts each, 2 layers, top-2, 16 x 32 experts, 64 tokens per rank, 2
    /// microbatches a step, 3 steps.
    pub const DEFAULT: Self = Self {
        ranks: 8,
        experts_per_rank: 2,
        layers: 2,
        top_k: 2,
        hidden: 16,
        width: 32,
        tokens: 64,
        microbatches: 2,
        steps: 3,
        values: Values::Exact,
    };

    fn experts(&self) -> u32 {
        self.ranks * self.experts_per_rank
    }

    fn floats(&self) -> usize {
        3 * self.hidden * self.width
    }

    /// `integer` as the model's values have it.
    fn value(&self, integer: f32) -> f32 {
        match self.values {
            Values::Exact => integer,
            Values::Fractions => integer / 3.0,
        }
    }
}

/// What a run produced, to compare bit for bit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRecord {
    /// Every layer output: `[step][microbatch][layer]`, each `ranks * tokens x hidden`.
    pub outputs: Vec<Array2<f32>>,
    /// Every master's gradient at the end of every step: `[step][layer][expert]`, flattened.
    pub gradients: Vec<Vec<f32>>,
    /// The engine's reports (balanced run only).
    pub reports: Vec<StepReport>,
}

/// Deterministic small-integer numbers.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// An integer in `-span..=span`, as f32.
    fn small(&mut self, span: u64) -> f32 {
        (self.next() % (2 * span + 1)) as f32 - span as f32
    }
}

/// Expert weights `[gate (hidden x width) | up (hidden x width) | down (width x hidden)]`.
fn initial_weights(model: &TinyMoe, layer: u32, expert: u32) -> Vec<f32> {
    let mut numbers = Numbers(0x5eed ^ (((u64::from(layer) << 32) | u64::from(expert)) * 0x9e37));
    (0..model.floats())
        .map(|_| model.value(numbers.small(2)))
        .collect()
}

/// The router's top-k ids of every rank: most tokens want expert 0 or 1 (both on rank 0), so
/// without balancing rank 0 is far busier than the others.
fn router_ids(model: &TinyMoe, step: u32, microbatch: u32, layer: u32) -> Vec<Vec<u32>> {
    let experts = u64::from(model.experts());
    (0..model.ranks)
        .map(|rank| {
            let seed = (u64::from(step) * 131 + u64::from(microbatch) * 17 + u64::from(layer))
                * 8191
                + u64::from(rank)
                + 1;
            let mut numbers = Numbers(seed);
            let mut ids = Vec::with_capacity(model.tokens * model.top_k as usize);
            for _ in 0..model.tokens {
                let first = numbers.next() % 3; // 0, 1: hot experts; 2: any
                let first = if first < 2 {
                    first
                } else {
                    numbers.next() % experts
                };
                let mut second = numbers.next() % experts;
                if second == first {
                    second = (second + 1) % experts;
                }
                ids.extend([first as u32, second as u32]);
            }
            ids
        })
        .collect()
}

/// Every rank's input tokens, `ranks * tokens x hidden`, and the loss gradient of its output.
fn tokens(model: &TinyMoe, step: u32, microbatch: u32, layer: u32) -> (Array2<f32>, Array2<f32>) {
    let rows = model.ranks as usize * model.tokens;
    let mut numbers = Numbers(
        0xab ^ (((u64::from(step) << 40) | (u64::from(microbatch) << 20) | u64::from(layer)) + 7),
    );
    let inputs = Array2::from_shape_fn((rows, model.hidden), |_| model.value(numbers.small(2)));
    let targets = Array2::from_shape_fn((rows, model.hidden), |_| numbers.small(1));
    (inputs, targets)
}

/// One expert's computation on the tokens `x` (n x hidden) with weights `w`: the outputs, and the
/// weight gradient for output gradients `dy`.
fn expert(
    model: &TinyMoe,
    w: &[f32],
    x: ArrayView2<'_, f32>,
    dy: ArrayView2<'_, f32>,
) -> (Array2<f32>, Vec<f32>) {
    let (h, width) = (model.hidden, model.width);
    let gate = ArrayView2::from_shape((h, width), &w[..h * width]).expect("gate shape");
    let up = ArrayView2::from_shape((h, width), &w[h * width..2 * h * width]).expect("up shape");
    let down = ArrayView2::from_shape((width, h), &w[2 * h * width..]).expect("down shape");
    let a = x.dot(&gate);
    let b = x.dot(&up);
    let hidden = a.mapv(|v| v.max(0.0)) * &b;
    let y = hidden.dot(&down);
    // Backward of y = (relu(a) * b) D.
    let d_down = hidden.t().dot(&dy);
    let d_hidden = dy.dot(&down.t());
    let d_b = &d_hidden * &a.mapv(|v| v.max(0.0));
    let d_a = &d_hidden * &b * &a.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
    let d_gate = x.t().dot(&d_a);
    let d_up = x.t().dot(&d_b);
    let mut gradient = Vec::with_capacity(model.floats());
    gradient.extend(d_gate.iter());
    gradient.extend(d_up.iter());
    gradient.extend(d_down.iter());
    (y, gradient)
}

/// Rows of `matrix` at `rows`, as one matrix.
fn gather(matrix: &Array2<f32>, rows: &[usize]) -> Array2<f32> {
    matrix.select(Axis(0), rows)
}

fn sign_sgd(weights: &mut [f32], gradient: &[f32]) {
    for (w, g) in weights.iter_mut().zip(gradient) {
        let step = if *g > 0.0 {
            1.0
        } else if *g < 0.0 {
            -1.0
        } else {
            0.0
        };
        *w = (*w - step).clamp(-2.0, 2.0);
    }
}

fn add(into: &mut [f32], values: &[f32]) {
    for (a, b) in into.iter_mut().zip(values) {
        *a += b;
    }
}

/// Trains without balancing: every expert computes every token routed to it on its home rank.
pub fn train_unbalanced(model: &TinyMoe) -> RunRecord {
    let experts = model.experts();
    let mut weights: Vec<Vec<f32>> = (0..model.layers)
        .flat_map(|layer| (0..experts).map(move |e| (layer, e)))
        .map(|(layer, e)| initial_weights(model, layer, e))
        .collect();
    let mut record = RunRecord::default();
    for step in 0..model.steps {
        let mut gradients = vec![vec![0f32; model.floats()]; weights.len()];
        for microbatch in 0..model.microbatches {
            for layer in 0..model.layers {
                let ids = router_ids(model, step, microbatch, layer);
                let (x, dy) = tokens(model, step, microbatch, layer);
                let mut out = Array2::<f32>::zeros(x.dim());
                for expert_id in 0..experts {
                    // Token rows routed to this expert, rank-major, in token order.
                    let rows: Vec<usize> = ids
                        .iter()
                        .enumerate()
                        .flat_map(|(rank, ids)| {
                            ids.iter()
                                .enumerate()
                                .filter(move |&(_, &id)| id == expert_id)
                                .map(move |(at, _)| rank * model.tokens + at / model.top_k as usize)
                        })
                        .collect();
                    let w = &weights[(layer * experts + expert_id) as usize];
                    let (y, gradient) = expert(
                        model,
                        w,
                        gather(&x, &rows).view(),
                        gather(&dy, &rows).view(),
                    );
                    for (row, &at) in rows.iter().enumerate() {
                        let mut target = out.row_mut(at);
                        target += &y.row(row);
                    }
                    add(
                        &mut gradients[(layer * experts + expert_id) as usize],
                        &gradient,
                    );
                }
                record.outputs.push(out);
            }
        }
        for (w, g) in weights.iter_mut().zip(&gradients) {
            sign_sgd(w, g);
        }
        record.gradients.extend(gradients);
    }
    record
}

fn bytes_of(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

fn floats_of(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The engine configuration for `model`: HGX H100 nodes of 8 ranks, 2 slots per rank, every
/// microbatch of a step in flight at once.
/// HGX H100 nodes of 8 ranks, or for a group that fills no whole node (2 processes on one GPU,
/// say), one domain of `ranks` ranks with the same links.
fn topology(ranks: u32) -> Result<ultraep_topo::Topology, RuntimeError> {
    if ranks.is_multiple_of(8) {
        return Ok(Preset::HgxH100.topology(ranks / 8)?);
    }
    Ok(
        ultraep_topo::TopologyBuilder::new(format!("{ranks} HGX H100 ranks"))
            .accelerator(Preset::HgxH100.accelerator())
            .domain("node", 0..ranks, Preset::HgxH100.links())
            .build()?,
    )
}

pub fn engine_config(model: &TinyMoe) -> Result<EngineConfig, RuntimeError> {
    Ok(EngineConfig {
        topology: topology(model.ranks)?,
        layout: ExpertLayout::contiguous(model.ranks, model.experts_per_rank)?,
        model: ModelShape {
            layers: model.layers,
            experts: model.experts(),
            top_k: model.top_k,
            hidden: model.hidden as u64,
            expert_width: model.width as u64,
            dtype: Dtype::F32,
        },
        mode: Mode::Training,
        slots_per_rank: 2,
        staging_slots: 0,
        microbatches_in_flight: model.microbatches as u16,
        prefer_resident_replicas: true,
        hold_forward: false,
        plan: PlanConfig {
            min_replica_tokens: 8,
            ..PlanConfig::default()
        },
        transfer: TransferConfig {
            tile_bytes: 1024,
            chunk_bytes: 2048,
            ..TransferConfig::default()
        },
        workers: 2,
    })
}

/// Trains with one engine that holds every rank, in this process; see [`train_local`].
pub fn train_balanced(model: &TinyMoe) -> Result<RunRecord, RuntimeError> {
    let engine = Engine::new(engine_config(model)?)?;
    let mut alone = InProcessCollective::group(1).remove(0);
    train_local(model, engine, &mut alone)
}

/// Trains with one engine per rank, each on a thread of its own and holding only its rank's
/// memory, gathering the load through an in-process collective: the same code as one process
/// per rank, in one process. Returns every rank's record, by rank.
pub fn train_threads(model: &TinyMoe) -> Result<Vec<RunRecord>, RuntimeError> {
    let engines = Engine::group(engine_config(model)?, PlaneOptions::default())?;
    let members = InProcessCollective::group(model.ranks);
    std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .into_iter()
            .zip(members)
            .map(|(engine, mut member)| {
                scope.spawn(move || train_local(model, engine, &mut member))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(RuntimeError::Backend("a rank's thread panicked".into()))
                })
            })
            .collect()
    })
}

/// Sums the records of every rank (by rank) into the record of the whole group: outputs summed
/// rank after rank, master gradients in expert order.
pub fn merge(model: &TinyMoe, records: &[RunRecord]) -> RunRecord {
    let mut merged = RunRecord::default();
    let Some(first) = records.first() else {
        return merged;
    };
    for (at, output) in first.outputs.iter().enumerate() {
        let mut sum = output.clone();
        for record in &records[1..] {
            sum += &record.outputs[at];
        }
        merged.outputs.push(sum);
    }
    // Each record holds its ranks' experts, [step][layer][expert]; experts are contiguous by
    // rank, so the group's order is rank after rank within each (step, layer).
    let per_rank = model.experts_per_rank as usize;
    for at in 0..(model.steps * model.layers) as usize {
        for record in records {
            let experts = record.gradients.len() / (model.steps * model.layers) as usize;
            debug_assert!(experts.is_multiple_of(per_rank));
            merged
                .gradients
                .extend_from_slice(&record.gradients[at * experts..][..experts]);
        }
    }
    merged.reports = first.reports.clone();
    merged
}

/// Trains with `engine`, which holds some ranks of the group (one, in a process per rank; all,
/// for [`train_balanced`]): every microbatch's layers are planned from the load gathered through
/// `collective`, replicas filled and tokens rerouted in the forward; the backward restores
/// replicas, writes every local instance's gradient and reduces the replicas' into the masters'.
///
/// The record holds what the engine's ranks computed: outputs with the contributions of their
/// instances only, and the gradients of their masters. The dispatch all-to-all is left out: every
/// rank regenerates the synthetic tokens its instances receive.
pub fn train_local<B: Backend>(
    model: &TinyMoe,
    mut engine: Engine<B>,
    collective: &mut impl Collective,
) -> Result<RunRecord, RuntimeError> {
    let local = engine.local_ranks();
    let home = |e: u32| e / model.experts_per_rank;
    let experts: Vec<u32> = (0..model.experts())
        .filter(|&e| local.contains(&home(e)))
        .collect();
    for layer in 0..model.layers {
        for &e in &experts {
            engine.write_master(layer, e, &bytes_of(&initial_weights(model, layer, e)))?;
        }
    }
    let mut record = RunRecord::default();
    let zeros = vec![0f32; model.floats()];
    for step in 0..model.steps {
        for layer in 0..model.layers {
            for &e in &experts {
                engine.write_master_gradient(layer, e, &zeros)?;
            }
        }
        // Forward of every microbatch (all in flight), then their backward, layers in reverse.
        let mut saved = Vec::new();
        for microbatch in 0..model.microbatches {
            for layer in 0..model.layers {
                let id = StepId::new(microbatch, layer);
                let ids = router_ids(model, step, microbatch, layer);
                let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
                let mine = &rows[local.start as usize..local.end as usize];
                record.reports.push(engine.step_gathered(
                    id,
                    collective,
                    RouterOutput::Ids(mine),
                )?);
                let (x, dy) = tokens(model, step, microbatch, layer);
                let groups = instance_rows(&mut engine, model, id, &rows)?;
                let mut out = Array2::<f32>::zeros(x.dim());
                for (instance, rows) in groups.iter().enumerate() {
                    if !is_local(&engine, id, instance) {
                        continue;
                    }
                    let w = floats_of(&engine.instance_weights(id, instance as u32)?);
                    let (y, _) =
                        expert(model, &w, gather(&x, rows).view(), gather(&dy, rows).view());
                    for (row, &at) in rows.iter().enumerate() {
                        let mut target = out.row_mut(at);
                        target += &y.row(row);
                    }
                }
                record.outputs.push(out);
                saved.push((id, groups, x, dy));
            }
        }
        for (id, groups, x, dy) in saved.into_iter().rev() {
            engine.restore(id)?;
            for (instance, rows) in groups.iter().enumerate() {
                if !is_local(&engine, id, instance) {
                    continue;
                }
                let instance = instance as u32;
                let w = floats_of(&engine.instance_weights(id, instance)?);
                let (_, gradient) =
                    expert(model, &w, gather(&x, rows).view(), gather(&dy, rows).view());
                if engine.replica_slot(id, instance).is_some() {
                    engine.write_replica_gradient(id, instance, &gradient)?;
                } else {
                    let expert_id = engine
                        .plan(id)
                        .map_or(0, |p| p.instances()[instance as usize].expert);
                    let mut master = engine.read_master_gradient(id.layer, expert_id)?;
                    add(&mut master, &gradient);
                    engine.write_master_gradient(id.layer, expert_id, &master)?;
                }
            }
            engine.reduce_gradients(id)?;
        }
        // Record the gradients and take the optimiser step on the masters.
        for layer in 0..model.layers {
            for &e in &experts {
                let gradient = engine.read_master_gradient(layer, e)?;
                let mut weights = floats_of(&engine.read_master(layer, e)?);
                sign_sgd(&mut weights, &gradient);
                engine.write_master(layer, e, &bytes_of(&weights))?;
                record.gradients.push(gradient);
            }
        }
        engine.masters_updated()?;
    }
    Ok(record)
}

/// Whether instance `instance` of `id`'s plan computes on one of `engine`'s ranks.
fn is_local<B: Backend>(engine: &Engine<B>, id: StepId, instance: usize) -> bool {
    engine
        .plan(id)
        .and_then(|plan| plan.instances().get(instance))
        .is_some_and(|found| engine.local_ranks().contains(&found.rank))
}

/// The token rows (rank-major) every instance of `id`'s plan computes, from the reroute of every
/// rank's ids, in token order.
fn instance_rows<B: Backend>(
    engine: &mut Engine<B>,
    model: &TinyMoe,
    id: StepId,
    rows: &[&[u32]],
) -> Result<Vec<Vec<usize>>, RuntimeError> {
    let instances = engine.plan(id).map_or(0, |plan| plan.instances().len());
    let mut groups = vec![Vec::new(); instances];
    let mut routed = Vec::new();
    for (rank, ids) in rows.iter().enumerate() {
        engine.reroute(id, rank as u32, ids, &mut routed)?;
        for (at, &instance) in routed.iter().enumerate() {
            groups[instance as usize].push(rank * model.tokens + at / model.top_k as usize);
        }
    }
    Ok(groups)
}

/// The largest difference between two runs' outputs and gradients, relative to the largest
/// magnitude among them; infinite if their shapes differ.
pub fn relative_difference(a: &RunRecord, b: &RunRecord) -> f32 {
    let values = |record: &RunRecord| -> Vec<f32> {
        record
            .outputs
            .iter()
            .flat_map(|output| output.iter().copied())
            .chain(record.gradients.iter().flatten().copied())
            .collect()
    };
    let (x, y) = (values(a), values(b));
    if x.len() != y.len() || a.outputs.len() != b.outputs.len() {
        return f32::INFINITY;
    }
    let scale = x
        .iter()
        .chain(&y)
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    x.iter()
        .zip(&y)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
        / scale
}

/// Whether two runs' outputs and gradients are equal bit for bit.
pub fn bit_identical(a: &RunRecord, b: &RunRecord) -> bool {
    let same = |x: &[f32], y: &[f32]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
    };
    a.outputs.len() == b.outputs.len()
        && a.outputs.iter().zip(&b.outputs).all(|(x, y)| {
            x.dim() == y.dim() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        })
        && a.gradients.len() == b.gradients.len()
        && a.gradients
            .iter()
            .zip(&b.gradients)
            .all(|(x, y)| same(x, y))
}

/// A record's outputs and gradients as bytes (little-endian), for a process to hand its record
/// to the one that compares.
pub fn encode(record: &RunRecord) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut put = |value: u32| bytes.extend_from_slice(&value.to_le_bytes());
    put(record.outputs.len() as u32);
    for output in &record.outputs {
        put(output.nrows() as u32);
        put(output.ncols() as u32);
        for value in output {
            put(value.to_bits());
        }
    }
    put(record.gradients.len() as u32);
    for gradient in &record.gradients {
        put(gradient.len() as u32);
        for value in gradient {
            put(value.to_bits());
        }
    }
    bytes
}

/// The record [`encode`] wrote (without reports); `None` if the bytes are not one.
pub fn decode(bytes: &[u8]) -> Option<RunRecord> {
    let mut words = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut record = RunRecord::default();
    let floats = |count: usize, words: &mut dyn Iterator<Item = u32>| -> Option<Vec<f32>> {
        (0..count)
            .map(|_| words.next().map(f32::from_bits))
            .collect()
    };
    for _ in 0..words.next()? {
        let (rows, cols) = (words.next()? as usize, words.next()? as usize);
        let values = floats(rows.checked_mul(cols)?, &mut words)?;
        record
            .outputs
            .push(Array2::from_shape_vec((rows, cols), values).ok()?);
    }
    for _ in 0..words.next()? {
        let len = words.next()? as usize;
        record.gradients.push(floats(len, &mut words)?);
    }
    words.next().is_none().then_some(record)
}
