//! The rack-scale topology model of ultraep.
//!
//! A [`Topology`] says which ranks (GPUs) share a scale-up domain (an NVLink fabric: the 72 GPUs of a
//! GB200 NVL72 rack, the 8 of an HGX node), what every rank's links can carry, and which GPU sits at
//! every rank. The planner uses it to keep replicas inside their master's domain; the transfer
//! scheduler and the step simulator use its bandwidths and latencies to cost every byte moved.
//!
//! Get one from a [`Preset`] with published figures, build one with [`TopologyBuilder`], or read a
//! hand-written file with [`Topology::from_toml_str`] (format in the `file` module docs).
//!
//! ```
//! use ultraep_topo::{Preset, RankId};
//! let rack = Preset::Gb200Nvl72.topology(1)?;
//! let expert_bytes = 44_000_000; // one DeepSeek-V3 expert in FP8
//! let time = rack.transfer_time(RankId(0), RankId(1), expert_bytes)?;
//! assert_eq!(time.to_string(), "49.889 us");
//! # Ok::<(), ultraep_topo::TopoError>(())
//! ```
//!
//! Who uses it: `ultraep-xfer`, `ultraep-runtime`, `ultraep-bench`, `ultraep-cli` and
//! `ultraep-py`. The planner does not depend on it (it takes a plain domain-of-every-rank table,
//! which [`Topology::rank_domains`] provides).
//!
//! What it may depend on: nothing of ultraep; no CUDA, no I/O (it converts between text and
//! topologies; callers read and write the files). All figures are integers so that every rank
//! computes the same transfer times.

mod accelerator;
mod builder;
mod describe;
mod error;
mod file;
mod ids;
mod links;
mod presets;
mod rank_list;
mod topology;
mod units;

pub use accelerator::Accelerator;
pub use builder::TopologyBuilder;
pub use error::TopoError;
pub use ids::{DomainId, RankId};
pub use links::{LinkClass, LinkPath, RankLinks};
pub use presets::Preset;
pub use rank_list::MAX_RANKS;
pub use topology::{Domain, Topology};
pub use units::{Bandwidth, GIGABYTE, Nanos};
