//! Topologies of machines people run MoE models on, with the public figures they come from.
//!
//! Bandwidths are NVIDIA's published per-GPU figures. NVLink figures are quoted for both directions
//! together, so each direction gets half. Latencies are not published; ours are assumptions of the
//! right order (a GPU-initiated put through one NVSwitch hop, a GPUDirect RDMA write through one
//! InfiniBand switch) and are marked as such.

use std::fmt;
use std::str::FromStr;

use crate::{Accelerator, Bandwidth, Nanos, RankLinks, TopoError, Topology, TopologyBuilder};

/// NVLink 4 (Hopper): 900 GB/s per GPU, both directions together (NVIDIA H100/H200 datasheets).
const NVLINK4_PER_DIRECTION: Bandwidth = gigabytes(450);
/// NVLink 5 (Blackwell): 1.8 TB/s per GPU, both directions together (NVIDIA GB200 NVL72 and HGX
/// B200 pages; 130 TB/s for 72 GPUs in the NVL72 rack).
const NVLINK5_PER_DIRECTION: Bandwidth = gigabytes(900);
/// ConnectX-7, 400 Gb/s per GPU (DGX H100/H200/B200 and GB200 compute trays: one NIC per GPU).
const CONNECTX7: Bandwidth = gigabytes(50);
/// ConnectX-8 SuperNIC, 800 Gb/s per GPU (GB300 NVL72).
const CONNECTX8: Bandwidth = gigabytes(100);
/// Assumed: a GPU-initiated put through NVSwitch lands in about a microsecond.
const NVLINK_LATENCY: Nanos = Nanos::from_micros(1);
/// Assumed: a GPUDirect RDMA write through one InfiniBand switch lands in about three microseconds.
const INFINIBAND_LATENCY: Nanos = Nanos::from_micros(3);

const fn gigabytes(gigabytes: u64) -> Bandwidth {
    Bandwidth::gigabytes_per_second(gigabytes).expect("preset bandwidths are positive")
}

/// A machine ultraep knows the figures of. Each preset describes `count` identical racks or nodes.
///
/// ```
/// use ultraep_topo::Preset;
/// let preset: Preset = "gb200-nvl72".parse()?;
/// let topo = preset.topology(2)?;
/// assert_eq!((topo.rank_count(), topo.domain_count()), (144, 2));
/// # Ok::<(), ultraep_topo::TopoError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// GB200 NVL72: 72 Blackwell GPUs per rack on one NVLink 5 fabric (1.8 TB/s per GPU, 130 TB/s
    /// per rack), one 400 Gb/s ConnectX-7 per GPU for scale-out. GPU: 2.5 PFLOP/s dense BF16 (the
    /// rack's 180 PFLOP/s / 72), 8 TB/s HBM3e, 186 GB (13.4 TB / 72).
    Gb200Nvl72,
    /// GB300 NVL72: 72 Blackwell Ultra GPUs per rack, NVLink 5 as GB200, one 800 Gb/s ConnectX-8
    /// SuperNIC per GPU. GPU: 2.5 PFLOP/s dense BF16, 8 TB/s HBM3e, 288 GB.
    Gb300Nvl72,
    /// GB200 NVL36: the same GPUs and NVLink 5 fabric as NVL72, 36 GPUs per rack.
    Gb200Nvl36,
    /// HGX H100: 8 H100 SXM GPUs per node on NVLink 4 (900 GB/s per GPU), 400 Gb/s ConnectX-7 per
    /// GPU. GPU: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3, 80 GB.
    HgxH100,
    /// HGX H200: as HGX H100 with H200 GPUs: 989 TFLOP/s dense BF16, 4.8 TB/s HBM3e, 141 GB.
    HgxH200,
    /// HGX B200: 8 B200 GPUs per node on NVLink 5 (1.8 TB/s per GPU), 400 Gb/s ConnectX-7 per GPU.
    /// GPU (1000 W): 2.25 PFLOP/s dense BF16, 8 TB/s HBM3e, 180 GB.
    HgxB200,
}

impl Preset {
    /// Every preset, in the order `ultraep topo --list` prints them.
    pub const ALL: [Preset; 6] = [
        Preset::Gb200Nvl72,
        Preset::Gb300Nvl72,
        Preset::Gb200Nvl36,
        Preset::HgxH100,
        Preset::HgxH200,
        Preset::HgxB200,
    ];

    /// The name used on the command line and in reports, e.g. `gb200-nvl72`.
    pub const fn name(self) -> &'static str {
        match self {
            Preset::Gb200Nvl72 => "gb200-nvl72",
            Preset::Gb300Nvl72 => "gb300-nvl72",
            Preset::Gb200Nvl36 => "gb200-nvl36",
            Preset::HgxH100 => "hgx-h100",
            Preset::HgxH200 => "hgx-h200",
            Preset::HgxB200 => "hgx-b200",
        }
    }

    /// The product name, e.g. "GB200 NVL72".
    pub const fn product(self) -> &'static str {
        match self {
            Preset::Gb200Nvl72 => "GB200 NVL72",
            Preset::Gb300Nvl72 => "GB300 NVL72",
            Preset::Gb200Nvl36 => "GB200 NVL36",
            Preset::HgxH100 => "HGX H100",
            Preset::HgxH200 => "HGX H200",
            Preset::HgxB200 => "HGX B200",
        }
    }

    /// What one scale-up domain of this preset is called: "rack" or "node".
    pub const fn unit(self) -> &'static str {
        match self {
            Preset::Gb200Nvl72 | Preset::Gb300Nvl72 | Preset::Gb200Nvl36 => "rack",
            Preset::HgxH100 | Preset::HgxH200 | Preset::HgxB200 => "node",
        }
    }

    /// GPUs per scale-up domain.
    pub const fn domain_size(self) -> u32 {
        match self {
            Preset::Gb200Nvl72 | Preset::Gb300Nvl72 => 72,
            Preset::Gb200Nvl36 => 36,
            Preset::HgxH100 | Preset::HgxH200 | Preset::HgxB200 => 8,
        }
    }

    /// The links of every GPU.
    pub const fn links(self) -> RankLinks {
        let (scale_up, scale_out) = match self {
            Preset::Gb200Nvl72 | Preset::Gb200Nvl36 | Preset::HgxB200 => {
                (NVLINK5_PER_DIRECTION, CONNECTX7)
            }
            Preset::Gb300Nvl72 => (NVLINK5_PER_DIRECTION, CONNECTX8),
            Preset::HgxH100 | Preset::HgxH200 => (NVLINK4_PER_DIRECTION, CONNECTX7),
        };
        RankLinks {
            scale_up_egress: scale_up,
            scale_up_ingress: scale_up,
            scale_up_latency: NVLINK_LATENCY,
            scale_out,
            scale_out_latency: INFINIBAND_LATENCY,
        }
    }

    /// The GPU at every rank.
    pub fn accelerator(self) -> Accelerator {
        const GB: u64 = 1_000_000_000;
        let (name, dense_bf16_gflops, memory_gb_per_s, memory_gb) = match self {
            Preset::Gb200Nvl72 | Preset::Gb200Nvl36 => ("B200 (GB200)", 2_500_000, 8_000, 186),
            Preset::Gb300Nvl72 => ("B300 (GB300)", 2_500_000, 8_000, 288),
            Preset::HgxH100 => ("H100 SXM", 989_000, 3_350, 80),
            Preset::HgxH200 => ("H200 SXM", 989_000, 4_800, 141),
            Preset::HgxB200 => ("B200 (HGX)", 2_250_000, 8_000, 180),
        };
        Accelerator {
            name: name.to_owned(),
            dense_bf16_gflops,
            memory_bandwidth: gigabytes(memory_gb_per_s),
            memory_bytes: memory_gb * GB,
        }
    }

    /// The largest count of racks or nodes a topology may have: rank numbers stay below 2^20.
    pub const fn max_count(self) -> u32 {
        (1 << 20) / self.domain_size()
    }

    /// `count` racks or nodes of this preset, ranks numbered rack by rack.
    pub fn topology(self, count: u32) -> Result<Topology, TopoError> {
        if count == 0 || count > self.max_count() {
            return Err(TopoError::InvalidPresetCount {
                preset: self.name(),
                unit: self.unit(),
                count,
                max: self.max_count(),
            });
        }
        let size = self.domain_size();
        let links = self.links();
        let mut builder = TopologyBuilder::new(format!("{} x{count}", self.product()))
            .accelerator(self.accelerator());
        for index in 0..count {
            let first = index * size;
            builder = builder.domain(
                format!("{}{index}", self.unit()),
                first..first + size,
                links,
            );
        }
        builder.build()
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = TopoError;

    fn from_str(name: &str) -> Result<Self, TopoError> {
        Preset::ALL
            .into_iter()
            .find(|preset| preset.name() == name)
            .ok_or_else(|| TopoError::UnknownPreset {
                name: name.to_owned(),
                known: Preset::ALL.map(Preset::name).join(", "),
            })
    }
}
