//! One engine per OS process: the tiny MoE example on 8 processes, a rank that dies (or hangs)
//! in the middle of a transfer, a group rebuilt after it, and ranks whose metadata diverged.
//!
//! The process tests start this test binary again, once per rank, running only the test that
//! started them; the environment variable [`ROLE`] tells such a child which rank it is and what
//! to do, and its last line of output says how its calls ended.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ultraep_plan::LoadMatrix;
use ultraep_runtime::{
    Collective, Engine, EngineConfig, InProcessCollective, Mode, PlaneOptions, RouterOutput,
    RuntimeError, ShmCollective, StepId,
};

use crate::fixture::{base_config, weights};

/// `mode:rank:group` for a child process.
const ROLE: &str = "ULTRAEP_PROCESS_TEST_ROLE";
const RANKS: u32 = 8;
/// The peer timeout of these tests: short, so that a hang costs the test little.
const TIMEOUT: Duration = Duration::from_secs(2);

fn config() -> EngineConfig {
    EngineConfig {
        mode: Mode::Prefill,
        workers: 1,
        ..base_config()
    }
}

/// Rank `rank`'s router ids: 48 tokens of top-4, every token wanting `hot`.
pub(crate) fn ids(rank: u32, hot: u32) -> Vec<u32> {
    (0..48u32)
        .flat_map(|t| {
            [
                hot,
                (t * 3 + rank + 1) % 32,
                (t * 5 + 2) % 32,
                (t * 7 + 3) % 32,
            ]
        })
        .collect()
}

/// The load matrix of every rank's [`ids`].
fn matrix(hot: u32) -> Vec<u32> {
    let mut loads = vec![0u32; (RANKS * 32) as usize];
    for rank in 0..RANKS {
        for id in ids(rank, hot) {
            loads[(rank * 32 + id) as usize] += 1;
        }
    }
    loads
}

/// The engine of `rank` with its masters written.
fn rank_engine(engine: &mut Engine, rank: u32) {
    for layer in 0..3 {
        for expert in rank * 4..rank * 4 + 4 {
            engine
                .write_master(layer, expert, &weights(layer, expert, 0))
                .unwrap();
        }
    }
}

/// Every replica of `step` that this engine holds computes with its master's weights.
fn local_replicas_are_right(engine: &Engine, step: StepId) -> bool {
    let plan = engine.plan(step).unwrap();
    plan.instances()
        .iter()
        .enumerate()
        .all(|(index, instance)| {
            !engine.local_ranks().contains(&instance.rank)
                || engine.instance_weights(step, index as u32).unwrap()
                    == weights(step.layer, instance.expert, 0)
        })
}

/// What a child rank does; its last line is `RESULT <outcome> <milliseconds>`.
fn child(mode: &str, rank: u32, group: &str) -> String {
    let options = PlaneOptions {
        timeout: TIMEOUT,
        workers: 1,
    };
    let mut engine = Engine::shared_memory(config(), group, rank, options).unwrap();
    rank_engine(&mut engine, rank);
    let mut gather = ShmCollective::join(group, rank, RANKS, 34, TIMEOUT).unwrap();
    // Layer 0 with expert 0 (rank 0's) hot: every rank takes part, every copy lands.
    let first = StepId::new(0, 0);
    engine
        .step_gathered(first, &mut gather, RouterOutput::Ids(&[&ids(rank, 0)]))
        .unwrap();
    assert!(local_replicas_are_right(&engine, first));
    if mode == "healthy" {
        let second = StepId::new(0, 1);
        let report = engine
            .step_gathered(second, &mut gather, RouterOutput::Ids(&[&ids(rank, 9)]))
            .unwrap();
        assert!(report.copies > 0);
        assert!(local_replicas_are_right(&engine, second));
        return "RESULT ok 0".into();
    }
    // Layer 1 with expert 9 (rank 2's) hot: rank 2 stops after its first tile.
    let victim = rank == 2;
    if victim {
        engine.inject_transfer_failure(1);
    }
    let started = Instant::now();
    let mut result = engine.step_gathered(
        StepId::new(0, 1),
        &mut gather,
        RouterOutput::Ids(&[&ids(rank, 9)]),
    );
    if victim {
        if mode == "die" {
            // A crash in the middle of the transfer: some tiles are out, the rest never come.
            std::process::exit(3);
        }
        // A rank that stops and stays: its peers must not wait for it without end.
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(4);
    }
    // The slots the failed transfer was writing never become readable.
    let mut unready = 0;
    if result.is_err() {
        for fanout in engine.last_schedule().fanouts() {
            for &(to, slot) in &fanout.destinations {
                if to == rank {
                    assert!(matches!(
                        engine.read_slot(to, slot),
                        Err(RuntimeError::SlotNotReady { .. })
                    ));
                    unready += 1;
                }
            }
        }
    } else {
        // Its own transfer went through; the next gather meets the lost rank.
        result = engine.step_gathered(
            StepId::new(0, 2),
            &mut gather,
            RouterOutput::Ids(&[&ids(rank, 5)]),
        );
    }
    let elapsed = started.elapsed().as_millis();
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(RuntimeError::PeerLost { rank: 2 }) => "lost-2".to_string(),
        Err(RuntimeError::PeerLost { .. }) => "lost-other".to_string(),
        Err(RuntimeError::Timeout { .. }) => "timeout".to_string(),
        Err(other) => format!("other:{}", other.to_string().replace(' ', "_")),
    };
    format!("RESULT {outcome} {elapsed} {unready}")
}

/// Removes the shared-memory files of `group` that ranks which did not end normally left behind
/// (a process that dies cannot remove its own).
fn remove_segments(group: &str) {
    let prefix = format!("ultraep-{group}-");
    if let Ok(entries) = std::fs::read_dir("/dev/shm") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Runs this binary's test `test` as every rank of a group in `mode`; returns their outputs.
fn run_group(test: &str, mode: &str) -> Vec<Output> {
    let program = std::env::current_exe().unwrap();
    let group = format!("{mode}-{}", std::process::id());
    let children: Vec<_> = (0..RANKS)
        .map(|rank| {
            Command::new(&program)
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE, format!("{mode}:{rank}:{group}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs: Vec<Output> = Vec::new();
    for (rank, mut child) in children.into_iter().enumerate() {
        // A hanging victim is ended here, after every other rank has returned.
        if mode == "hang" && rank == 2 {
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(1)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        outputs.push(child.wait_with_output().unwrap());
    }
    remove_segments(&group);
    outputs
}

/// The child's `RESULT` line, split.
fn result_of(output: &Output) -> Vec<String> {
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find_map(|line| line.find("RESULT").map(|at| &line[at..]))
        .unwrap_or_else(|| {
            panic!(
                "no result; stdout: {text}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    line.split(' ').skip(1).map(str::to_string).collect()
}

/// If this process is a child, does its part and exits.
fn act_as_child() {
    if let Ok(role) = std::env::var(ROLE) {
        let mut parts = role.splitn(3, ':');
        let (mode, rank, group) = (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().to_string(),
        );
        println!("{}", child(&mode, rank, &group));
        std::process::exit(0);
    }
}

fn survivors_fail_in_time(mode: &str, test: &str, expected: &[&str]) {
    let outputs = run_group(test, mode);
    for (rank, output) in outputs.iter().enumerate() {
        if rank == 2 {
            assert!(!output.status.success(), "the victim exits abnormally");
            continue;
        }
        assert!(output.status.success(), "rank {rank}: {output:?}");
        let result = result_of(output);
        println!("{mode}: rank {rank} ended with {result:?}");
        assert!(
            expected.contains(&result[0].as_str()),
            "rank {rank} ended with {result:?}"
        );
        let elapsed: u128 = result[1].parse().unwrap();
        // Within the limit, with room for a machine of 2 cores running 8 processes.
        assert!(
            elapsed < TIMEOUT.as_millis() + 3000,
            "rank {rank} took {elapsed} ms"
        );
    }
    // The group rebuilt under a new name runs both layers correctly.
    for output in run_group(test, "healthy") {
        assert!(output.status.success(), "{output:?}");
        assert_eq!(result_of(&output)[0], "ok");
    }
}

#[test]
fn a_rank_that_dies_mid_transfer_ends_every_other_ranks_call_with_peer_lost() {
    act_as_child();
    survivors_fail_in_time(
        "die",
        "processes::a_rank_that_dies_mid_transfer_ends_every_other_ranks_call_with_peer_lost",
        &["lost-2"],
    );
}

#[test]
fn a_rank_that_hangs_mid_transfer_ends_every_other_ranks_call_with_a_timeout() {
    act_as_child();
    survivors_fail_in_time(
        "hang",
        "processes::a_rank_that_hangs_mid_transfer_ends_every_other_ranks_call_with_a_timeout",
        &["timeout"],
    );
}

#[test]
fn the_tiny_moe_example_trains_on_8_processes_bit_for_bit() {
    act_as_child();
    // Cargo builds the examples next to the test binaries' folder.
    let deps = std::env::current_exe().unwrap();
    let example = deps
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("tiny_moe"))
        .unwrap();
    assert!(
        example.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        example.display()
    );
    let output = Command::new(example)
        .args(["--processes", "8"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{output:?}");
    assert!(text.contains("8 OS processes over shared memory"), "{text}");
    assert!(!text.contains("NO"), "{text}");
    assert_eq!(text.matches("expert state held 73728 bytes").count(), 8);
}

/// Every rank of an in-process group plans layer 0 twice (the second time from a load its caller
/// hands it; rank `odd_one`'s, if any, is off by one token between two cold experts of one rank)
/// and then gathers a third step; returns how each rank's third step ended.
fn plan_with_one_rank_off(odd_one: Option<u32>) -> Vec<Result<(), RuntimeError>> {
    let engines = Engine::group(config(), PlaneOptions::default()).unwrap();
    let members = InProcessCollective::group(RANKS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .into_iter()
            .zip(members)
            .enumerate()
            .map(|(rank, (mut engine, mut member))| {
                scope.spawn(move || {
                    let rank = rank as u32;
                    rank_engine(&mut engine, rank);
                    assert_eq!(member.rank(), rank);
                    engine.step_gathered(
                        StepId::new(0, 0),
                        &mut member,
                        RouterOutput::Ids(&[&ids(rank, 0)]),
                    )?;
                    let mut loads = matrix(0);
                    if odd_one == Some(rank) {
                        loads[20] -= 1;
                        loads[21] += 1;
                    }
                    let again = StepId::new(1, 0);
                    let report = engine.step(again, LoadMatrix::new(&loads, 8, 32).unwrap())?;
                    assert_eq!(report.copies, 0, "the replicas are in place already");
                    engine
                        .step_gathered(
                            StepId::new(2, 0),
                            &mut member,
                            RouterOutput::Ids(&[&ids(rank, 3)]),
                        )
                        .map(drop)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One rank planning another load than the others makes every rank's next gathered step fail
/// with the divergence error, before any weight moves; without it, every rank goes on.
#[test]
fn a_rank_that_planned_another_load_makes_every_rank_fail_with_divergence() {
    for (rank, outcome) in plan_with_one_rank_off(Some(2)).iter().enumerate() {
        assert!(
            matches!(outcome, Err(RuntimeError::Diverged { rank: 2, .. })),
            "rank {rank}: {outcome:?}"
        );
    }
    for (rank, outcome) in plan_with_one_rank_off(None).iter().enumerate() {
        assert!(outcome.is_ok(), "rank {rank}: {outcome:?}");
    }
}
