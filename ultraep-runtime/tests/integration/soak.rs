//! The soak test: an 8-rank group on the process data plane (one engine per rank, each on its own
//! thread, over shared memory) runs thousands of steps with random loads and random interleavings
//! of two microbatches in flight, with transfer failures and lost peers injected on the way.
//!
//! After every step every rank checks that each replica it holds computes with its master's
//! weights (no slot is read half-written) and that its plan's digest equals every other rank's;
//! after a fault, every rank whose step failed checks that the slots the transfer was writing
//! refuse to be read and that its masters are intact. Ranks map each other's named segments, as
//! processes do: a victim dropped mid-transfer must be named lost (`PeerLost`) by every peer whose
//! step failed, and a victim that stays by none. The group is then rebuilt, and a recovery counts
//! only once the rebuilt group has run its whole next episode correctly.
//! Resident memory is read after the first episode and at the end: it must stay flat.
//!
//! `ULTRAEP_SOAK_STEPS` sets the number of steps (default 1,000; the figures in
//! `docs/robustness.md` come from a longer run); `ULTRAEP_SOAK_REPORT=1` prints them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ultraep_runtime::{
    Engine, EngineConfig, InProcessCollective, Mode, PlaneOptions, RouterOutput, RuntimeError,
    StepId,
};

use crate::fixture::{base_config, weights};

const RANKS: u32 = 8;
const EXPERTS: u32 = 32;
const LAYERS: u32 = 3;
/// Steps between two faults: each ends an episode, after which the group is rebuilt.
const STEPS_PER_EPISODE: u64 = 250;

fn config() -> EngineConfig {
    EngineConfig {
        mode: Mode::Prefill,
        microbatches_in_flight: 2,
        workers: 1,
        ..base_config()
    }
}

/// A small deterministic generator (splitmix64): every rank draws the same sequence.
#[derive(Debug, Clone, Copy)]
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Rank `rank`'s router ids for step number `index`: a random hot expert takes a random share of
/// 64 tokens of top-4.
fn ids(seed: u64, index: u64, rank: u32) -> Vec<u32> {
    let mut draws = Draws(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let hot = draws.below(u64::from(EXPERTS)) as u32;
    let share = draws.below(4);
    let mut own = Draws(draws.next() ^ u64::from(rank));
    (0..64u32)
        .flat_map(|token| {
            let first = if u64::from(token % 4) <= share {
                hot
            } else {
                own.below(u64::from(EXPERTS)) as u32
            };
            // Four distinct experts per token.
            (0..4u32).map(move |k| (first + k * 7) % EXPERTS)
        })
        .collect()
}

/// The order of one round's steps: both microbatches' layers in order, interleaved at random.
fn interleaving(draws: &mut Draws, round: u32) -> Vec<StepId> {
    let (mut next, mut order) = ([0u32; 2], Vec::new());
    while next.iter().any(|&layer| layer < LAYERS) {
        let pick = draws.below(2) as usize;
        let pick = if next[pick] < LAYERS { pick } else { 1 - pick };
        order.push(StepId::new(round * 2 + pick as u32, next[pick]));
        next[pick] += 1;
    }
    order
}

/// What a fault does to its victim.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The transfer stops after its first tile; the rank stays.
    TransferFails,
    /// The transfer stops after its first tile and the rank goes away.
    PeerLost,
}

#[derive(Debug, Default)]
struct Tally {
    steps: u64,
    copies: u64,
    faults: u64,
    lost_peers: u64,
    failed_calls: u64,
    unreadable_slots: u64,
    recoveries: u64,
}

/// One episode: a fresh group runs `steps` steps from step number `first`, then (if `fault`)
/// one more step with the fault on rank `victim`.
fn episode(
    seed: u64,
    first: u64,
    steps: u64,
    fault: Option<(Fault, u32)>,
    tally: &Mutex<Tally>,
) -> Result<(), String> {
    let options = PlaneOptions {
        timeout: Duration::from_millis(300),
        workers: 1,
    };
    // Named segments, as processes would have: a rank whose engine is dropped lets go of its
    // segment's lock, and its peers see it gone (an anonymous segment would look alive).
    let group = format!("soak-{}-{first}", std::process::id());
    let members = InProcessCollective::group(RANKS);
    let digests = Arc::new(Mutex::new(Vec::<(u64, u32, u64)>::new()));
    let outcomes = Mutex::new(Vec::<(u32, Outcome)>::new());
    // Every rank that stays keeps its engine until every such rank has ended its faulty step: a
    // rank that returned early would drop its segment, and its peers would rightly call it lost.
    let staying = match fault {
        Some((Fault::PeerLost, _)) => RANKS - 1,
        _ => RANKS,
    };
    let stay = Gate::new(staying);
    std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .enumerate()
            .map(|(rank, mut member)| {
                let digests = Arc::clone(&digests);
                let (group, outcomes, stay) = (&group, &outcomes, &stay);
                scope.spawn(move || -> Result<(), String> {
                    let rank = rank as u32;
                    let mut engine = Engine::shared_memory(config(), group, rank, options)
                        .map_err(|e| format!("rank {rank}: {e}"))?;
                    for layer in 0..LAYERS {
                        for expert in rank * 4..rank * 4 + 4 {
                            engine
                                .write_master(layer, expert, &weights(layer, expert, 0))
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    let mut order = Draws(seed ^ first);
                    let mut done = 0;
                    let mut round = (first / 6) as u32;
                    while done < steps {
                        for step in interleaving(&mut order, round) {
                            if done == steps {
                                break;
                            }
                            let index = first + done;
                            let report = engine
                                .step_gathered(
                                    step,
                                    &mut member,
                                    RouterOutput::Ids(&[&ids(seed, index, rank)]),
                                )
                                .map_err(|e| format!("rank {rank} {step}: {e}"))?;
                            check_replicas(&engine, step)
                                .map_err(|e| format!("rank {rank} {step}: {e}"))?;
                            digests.lock().map_err(|e| e.to_string())?.push((
                                index,
                                rank,
                                engine.digest(),
                            ));
                            if rank == 0 {
                                let mut tally = tally.lock().map_err(|e| e.to_string())?;
                                tally.steps += 1;
                                tally.copies += u64::from(report.copies);
                            }
                            done += 1;
                        }
                        round += 1;
                    }
                    let Some((fault, victim)) = fault else {
                        return Ok(());
                    };
                    // The faulty step: a hot expert on the victim's rank, so that it sends.
                    let step = StepId::new(round * 2, 0);
                    let raw: Vec<u32> = (0..64u32)
                        .flat_map(|t| {
                            [
                                victim * 4,
                                (t + rank) % 32,
                                (t * 3 + 1) % 32,
                                (t * 5 + 2) % 32,
                            ]
                        })
                        .collect();
                    let distinct = dedupe_tokens(&raw, victim * 4);
                    if rank == victim {
                        engine.inject_transfer_failure(1);
                    }
                    let result =
                        engine.step_gathered(step, &mut member, RouterOutput::Ids(&[&distinct]));
                    outcomes
                        .lock()
                        .map_err(|e| e.to_string())?
                        .push((rank, Outcome::of(&result)));
                    if rank == victim && fault == Fault::PeerLost {
                        drop(engine);
                        return Ok(());
                    }
                    let checked = match &result {
                        Err(error) => {
                            check_failed_step(&engine, rank, error).and_then(|unreadable| {
                                let mut tally = tally.lock().map_err(|e| e.to_string())?;
                                tally.failed_calls += 1;
                                tally.unreadable_slots += unreadable;
                                Ok(())
                            })
                        }
                        Ok(_) => Ok(()),
                    };
                    stay.arrive_and_wait(Duration::from_secs(10))?;
                    checked
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| "a rank panicked".to_string())??;
        }
        Ok::<(), String>(())
    })?;
    if let Some((fault, victim)) = fault {
        let outcomes = outcomes.into_inner().map_err(|e| e.to_string())?;
        check_fault_outcomes(fault, victim, &outcomes)?;
    }
    // Every rank planned every step alike.
    let digests = digests.lock().map_err(|e| e.to_string())?;
    let mut by_step: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for &(index, _, digest) in digests.iter() {
        by_step.entry(index).or_default().push(digest);
    }
    for (index, digests) in by_step {
        if digests.len() != RANKS as usize || digests.iter().any(|&d| d != digests[0]) {
            return Err(format!(
                "step {index}: the ranks' plans differ: {digests:?}"
            ));
        }
    }
    Ok(())
}

/// A barrier whose wait ends after a time limit: a rank that failed before reaching it makes
/// the others' waits fail, never hang.
struct Gate {
    arrived: Mutex<u32>,
    all: std::sync::Condvar,
    expected: u32,
}

impl Gate {
    fn new(expected: u32) -> Self {
        Self {
            arrived: Mutex::new(0),
            all: std::sync::Condvar::new(),
            expected,
        }
    }

    fn arrive_and_wait(&self, limit: Duration) -> Result<(), String> {
        let mut arrived = self.arrived.lock().map_err(|e| e.to_string())?;
        *arrived += 1;
        self.all.notify_all();
        let (arrived, waited) = self
            .all
            .wait_timeout_while(arrived, limit, |arrived| *arrived < self.expected)
            .map_err(|e| e.to_string())?;
        if waited.timed_out() {
            return Err(format!(
                "{} of {} ranks reached the gate",
                *arrived, self.expected
            ));
        }
        Ok(())
    }
}

/// How one rank's faulty step ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Done,
    PeerLost(u32),
    Timeout,
    TransferFailed,
    Other,
}

impl Outcome {
    fn of<T>(result: &Result<T, RuntimeError>) -> Self {
        match result {
            Ok(_) => Self::Done,
            Err(RuntimeError::PeerLost { rank }) => Self::PeerLost(*rank),
            Err(RuntimeError::Timeout { .. }) => Self::Timeout,
            Err(RuntimeError::Transfer(_)) => Self::TransferFailed,
            Err(_) => Self::Other,
        }
    }
}

/// What every rank's faulty step must have ended with. The victim's own transfer fails. When the
/// victim is dropped, every peer whose step failed names it as lost (no timeout: its segment's
/// owner is gone, and every wait sees that), and at least one peer failed; when it stays, no
/// peer calls anyone lost.
fn check_fault_outcomes(
    fault: Fault,
    victim: u32,
    outcomes: &[(u32, Outcome)],
) -> Result<(), String> {
    let wrong = |what: &str| Err(format!("{fault:?} on rank {victim}: {what}: {outcomes:?}"));
    if outcomes.len() != RANKS as usize {
        return wrong("not every rank reported");
    }
    if !outcomes.contains(&(victim, Outcome::TransferFailed)) {
        return wrong("the victim's transfer did not fail");
    }
    let peers = || outcomes.iter().filter(|(rank, _)| *rank != victim);
    match fault {
        Fault::PeerLost => {
            if let Some(other) = peers().find(|(_, outcome)| {
                !matches!(outcome, Outcome::Done) && *outcome != Outcome::PeerLost(victim)
            }) {
                return wrong(&format!("rank {} ended otherwise", other.0));
            }
            if !peers().any(|(_, outcome)| *outcome == Outcome::PeerLost(victim)) {
                return wrong("no peer saw the victim lost");
            }
        }
        Fault::TransferFails => {
            if peers().any(|(_, outcome)| matches!(outcome, Outcome::PeerLost(_))) {
                return wrong("a peer was called lost, but every rank stayed");
            }
        }
    }
    Ok(())
}

/// Rows of four distinct experts per token, `hot` first.
fn dedupe_tokens(ids: &[u32], hot: u32) -> Vec<u32> {
    ids.chunks(4)
        .flat_map(|token| {
            let mut experts = vec![hot];
            for &id in token {
                let mut id = id % EXPERTS;
                while experts.contains(&id) {
                    id = (id + 1) % EXPERTS;
                }
                if experts.len() < 4 {
                    experts.push(id);
                }
            }
            experts
        })
        .collect()
}

/// Every replica of `step` held here computes with its master's weights.
fn check_replicas(engine: &Engine, step: StepId) -> Result<(), String> {
    let plan = engine.plan(step).ok_or("no plan")?;
    for (index, instance) in plan.instances().iter().enumerate() {
        if engine.local_ranks().contains(&instance.rank) {
            let held = engine
                .instance_weights(step, index as u32)
                .map_err(|e| e.to_string())?;
            if held.as_ref() != weights(step.layer, instance.expert, 0).as_slice() {
                return Err(format!(
                    "expert {} on rank {} is not its master's",
                    instance.expert, instance.rank
                ));
            }
        }
    }
    Ok(())
}

/// After a failed step: the slots its transfer was writing here refuse to be read, and the
/// masters are as written. Returns the slots checked.
fn check_failed_step(engine: &Engine, rank: u32, error: &RuntimeError) -> Result<u64, String> {
    if !matches!(
        error,
        RuntimeError::Timeout { .. } | RuntimeError::PeerLost { .. } | RuntimeError::Transfer(_)
    ) {
        return Err(format!("rank {rank}: an unexpected error {error}"));
    }
    let mut unreadable = 0;
    for fanout in engine.last_schedule().fanouts() {
        for &(to, slot) in &fanout.destinations {
            if to == rank {
                if !matches!(
                    engine.read_slot(to, slot),
                    Err(RuntimeError::SlotNotReady { .. })
                ) {
                    return Err(format!(
                        "rank {rank}: slot {slot} readable after a failed copy"
                    ));
                }
                unreadable += 1;
            }
        }
    }
    for layer in 0..LAYERS {
        for expert in rank * 4..rank * 4 + 4 {
            let master = engine
                .read_master(layer, expert)
                .map_err(|e| e.to_string())?;
            if master.as_ref() != weights(layer, expert, 0).as_slice() {
                return Err(format!(
                    "rank {rank}: master {expert} of layer {layer} changed"
                ));
            }
        }
    }
    Ok(unreadable)
}

/// This process's resident memory now and its peak so far (`VmRSS`, `VmHWM`), in KiB (Linux).
fn resident_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn thousands_of_steps_with_faults_keep_every_promise_and_memory_flat() {
    let steps: u64 = std::env::var("ULTRAEP_SOAK_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let seed = 0x5eed_2026;
    let tally = Mutex::new(Tally::default());
    let mut draws = Draws(seed);
    let (mut first, mut episodes, mut start_kib) = (0, 0, (0, 0));
    let mut fault_before = false;
    while first < steps {
        let length = STEPS_PER_EPISODE.min(steps - first);
        let fault = (first + length < steps).then(|| {
            let kind = if draws.below(2) == 0 {
                Fault::TransferFails
            } else {
                Fault::PeerLost
            };
            (kind, draws.below(u64::from(RANKS)) as u32)
        });
        let steps_before = tally.lock().unwrap().steps;
        episode(seed, first, length, fault, &tally).unwrap();
        let mut tally = tally.lock().unwrap();
        // A recovery is a rebuilt group that works: the episode after a fault ran all its steps,
        // every replica its master's and every rank's plan alike (`episode` checks both).
        if fault_before && tally.steps == steps_before + length {
            tally.recoveries += 1;
        }
        if let Some((kind, _)) = fault {
            tally.faults += 1;
            tally.lost_peers += u64::from(kind == Fault::PeerLost);
        }
        fault_before = fault.is_some();
        drop(tally);
        first += length;
        episodes += 1;
        if episodes == 1 {
            start_kib = resident_kib();
        }
    }
    let end_kib = resident_kib();
    let tally = tally.into_inner().unwrap();
    assert_eq!(tally.steps, steps);
    assert!(
        tally.copies > steps / 4,
        "the loads moved replicas: {tally:?}"
    );
    assert!(tally.faults >= steps / STEPS_PER_EPISODE - 1, "{tally:?}");
    assert_eq!(
        tally.recoveries, tally.faults,
        "every fault recovered from: {tally:?}"
    );
    assert!(
        tally.failed_calls >= tally.faults,
        "every fault failed a call: {tally:?}"
    );
    // Flat: now and at its peak, at most 16 MiB more than after the first episode, however many
    // steps ran (the peak includes every episode's group at work).
    assert!(
        end_kib.0 <= start_kib.0 + 16 * 1024 && end_kib.1 <= start_kib.1 + 16 * 1024,
        "resident memory (now, peak) grew from {start_kib:?} KiB to {end_kib:?} KiB"
    );
    if std::env::var_os("ULTRAEP_SOAK_REPORT").is_some() {
        println!(
            "soak: {} steps, {} copies, {} faults injected ({} peers lost), {} calls failed, {} slots checked unreadable, {} recoveries; resident memory (now, peak) {} and {} KiB after the first episode, {} and {} KiB at the end",
            tally.steps,
            tally.copies,
            tally.faults,
            tally.lost_peers,
            tally.failed_calls,
            tally.unreadable_slots,
            tally.recoveries,
            start_kib.0,
            start_kib.1,
            end_kib.0,
            end_kib.1
        );
    }
}
