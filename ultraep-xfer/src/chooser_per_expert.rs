//! The first route chooser, kept as the baseline that the bench and the tests compare the layer
//! chooser against ([`crate::RouteChooser::PerExpert`]).
//!
//! Experts choose one after the other, the most destinations first. For each, direct fan-out and
//! flat relays of every count `r` are costed as the time the busiest affected egress port (the
//! master or a relay) would need for everything it sends so far, plus, for relays, one piece time
//! and one hop of latency for the second stage. Relays are the destinations that send least so far
//! (ties: lower rank). The cheapest wins (ties: direct, then fewer relays), and its bytes are added
//! to the egress loads the next expert sees. Ingress is not weighed, and an expert never chooses
//! again once later experts have loaded the ports.

use ultraep_topo::{RankId, Topology};

use crate::route_choice::{RouteChoice, port_time};
use crate::{RelayPieces, Route, TransferConfig};

/// The per-expert chooser's scratch buffers.
#[derive(Debug, Default)]
pub(crate) struct PerExpertChooser {
    egress_ps: Vec<u64>,
    candidates: Vec<(u64, u32)>,
}

impl PerExpertChooser {
    /// Chooses every route of `routes`, expert by expert.
    pub fn choose(&mut self, routes: &mut RouteChoice<'_>) {
        self.egress_ps.clear();
        self.egress_ps.resize(routes.topology.rank_count(), 0);
        let piece = match routes.config.relay_pieces {
            RelayPieces::Chunks => routes.config.chunk_bytes,
            RelayPieces::Tiles | RelayPieces::Chosen => routes.config.tile_bytes,
        };
        for position in 0..routes.order.len() {
            let index = routes.order[position];
            let mut relays = routes.relay_list();
            let fanout = &routes.fanouts[index];
            let relayed = self.choose_one(
                fanout.master,
                &fanout.destinations,
                routes.topology,
                routes.config,
                routes.state_bytes,
                u64::from(piece),
                &mut relays,
            );
            let scheduled = &mut routes.fanouts[index];
            if relayed {
                scheduled.route = Route::Relayed {
                    relays,
                    deep: false,
                };
                scheduled.piece_bytes = piece;
            } else {
                routes.spare_relays.push(relays);
            }
        }
    }

    /// Chooses the route of `fanout`: `true` for relays, whose ranks are then in `relays`,
    /// `false` for direct fan-out.
    #[allow(clippy::too_many_arguments)]
    fn choose_one(
        &mut self,
        master: u32,
        destinations: &[(u32, u16)],
        topology: &Topology,
        config: TransferConfig,
        state_bytes: u64,
        piece: u64,
        relays: &mut Vec<u32>,
    ) -> bool {
        let egress = |rank: u32, bytes: u64, piece: u64, forwarded: bool| {
            let bandwidth = topology
                .links(RankId(rank))
                .map_or(1, |links| links.scale_up_egress.get());
            port_time(
                config.costs,
                bandwidth,
                bytes,
                bytes.div_ceil(piece.max(1)),
                forwarded,
            )
        };
        let n = destinations.len() as u64;
        let chunk = u64::from(config.chunk_bytes);
        let one_copy = egress(master, state_bytes, chunk, false);
        let direct_cost = self.egress_ps[master as usize] + one_copy * n;
        if n < 2 {
            self.egress_ps[master as usize] += one_copy * n;
            return false;
        }
        self.candidates.clear();
        self.candidates.extend(
            destinations
                .iter()
                .map(|&(rank, _)| (self.egress_ps[rank as usize], rank)),
        );
        self.candidates.sort_unstable();
        let first = destinations[0].0;
        // The second stage starts a piece later than the first and crosses one more hop.
        let hop = egress(master, piece.min(state_bytes), piece, false)
            + topology
                .path(RankId(master), RankId(first))
                .map_or(0, |path| path.latency.get() * 1000);
        let master_once =
            self.egress_ps[master as usize] + egress(master, state_bytes, piece, false);
        // Pieces go to relays by least bytes owned, so each forwards about 1/r of the state to
        // every other destination.
        let forwarded = |relays: usize| state_bytes.div_ceil(relays as u64) * (n - 1);
        let mut best: Option<(u64, usize)> = None;
        for count in 1..=destinations.len() {
            let mut worst = master_once;
            for &(load, rank) in &self.candidates[..count] {
                worst = worst.max(load + egress(rank, forwarded(count), piece, true));
            }
            let cost = worst + hop;
            if best.is_none_or(|(b, _)| cost < b) {
                best = Some((cost, count));
            }
        }
        match best {
            Some((cost, count)) if cost < direct_cost => {
                self.egress_ps[master as usize] = master_once;
                for index in 0..count {
                    let rank = self.candidates[index].1;
                    self.egress_ps[rank as usize] += egress(rank, forwarded(count), piece, true);
                    relays.push(rank);
                }
                true
            }
            _ => {
                self.egress_ps[master as usize] += one_copy * n;
                false
            }
        }
    }
}
