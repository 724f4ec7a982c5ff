//! The runtime of ultraep: the per-layer, per-microbatch balancing engine that training and serving
//! frameworks embed.
//!
//! [`Engine::step`] takes a layer's exact load, plans it, puts every replica's weights in a slot
//! (slots are shared by all layers; a slot that already holds the wanted expert's current weights
//! is reused without a copy) and reports what it did. In training, [`Engine::restore`] brings a
//! layer's replica weights back before its expert backward and [`Engine::reduce_gradients`] sums
//! the replicas' gradients into the masters' in a fixed, documented order. Today the engine runs
//! on in-process CPU ranks with real bytes (`ultraep_xfer::CpuTransport`); the CUDA backend,
//! collectives, metrics traces and several microbatches in flight are still to come (issue 7).
//!
//! How a framework embeds it, with code: [`guide`] (`docs/embedding.md`).
//!
//! Who uses it: frameworks that embed ultraep, and `ultraep-bench`. What it may depend on:
//! `ultraep-topo`, `ultraep-plan`, `ultraep-xfer` and `ultraep-kernels`.

#[doc = include_str!("../../docs/embedding.md")]
pub mod guide {}

mod engine;
mod error;

pub use engine::{Engine, EngineConfig, RestoreReport, StepReport};
pub use error::RuntimeError;
