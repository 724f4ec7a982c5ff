//! Playing a schedule on a topology: when every replica has its state, and how close that is to the
//! best any schedule could do.
//!
//! Every rank has an egress and an ingress port with its topology bandwidths. A chunk transfer takes
//! `bytes / min(egress, ingress)` on each of its two ports: the sender's egress sends it as soon as
//! that port is free, the receiver's ingress takes it in as soon as that port is free (never
//! finishing before the last byte was sent), and it lands one hop latency later. The two ports are
//! not held at the same time: a scale-up switch such as NVSwitch is non-blocking, and a GPU's many
//! SMs write to many peers at once, so a busy receiver slows its own intake, not the sender's other
//! sends. (The model is optimistic about buffering in the switch; it never beats a port's busy time,
//! so efficiency stays at most 1.) Transfers are taken in order of the time their chunk is available
//! at the sender (ties: schedule order): a relay forwards a chunk as soon as it has landed, with no
//! barrier. Times are integer picoseconds.
//!
//! The lower bound does not depend on the schedule: every destination must receive its copies, every
//! master must send each of its experts at least once, and all the copies must leave some rank that
//! holds the expert (a master or a destination). Efficiency is lower bound / makespan.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ultraep_topo::{RankId, Topology};

use crate::flow::Flow;
use crate::schedule::picoseconds;
use crate::{TransferCosts, TransferSchedule, XferError};

/// When one replica has its whole state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaReady {
    /// The expert.
    pub expert: u32,
    /// The destination rank.
    pub rank: u32,
    /// Picoseconds from the start until its last chunk landed.
    pub at_ps: u64,
}

/// What playing a schedule found.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// Picoseconds until the last chunk landed.
    pub makespan_ps: u64,
    /// The best any schedule of these replicas could do on this topology, in picoseconds.
    pub lower_bound_ps: u64,
    /// When every replica was complete, in schedule order.
    pub ready: Vec<ReplicaReady>,
    /// Busy picoseconds of every rank's egress port.
    pub egress_busy_ps: Vec<u64>,
    /// Busy picoseconds of every rank's ingress port.
    pub ingress_busy_ps: Vec<u64>,
    /// Bytes that crossed links in all.
    pub bytes_moved: u64,
    /// The busiest port's bytes at its link speed, in picoseconds: how long this schedule takes at
    /// the very least on these links, with no per-transfer cost, no relay overhead and no waiting.
    /// The distance from it to the makespan is what the schedule's order and the costs lose.
    pub busiest_port_ps: u64,
}

impl Simulation {
    /// Lower bound / makespan (1.0 for an empty schedule).
    pub fn efficiency(&self) -> f64 {
        if self.makespan_ps == 0 {
            1.0
        } else {
            self.lower_bound_ps as f64 / self.makespan_ps as f64
        }
    }

    /// Bytes the replicas needed over the makespan: the effective bandwidth of the whole transfer.
    pub fn effective_bytes_per_second(&self) -> f64 {
        if self.makespan_ps == 0 {
            0.0
        } else {
            self.bytes_moved as f64 / (self.makespan_ps as f64 * 1e-12)
        }
    }
}

/// Plays the weight distribution of `schedule` on `topology`.
pub fn simulate(schedule: &TransferSchedule, topology: &Topology) -> Result<Simulation, XferError> {
    let flow = crate::flow::distribution(schedule);
    let transfers = &flow.transfers;
    let played = play(&flow, topology, schedule.config().costs)?;
    let ranks = topology.rank_count();
    let mut complete = vec![0u64; schedule.fanouts().len() * ranks];
    for (transfer, &at) in transfers.iter().zip(&played.landed_ps) {
        let slot = &mut complete[transfer.fanout as usize * ranks + transfer.to as usize];
        *slot = (*slot).max(at);
    }
    let ready = schedule
        .fanouts()
        .iter()
        .enumerate()
        .flat_map(|(index, fanout)| {
            let complete = &complete;
            fanout
                .destinations
                .iter()
                .map(move |&(rank, _)| ReplicaReady {
                    expert: fanout.expert,
                    rank,
                    at_ps: complete[index * ranks + rank as usize],
                })
        })
        .collect();
    Ok(played.into_simulation(lower_bound(schedule, topology)?, ready))
}

/// One piece transfer as the simulator played it: what moved, and when each port carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayedTransfer {
    /// The expert.
    pub expert: u32,
    /// The sender: the expert's master, or a relay forwarding what it received.
    pub from: u32,
    /// The receiver.
    pub to: u32,
    /// Where the piece starts in the expert's state, in bytes.
    pub offset: u64,
    /// The piece's bytes.
    pub bytes: u64,
    /// Whether the sender forwards a piece it received.
    pub forwarded: bool,
    /// Picoseconds the sender's egress port carried it: `[start, end)`.
    pub egress_ps: (u64, u64),
    /// Picoseconds the receiver's ingress port carried it: `[start, end)`.
    pub ingress_ps: (u64, u64),
    /// When it landed (after the hop's latency).
    pub landed_ps: u64,
}

/// Every piece transfer of `schedule`'s weight distribution as the simulator plays it, in the
/// order they were listed: what a flow checker needs to verify that every destination receives
/// every byte once, that relays forward only what they hold, and that no port is over-used.
pub fn played_transfers(
    schedule: &TransferSchedule,
    topology: &Topology,
) -> Result<Vec<PlayedTransfer>, XferError> {
    let flow = crate::flow::distribution(schedule);
    let played = play(&flow, topology, schedule.config().costs)?;
    let pieces: Vec<_> = schedule
        .fanouts()
        .iter()
        .map(|fanout| schedule.pieces(fanout))
        .collect();
    Ok(flow
        .transfers
        .iter()
        .enumerate()
        .map(|(index, transfer)| PlayedTransfer {
            expert: schedule.fanouts()[transfer.fanout as usize].expert,
            from: transfer.from,
            to: transfer.to,
            offset: pieces[transfer.fanout as usize][transfer.piece as usize].offset,
            bytes: transfer.bytes,
            forwarded: transfer.forwarded,
            egress_ps: played.egress_ps[index],
            ingress_ps: played.ingress_ps[index],
            landed_ps: played.landed_ps[index],
        })
        .collect())
}

/// What playing a list of transfers found.
pub(crate) struct Played {
    pub makespan_ps: u64,
    /// The egress and ingress intervals of every transfer, in list order.
    pub egress_ps: Vec<(u64, u64)>,
    pub ingress_ps: Vec<(u64, u64)>,
    pub egress_busy_ps: Vec<u64>,
    pub ingress_busy_ps: Vec<u64>,
    pub bytes_moved: u64,
    pub busiest_port_ps: u64,
    /// When every transfer landed, in list order.
    pub landed_ps: Vec<u64>,
}

/// Plays the gradient reduction of `schedule` (a schedule of the gradient state): the distribution's
/// routes reversed. `ready` says when each master has the sum of all its replicas' gradients; the
/// lower bound is the distribution's, ports swapped (every master must receive each of its experts
/// at least once, every replica must send its gradient).
pub fn simulate_reduction(
    schedule: &TransferSchedule,
    topology: &Topology,
) -> Result<Simulation, XferError> {
    let flow = crate::flow::reduction(schedule);
    let played = play(&flow, topology, schedule.config().costs)?;
    let mut complete = vec![0u64; schedule.fanouts().len()];
    for (transfer, &at) in flow.transfers.iter().zip(&played.landed_ps) {
        if transfer.to == schedule.fanouts()[transfer.fanout as usize].master {
            let slot = &mut complete[transfer.fanout as usize];
            *slot = (*slot).max(at);
        }
    }
    let ready = schedule
        .fanouts()
        .iter()
        .zip(&complete)
        .map(|(fanout, &at_ps)| ReplicaReady {
            expert: fanout.expert,
            rank: fanout.master,
            at_ps,
        })
        .collect();
    Ok(played.into_simulation(lower_bound(schedule, topology)?, ready))
}

impl Played {
    fn into_simulation(self, lower_bound_ps: u64, ready: Vec<ReplicaReady>) -> Simulation {
        Simulation {
            makespan_ps: self.makespan_ps,
            lower_bound_ps,
            ready,
            egress_busy_ps: self.egress_busy_ps,
            ingress_busy_ps: self.ingress_busy_ps,
            bytes_moved: self.bytes_moved,
            busiest_port_ps: self.busiest_port_ps,
        }
    }
}

/// Plays a flow (each transfer waiting for its predecessors) on `topology`.
///
/// Events are sends, taken in order of their start: every egress port keeps the transfers it may
/// send (their chunk has arrived) in order of arrival, and a heap picks the port that can start
/// soonest. Receivers take transfers in the order they were sent.
pub(crate) fn play(
    flow: &Flow,
    topology: &Topology,
    costs: TransferCosts,
) -> Result<Played, XferError> {
    let transfers = &flow.transfers;
    let ranks = topology.rank_count();
    let mut egress_free = vec![0u64; ranks];
    let mut ingress_free = vec![0u64; ranks];
    let mut egress_busy = vec![0u64; ranks];
    let mut ingress_busy = vec![0u64; ranks];
    let mut landed_at = vec![u64::MAX; transfers.len()];
    let mut egress_spans = vec![(0u64, 0u64); transfers.len()];
    let mut ingress_spans = vec![(0u64, 0u64); transfers.len()];
    // Transfers waiting for their piece: who waits for each transfer, and how many each still
    // waits for (and the latest landing among those it has seen).
    let mut waiting: Vec<Vec<u32>> = vec![Vec::new(); transfers.len()];
    let mut outstanding: Vec<u32> = flow.predecessors.iter().map(|p| p.len() as u32).collect();
    let mut latest = vec![0u64; transfers.len()];
    // Per egress port: transfers whose piece is there, by (arrival, list order).
    let mut sendable: Vec<BinaryHeap<Reverse<(u64, u32)>>> = vec![BinaryHeap::new(); ranks];
    // (earliest start, rank) of ports with something to send; stale entries are skipped.
    let mut ports = BinaryHeap::new();
    for (index, transfer) in transfers.iter().enumerate() {
        if transfer.from as usize >= ranks || transfer.to as usize >= ranks {
            return Err(XferError::UnknownRank {
                rank: transfer.from.max(transfer.to),
                rank_count: ranks as u32,
            });
        }
        if flow.predecessors[index].is_empty() {
            sendable[transfer.from as usize].push(Reverse((0, index as u32)));
        }
        for &before in &flow.predecessors[index] {
            waiting[before as usize].push(index as u32);
        }
    }
    for (rank, queue) in sendable.iter().enumerate() {
        if !queue.is_empty() {
            ports.push(Reverse((0u64, rank as u32)));
        }
    }
    let mut makespan = 0;
    let mut bytes_moved = 0;
    let mut egress_bytes = vec![0u64; ranks];
    let mut ingress_bytes = vec![0u64; ranks];
    while let Some(Reverse((at, rank))) = ports.pop() {
        let from = rank as usize;
        let Some(&Reverse((ready, index))) = sendable[from].peek() else {
            continue;
        };
        let transfer = transfers[index as usize];
        let to = transfer.to as usize;
        // With backpressure the sender also waits for the receiver's port.
        let start = if costs.backpressure {
            ready.max(egress_free[from]).max(ingress_free[to])
        } else {
            ready.max(egress_free[from])
        };
        if start != at {
            // A stale entry: the port's next send starts later than this entry said.
            ports.push(Reverse((start, rank)));
            continue;
        }
        sendable[from].pop();
        let path = topology
            .path(RankId(transfer.from), RankId(transfer.to))
            .map_err(|_| XferError::UnknownRank {
                rank: transfer.from.max(transfer.to),
                rank_count: ranks as u32,
            })?;
        let bandwidth = path.bandwidth.map_or(u64::MAX, |b| {
            (u128::from(b.get()) * u128::from(costs.bandwidth_ppm) / 1_000_000).max(1) as u64
        });
        let mut duration = picoseconds(transfer.bytes, bandwidth);
        if transfer.forwarded {
            duration +=
                (u128::from(duration) * u128::from(costs.relay_forward_ppm) / 1_000_000) as u64;
        }
        duration += u64::from(costs.per_transfer_ns) * 1000;
        // The sender's egress sends it now; the receiver's ingress takes it in as soon as it is
        // free, never finishing before the last byte was sent.
        let send_end = start + duration;
        egress_free[from] = send_end;
        let receive_end = (start.max(ingress_free[to]) + duration).max(send_end);
        ingress_free[to] = receive_end;
        egress_busy[from] += duration;
        ingress_busy[to] += duration;
        let landed = receive_end + path.latency.get() * 1000;
        landed_at[index as usize] = landed;
        egress_spans[index as usize] = (start, send_end);
        ingress_spans[index as usize] = (receive_end - duration, receive_end);
        makespan = makespan.max(landed);
        bytes_moved += transfer.bytes;
        egress_bytes[from] += transfer.bytes;
        ingress_bytes[to] += transfer.bytes;
        for &next in &waiting[index as usize] {
            let next_index = next as usize;
            latest[next_index] = latest[next_index].max(landed);
            outstanding[next_index] -= 1;
            if outstanding[next_index] == 0 {
                let sender = transfers[next_index].from as usize;
                let ready = latest[next_index];
                sendable[sender].push(Reverse((ready, next)));
                ports.push(Reverse((ready.max(egress_free[sender]), sender as u32)));
            }
        }
        if let Some(&Reverse((ready, _))) = sendable[from].peek() {
            ports.push(Reverse((ready.max(egress_free[from]), rank)));
        }
    }
    let mut busiest_port_ps = 0;
    for rank in 0..ranks {
        if let Ok(links) = topology.links(RankId(rank as u32)) {
            busiest_port_ps = busiest_port_ps
                .max(picoseconds(egress_bytes[rank], links.scale_up_egress.get()))
                .max(picoseconds(
                    ingress_bytes[rank],
                    links.scale_up_ingress.get(),
                ));
        }
    }
    Ok(Played {
        makespan_ps: makespan,
        busiest_port_ps,
        egress_ps: egress_spans,
        ingress_ps: ingress_spans,
        egress_busy_ps: egress_busy,
        ingress_busy_ps: ingress_busy,
        bytes_moved,
        landed_ps: landed_at,
    })
}

/// The schedule-independent lower bound of distributing `schedule`'s replicas (see module docs).
pub fn lower_bound(schedule: &TransferSchedule, topology: &Topology) -> Result<u64, XferError> {
    let ranks = topology.rank_count();
    let bytes = schedule.state_bytes();
    let mut must_receive = vec![0u64; ranks];
    let mut must_send = vec![0u64; ranks];
    let mut holders = vec![false; ranks];
    let mut total = 0u64;
    for fanout in schedule.fanouts() {
        must_send[fanout.master as usize] += bytes;
        holders[fanout.master as usize] = true;
        for &(rank, _) in &fanout.destinations {
            must_receive[rank as usize] += bytes;
            holders[rank as usize] = true;
            total += bytes;
        }
    }
    let mut bound = 0u64;
    let mut egress_sum: u128 = 0;
    for rank in 0..ranks {
        let links = topology
            .links(RankId(rank as u32))
            .map_err(|_| XferError::UnknownRank {
                rank: rank as u32,
                rank_count: ranks as u32,
            })?;
        bound = bound
            .max(picoseconds(
                must_receive[rank],
                links.scale_up_ingress.get(),
            ))
            .max(picoseconds(must_send[rank], links.scale_up_egress.get()));
        if holders[rank] {
            egress_sum += u128::from(links.scale_up_egress.get());
        }
    }
    if egress_sum > 0 {
        let aggregate = (u128::from(total) * 1_000_000_000_000).div_ceil(egress_sum);
        bound = bound.max(u64::try_from(aggregate).unwrap_or(u64::MAX));
    }
    Ok(bound)
}
