//! The machine the evaluation runs on: GPUs of a GB200 NVL72 rack in one NVLink domain.

use ultraep_topo::{Preset, Topology, TopologyBuilder};

use crate::BenchError;

/// `ranks` GPUs of a GB200 NVL72 in one NVLink domain, with its GPU and link figures: the rack the
/// published numbers were measured on (EP64 uses 64 of its 72 GPUs).
pub fn nvl72_gpus(ranks: u32) -> Result<Topology, BenchError> {
    let preset = Preset::Gb200Nvl72;
    Ok(
        TopologyBuilder::new(format!("{ranks} GPUs of a GB200 NVL72"))
            .accelerator(preset.accelerator())
            .domain("rack0", 0..ranks, preset.links())
            .build()?,
    )
}
