//! What one rank's links can do, and which kind of link joins two ranks.

use crate::{Bandwidth, Nanos};

/// The links of one rank.
///
/// Scale-up figures are per direction: NVLink 5's "1.8 TB/s per GPU" counts both directions together,
/// so it is 900 GB/s of egress and 900 GB/s of ingress here. Scale-out (the NIC) is full duplex with
/// the same figure each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RankLinks {
    /// Bytes per second this rank can send into its scale-up fabric.
    pub scale_up_egress: Bandwidth,
    /// Bytes per second this rank can receive from its scale-up fabric.
    pub scale_up_ingress: Bandwidth,
    /// Time for one transfer to cross the scale-up fabric before its first byte lands.
    pub scale_up_latency: Nanos,
    /// Bytes per second this rank can send (and, separately, receive) over the scale-out network.
    pub scale_out: Bandwidth,
    /// Time for one transfer to cross the scale-out network before its first byte lands.
    pub scale_out_latency: Nanos,
}

/// How two ranks are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkClass {
    /// Both ends are the same rank: nothing crosses a link.
    SameRank,
    /// Both ranks are in one scale-up domain (NVLink).
    ScaleUp,
    /// The ranks are in different domains (InfiniBand or RoCE).
    ScaleOut,
}

/// The path one transfer takes from a source rank to a destination rank when nothing else is using
/// the links: its class, the bandwidth of its slowest port and its latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkPath {
    /// Which kind of link the transfer crosses.
    pub class: LinkClass,
    /// The bandwidth of the slowest port on the way (source egress or destination ingress);
    /// `None` when source and destination are the same rank.
    pub bandwidth: Option<Bandwidth>,
    /// The latency of the path: the larger of the two ends' latencies for its class.
    pub latency: Nanos,
}

impl LinkPath {
    /// Time to move `bytes` along this path when it is otherwise idle: latency + bytes / bandwidth.
    /// A same-rank path costs nothing (no link is crossed).
    pub fn transfer_time(&self, bytes: u64) -> Nanos {
        match self.bandwidth {
            Some(bandwidth) => self.latency + bandwidth.time_to_move(bytes),
            None => Nanos::ZERO,
        }
    }
}
