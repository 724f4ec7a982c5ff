//! The layer route chooser ([`crate::RouteChooser::Layer`], the default): every expert's route
//! weighed against what every port carries for the whole layer.
//!
//! Under the calibrated costs a forwarded byte holds the relay's egress and the receiver's ingress
//! three times as long as a direct one, and every piece pays a fixed cost. So the right route is
//! not "relays whenever there are many destinations": a destination that receives everything
//! forwarded spends three state-times on its ingress, and one that also receives another expert
//! may be better served directly. The chooser therefore weighs, for every expert:
//! - direct fan-out in chunks;
//! - relays forwarding tiles or chunks ([`crate::RelayPieces`] may fix one);
//! - every relay count up to 8, then 12, 16, 24, 32, 48 and every destination;
//! - trees two relays deep, which halve how long the last piece takes to reach everyone.
//!
//! A shape's cost is the latest of: the master's egress plus the last piece's way through the tree,
//! the busiest relay's egress, and the busiest destination's ingress, each on top of what the
//! layer's other experts already put on that port (ingress too, which the per-expert baseline
//! ignores). Experts choose in order of destinations (most
//! first); then every expert chooses once more against the final loads of all the others, so an
//! early expert does not keep a route that a later one made expensive. Relays are the destinations
//! that send least so far (ties: lower rank). Ties between shapes go to direct, then tiles, fewer
//! relays and flat trees. Integer arithmetic only: every rank chooses alike.

use ultraep_topo::{RankId, Topology};

use crate::route_choice::{RouteChoice, port_time};
use crate::{RelayPieces, Route, TransferCosts};

/// Relay counts weighed beyond every count up to 8 (and beside the count of all destinations).
const WIDE_RELAY_COUNTS: [usize; 5] = [12, 16, 24, 32, 48];

/// The chooser charges forwarded work one part in this many more than the simulator does. Under
/// backpressure a forward holds the relay's egress and the receiver's ingress at once, so two
/// saturated ports wait on each other in ways that port loads do not show; without the allowance
/// the chooser relays an expert whose ports the layer already fills, and the simulated layer takes
/// 229 us instead of 158 us (the EP64 plan at 3.0).
const FORWARD_ALLOWANCE: u64 = 16;

/// How many times every expert chooses: once in order, once more against the whole layer.
const PASSES: usize = 2;

/// One way to move an expert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// Bytes per piece.
    piece: u64,
    /// Relays; 0 for direct fan-out.
    relays: usize,
    /// Whether the tree is two relays deep.
    deep: bool,
}

/// Bytes a port carries for one shape, and in how many transfers, direct and forwarded.
#[derive(Debug, Clone, Copy, Default)]
struct Work {
    bytes: u64,
    transfers: u64,
    forwarded_bytes: u64,
    forwarded_transfers: u64,
}

impl Work {
    fn time(&self, costs: TransferCosts, bytes_per_second: u64) -> u64 {
        let forwarded = port_time(
            costs,
            bytes_per_second,
            self.forwarded_bytes,
            self.forwarded_transfers,
            true,
        );
        port_time(costs, bytes_per_second, self.bytes, self.transfers, false)
            + forwarded
            + forwarded / FORWARD_ALLOWANCE
    }
}

/// What a shape puts on each kind of port it touches.
#[derive(Debug, Clone, Copy, Default)]
struct Charges {
    master: Work,
    relay_egress: Work,
    relay_ingress: Work,
    other_ingress: Work,
    /// Forwards of the last piece one after the other on its way to the last destination.
    chain: u64,
}

/// The layer chooser's loads and scratch buffers.
#[derive(Debug, Default)]
pub(crate) struct LayerChooser {
    egress_ps: Vec<u64>,
    ingress_ps: Vec<u64>,
    /// The current expert's destinations as (egress load, rank), ascending.
    candidates: Vec<(u64, u32)>,
    /// The largest ingress load among `candidates[..r]` (index r), and among `candidates[r..]`.
    relay_ingress_max: Vec<u64>,
    other_ingress_max: Vec<u64>,
    /// The shape every fan-out holds, so that it can be taken off the ports again.
    shapes: Vec<Shape>,
}

/// The fixed facts of one expert's choice.
struct Expert {
    master: u32,
    destinations: usize,
    state_bytes: u64,
    chunk: u64,
    costs: TransferCosts,
    /// The master's egress bandwidth, the slowest destination egress and ingress bandwidths.
    master_rate: u64,
    egress_rate: u64,
    ingress_rate: u64,
    latency_ps: u64,
}

impl Expert {
    fn charges(&self, shape: Shape) -> Charges {
        let n = self.destinations as u64;
        if shape.relays == 0 {
            let pieces = self.state_bytes.div_ceil(self.chunk);
            let once = Work {
                bytes: self.state_bytes,
                transfers: pieces,
                ..Work::default()
            };
            return Charges {
                master: Work {
                    bytes: once.bytes * n,
                    transfers: once.transfers * n,
                    ..Work::default()
                },
                relay_ingress: once,
                other_ingress: once,
                ..Charges::default()
            };
        }
        let pieces = self.state_bytes.div_ceil(shape.piece);
        let r = shape.relays as u64;
        let owned_bytes = self.state_bytes.div_ceil(r);
        let owned_pieces = pieces.div_ceil(r);
        let forward_time = port_time(self.costs, self.egress_rate, shape.piece, 1, true);
        let chain_forwards = if shape.deep && n >= 3 {
            1 + (n - 1).div_ceil(2)
        } else {
            n - 1
        };
        Charges {
            master: Work {
                bytes: self.state_bytes,
                transfers: pieces,
                ..Work::default()
            },
            relay_egress: Work {
                forwarded_bytes: owned_bytes * (n - 1),
                forwarded_transfers: owned_pieces * (n - 1),
                ..Work::default()
            },
            relay_ingress: Work {
                bytes: owned_bytes,
                transfers: owned_pieces,
                forwarded_bytes: self.state_bytes - owned_bytes.min(self.state_bytes),
                forwarded_transfers: pieces - owned_pieces.min(pieces),
            },
            other_ingress: Work {
                forwarded_bytes: self.state_bytes,
                forwarded_transfers: pieces,
                ..Work::default()
            },
            chain: chain_forwards * forward_time + self.latency_ps,
        }
    }
}

impl LayerChooser {
    /// Chooses every route of `routes` (see the module docs).
    pub fn choose(&mut self, routes: &mut RouteChoice<'_>) {
        let ranks = routes.topology.rank_count();
        self.egress_ps.clear();
        self.egress_ps.resize(ranks, 0);
        self.ingress_ps.clear();
        self.ingress_ps.resize(ranks, 0);
        self.shapes.clear();
        self.shapes.resize(
            routes.fanouts.len(),
            Shape {
                piece: routes.config.chunk_bytes.into(),
                relays: 0,
                deep: false,
            },
        );
        for pass in 0..PASSES {
            for position in 0..routes.order.len() {
                let index = routes.order[position];
                // The facts of an expert do not change while it chooses: computed once.
                let expert = self.expert(routes, index);
                if pass > 0 {
                    self.charge(routes, &expert, index, false);
                }
                self.choose_one(routes, &expert, index);
                self.charge(routes, &expert, index, true);
            }
        }
    }

    fn expert(&self, routes: &RouteChoice<'_>, index: usize) -> Expert {
        let fanout = &routes.fanouts[index];
        let topology = routes.topology;
        let rate = |rank: u32, ingress: bool| {
            topology.links(RankId(rank)).map_or(1, |links| {
                if ingress {
                    links.scale_up_ingress.get()
                } else {
                    links.scale_up_egress.get()
                }
            })
        };
        let slowest = |ingress: bool| {
            fanout
                .destinations
                .iter()
                .map(|&(rank, _)| rate(rank, ingress))
                .min()
                .unwrap_or(1)
        };
        Expert {
            master: fanout.master,
            destinations: fanout.destinations.len(),
            state_bytes: routes.state_bytes,
            chunk: routes.config.chunk_bytes.into(),
            costs: routes.config.costs,
            master_rate: rate(fanout.master, false),
            egress_rate: slowest(false),
            ingress_rate: slowest(true),
            latency_ps: latency(topology, fanout.master, fanout.destinations.first()),
        }
    }

    /// Adds (or, with `add` false, removes) fan-out `index`'s shape to the port loads.
    fn charge(&mut self, routes: &RouteChoice<'_>, expert: &Expert, index: usize, add: bool) {
        let charges = expert.charges(self.shapes[index]);
        let fanout = &routes.fanouts[index];
        let topology = routes.topology;
        let costs = expert.costs;
        let apply = |load: &mut u64, time: u64| {
            *load = if add {
                *load + time
            } else {
                load.saturating_sub(time)
            };
        };
        apply(
            &mut self.egress_ps[expert.master as usize],
            charges.master.time(costs, expert.master_rate),
        );
        let relays: &[u32] = match &fanout.route {
            Route::Relayed { relays, .. } => relays,
            Route::Direct => &[],
        };
        for &(rank, _) in &fanout.destinations {
            let links = topology.links(RankId(rank)).ok();
            let ingress_rate = links.map_or(1, |links| links.scale_up_ingress.get());
            if relays.contains(&rank) {
                let egress_rate = links.map_or(1, |links| links.scale_up_egress.get());
                apply(
                    &mut self.egress_ps[rank as usize],
                    charges.relay_egress.time(costs, egress_rate),
                );
                apply(
                    &mut self.ingress_ps[rank as usize],
                    charges.relay_ingress.time(costs, ingress_rate),
                );
            } else {
                apply(
                    &mut self.ingress_ps[rank as usize],
                    charges.other_ingress.time(costs, ingress_rate),
                );
            }
        }
    }

    /// Chooses fan-out `index`'s shape against the current loads and sets its route.
    fn choose_one(&mut self, routes: &mut RouteChoice<'_>, expert: &Expert, index: usize) {
        let fanout = &routes.fanouts[index];
        let n = fanout.destinations.len();
        self.candidates.clear();
        self.candidates.extend(
            fanout
                .destinations
                .iter()
                .map(|&(rank, _)| (self.egress_ps[rank as usize], rank)),
        );
        self.candidates.sort_unstable();
        self.relay_ingress_max.clear();
        self.relay_ingress_max.push(0);
        for &(_, rank) in &self.candidates {
            let last = *self.relay_ingress_max.last().unwrap_or(&0);
            self.relay_ingress_max
                .push(last.max(self.ingress_ps[rank as usize]));
        }
        self.other_ingress_max.clear();
        self.other_ingress_max.resize(n + 1, 0);
        for position in (0..n).rev() {
            let rank = self.candidates[position].1;
            self.other_ingress_max[position] =
                self.other_ingress_max[position + 1].max(self.ingress_ps[rank as usize]);
        }
        let direct = Shape {
            piece: expert.chunk,
            relays: 0,
            deep: false,
        };
        let mut best = (self.cost(expert, direct), direct);
        if n >= 2 {
            let config = routes.config;
            let tile = u64::from(config.tile_bytes);
            let pieces: &[u64] = match config.relay_pieces {
                RelayPieces::Chosen => &[tile, expert.chunk],
                RelayPieces::Tiles => &[tile],
                RelayPieces::Chunks => &[expert.chunk],
            };
            let counts = (1..=n.min(8))
                .chain(WIDE_RELAY_COUNTS.into_iter().filter(|&count| count < n))
                .chain((n > 8).then_some(n));
            for &piece in pieces {
                for relays in counts.clone() {
                    for deep in [false, true] {
                        if deep && (relays < 2 || n < 4) {
                            continue;
                        }
                        let shape = Shape {
                            piece,
                            relays,
                            deep,
                        };
                        let cost = self.cost(expert, shape);
                        if cost < best.0 {
                            best = (cost, shape);
                        }
                    }
                }
            }
        }
        let shape = best.1;
        self.shapes[index] = shape;
        if shape.relays == 0 {
            routes.set_direct(index);
            return;
        }
        let mut relays = routes.relay_list();
        relays.extend(
            self.candidates[..shape.relays]
                .iter()
                .map(|&(_, rank)| rank),
        );
        routes.set_direct(index);
        let fanout = &mut routes.fanouts[index];
        fanout.route = Route::Relayed {
            relays,
            deep: shape.deep,
        };
        fanout.piece_bytes = shape.piece as u32;
    }

    /// The cost of `shape`: the later of its two sides.
    fn cost(&self, expert: &Expert, shape: Shape) -> u64 {
        let (master, others) = self.sides(expert, shape);
        master.max(others)
    }

    /// When the master's side (its egress, and the last piece's way through the tree) and the
    /// others' side (the busiest relay egress and destination ingress) of `shape` would end.
    fn sides(&self, expert: &Expert, shape: Shape) -> (u64, u64) {
        let charges = expert.charges(shape);
        let costs = expert.costs;
        let master = self.egress_ps[expert.master as usize]
            + charges.master.time(costs, expert.master_rate)
            + charges.chain;
        let r = shape.relays;
        let relay_egress = self.candidates[..r].last().map_or(0, |&(load, _)| {
            load + charges.relay_egress.time(costs, expert.egress_rate)
        });
        let mut ingress =
            self.relay_ingress_max[r] + charges.relay_ingress.time(costs, expert.ingress_rate);
        if r < self.candidates.len() {
            ingress = ingress.max(
                self.other_ingress_max[r] + charges.other_ingress.time(costs, expert.ingress_rate),
            );
        }
        (master, relay_egress.max(ingress))
    }
}

/// Picoseconds of one hop from `master` to its first destination.
fn latency(topology: &Topology, master: u32, first: Option<&(u32, u16)>) -> u64 {
    first.map_or(0, |&(rank, _)| {
        topology
            .path(RankId(master), RankId(rank))
            .map_or(0, |path| path.latency.get() * 1000)
    })
}
