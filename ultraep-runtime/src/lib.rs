//! The runtime of ultraep: the per-layer, per-microbatch balancing engine that training and
//! prefill frameworks embed.
//!
//! [`Engine::step`] takes a layer's exact load, plans it, puts every replica's weights in a slot (slots are shared by all layers; a slot
//! that already holds the wanted expert's current weights is reused without a copy) and reports
//! what it did; [`Engine::reroute`] sends every token to its instance. In training,
//! [`Engine::restore`] brings a step's replica weights back before its expert backward and
//! [`Engine::reduce_gradients`] sums the replicas' gradients into the masters' in a fixed,
//! documented order. Several microbatches may be in flight, each with its own plans.
//!
//! One engine holds the memory of its own rank (or of a few ranks of one process) and derives
//! everything else (plans, slot tables, schedules) from the all-gathered load, as every other
//! rank does. It runs on a [`Backend`]: [`HostPlane`] keeps rank memory in segments that peers
//! map (threads of one process, or processes of one host over `/dev/shm`), and, with the `cuda`
//! feature (on by default), `CudaBackend` emulates every rank on one GPU and `CudaPeerPlane` gives
//! each process its GPU's memory and its peers' over CUDA IPC. Without that feature the crate
//! links no CUDA bindings (`default-features = false` for a CPU-only embedding).
//! The load's all-gather across processes goes through [`Collective`]. Every step can be written to a
//! JSON-lines trace ([`TraceWriter`]) that `ultraep simulate` replays.
//!
//! How a framework embeds it, with code: [`guide`] (`docs/embedding.md`).
//!
//! Who uses it: frameworks that embed ultraep, `ultraep-bench`, `ultraep-cli` and `ultraep-py`.
//! What it may depend on: `ultraep-topo`, `ultraep-plan`, `ultraep-xfer` and, with the `cuda` feature,
//! `ultraep-kernels`.

#[doc = include_str!("../../docs/embedding.md")]
pub mod guide {}

mod backend;
mod collective;
mod config;
#[cfg(feature = "cuda")]
mod cuda_backend;
#[cfg(feature = "cuda")]
mod cuda_peer;
mod engine;
mod error;
mod gradient_handoff;
mod host_driven;
mod model;
mod plane;
mod program;
mod report;
mod router_counts;
mod slot_readiness;
mod slots;
mod step_id;
mod trace;

pub use backend::{Backend, MemoryShape, Started};
pub use collective::{Collective, InProcessCollective, ShmCollective};
pub use config::{EngineConfig, EngineConfigBuilder};
#[cfg(feature = "cuda")]
pub use cuda_backend::CudaBackend;
#[cfg(feature = "cuda")]
pub use cuda_peer::CudaPeerPlane;
pub use engine::{Engine, LayoutMove, LayoutProgress, LayoutRoundInFlight, TransfersInFlight};
pub use error::RuntimeError;
pub use host_driven::{GradientSend, HostDriven};
pub use model::{Dtype, Mode, ModelShape};
pub use plane::{HostPlane, PlaneOptions};
pub use program::{PieceTransfer, TransferProgram};
pub use report::{RestoreReport, StepReport, Summary};
pub use router_counts::RouterOutput;
pub use step_id::StepId;
pub use trace::TraceWriter;

// What a framework needs from the crates below, so that depending on this crate suffices.
pub use ultraep_plan::{
    ExpertLayout, Instance, LoadHistory, LoadMatrix, Plan, PlanConfig, PlanMetrics, RankDomains,
    RankSplit, RehomeConfig, Rehoming, SplitEntry, SplitMode, rehome,
};
pub use ultraep_topo::{Preset, Topology};
pub use ultraep_xfer::{Region, SlotState, TransferConfig};
