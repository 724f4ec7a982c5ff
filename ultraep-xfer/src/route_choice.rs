//! What a route chooser works on, and the port time every chooser prices work with.

use ultraep_topo::Topology;

use crate::schedule::picoseconds;
use crate::{Route, ScheduledFanout, TransferConfig, TransferCosts};

/// What a chooser works on: the schedule's fan-outs (all direct, in chunks, when it starts), the
/// order to choose them in, spare relay lists to reuse, and the layer's sizes and costs.
pub(crate) struct RouteChoice<'a> {
    pub fanouts: &'a mut [ScheduledFanout],
    pub order: &'a [usize],
    pub spare_relays: &'a mut Vec<Vec<u32>>,
    pub state_bytes: u64,
    pub topology: &'a Topology,
    pub config: TransferConfig,
}

impl RouteChoice<'_> {
    /// A cleared relay list, reused from an earlier schedule when there is one.
    pub fn relay_list(&mut self) -> Vec<u32> {
        let mut relays = self.spare_relays.pop().unwrap_or_default();
        relays.clear();
        relays
    }

    /// Sets fan-out `index` to direct fan-out in chunks, keeping its old relay list for reuse.
    pub fn set_direct(&mut self, index: usize) {
        let fanout = &mut self.fanouts[index];
        if let Route::Relayed { relays, .. } = std::mem::replace(&mut fanout.route, Route::Direct) {
            self.spare_relays.push(relays);
        }
        fanout.piece_bytes = self.config.chunk_bytes;
    }
}

/// Picoseconds a port of `bytes_per_second` (scaled by the costs' bandwidth) is busy with `bytes`
/// sent in `transfers` transfers, a relay's forwarded bytes paying its extra read.
pub(crate) fn port_time(
    costs: TransferCosts,
    bytes_per_second: u64,
    bytes: u64,
    transfers: u64,
    forwarded: bool,
) -> u64 {
    let bandwidth =
        (u128::from(bytes_per_second) * u128::from(costs.bandwidth_ppm) / 1_000_000).max(1) as u64;
    let mut time = picoseconds(bytes, bandwidth);
    if forwarded {
        time += (u128::from(time) * u128::from(costs.relay_forward_ppm) / 1_000_000) as u64;
    }
    time + transfers * u64::from(costs.per_transfer_ns) * 1000
}
