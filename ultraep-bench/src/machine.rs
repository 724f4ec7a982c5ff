//! The machines the evaluation runs on: GPUs of GB200 NVL72 racks or HGX nodes, each rack or node
//! one NVLink domain.

use serde::Serialize;
use ultraep_topo::{Preset, Topology, TopologyBuilder};

use crate::BenchError;

/// `ranks` GPUs of a GB200 NVL72 in one NVLink domain, with its GPU and link figures: the rack the
/// published numbers were measured on (EP64 uses 64 of its 72 GPUs).
pub fn nvl72_gpus(ranks: u32) -> Result<Topology, BenchError> {
    Machine::Nvl72 { ranks }.topology()
}

/// The GPUs an expert-parallel group spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Machine {
    /// `ranks` GPUs of one GB200 NVL72 rack: one NVLink domain.
    Nvl72 {
        /// GPUs in the group.
        ranks: u32,
    },
    /// `per_rack` GPUs of each of `racks` GB200 NVL72 racks: one domain per rack, joined by the
    /// racks' scale-out network.
    Nvl72Racks {
        /// Racks.
        racks: u32,
        /// GPUs of each rack in the group.
        per_rack: u32,
    },
    /// `nodes` HGX H100 nodes of 8 GPUs: one domain per node.
    HgxH100 {
        /// Nodes.
        nodes: u32,
    },
}

impl Machine {
    /// Ranks of the group.
    pub fn ranks(self) -> u32 {
        match self {
            Machine::Nvl72 { ranks } => ranks,
            Machine::Nvl72Racks { racks, per_rack } => racks * per_rack,
            Machine::HgxH100 { nodes } => nodes * Preset::HgxH100.domain_size(),
        }
    }

    /// The topology: ranks numbered domain by domain, the preset's GPU and links.
    pub fn topology(self) -> Result<Topology, BenchError> {
        let (preset, domains, size) = match self {
            Machine::Nvl72 { ranks } => (Preset::Gb200Nvl72, 1, ranks),
            Machine::Nvl72Racks { racks, per_rack } => (Preset::Gb200Nvl72, racks, per_rack),
            Machine::HgxH100 { nodes } => (Preset::HgxH100, nodes, Preset::HgxH100.domain_size()),
        };
        let mut builder = TopologyBuilder::new(self.to_string()).accelerator(preset.accelerator());
        for domain in 0..domains {
            builder = builder.domain(
                format!("{}{domain}", preset.unit()),
                domain * size..(domain + 1) * size,
                preset.links(),
            );
        }
        Ok(builder.build()?)
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Machine::Nvl72 { ranks } => write!(f, "{ranks} GPUs of a GB200 NVL72"),
            Machine::Nvl72Racks { racks, per_rack } => {
                write!(f, "{per_rack} GPUs of each of {racks} GB200 NVL72 racks")
            }
            Machine::HgxH100 { nodes } => write!(f, "{nodes} HGX H100 nodes"),
        }
    }
}
