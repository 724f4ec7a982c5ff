//! `ultraep plan`: a plan that keeps every promise, and one clear exit-2 error per malformed input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `ultraep plan --input - ARGS` with `input` on standard input.
fn plan(input: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args(["plan", "--input", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the ultraep binary runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("the input is written");
    child.wait_with_output().expect("ultraep finishes")
}

const WORKED_EXAMPLE: &str = r#"{"num_ranks": 4, "experts_per_rank": 1, "slots_per_rank": 1, "domain_size": 4,
  "loads": [[100, 10, 10, 0], [100, 10, 0, 10], [100, 0, 10, 10], [100, 10, 10, 10]]}"#;

#[test]
fn plans_the_worked_example() {
    let out = plan(WORKED_EXAMPLE, &["--min-replica-tokens", "1"]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("the output is JSON");
    assert_eq!(json["balancer"], "ultraep");
    assert_eq!(json["rank_loads"], serde_json::json!([124, 124, 124, 118]));
    assert_eq!(json["replicas"], 3);
    assert_eq!(json["tokens_leaving_source"], 84);
    // Quotas sum to each expert's load; split entries sum to each source's tokens.
    let instances = json["instances"].as_array().unwrap();
    let expert0: u64 = instances
        .iter()
        .filter(|i| i["expert"] == 0)
        .map(|i| i["quota"].as_u64().unwrap())
        .sum();
    assert_eq!(expert0, 400);
    let split = json["split"].as_array().unwrap();
    let from_source3: u64 = split
        .iter()
        .filter(|e| e["source"] == 3)
        .map(|e| e["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(from_source3, 130);
    // Planning is timed only when asked: without --time the command plans once.
    assert!(json.get("plan_micros").is_none(), "{json}");
    let timed = plan(WORKED_EXAMPLE, &["--min-replica-tokens", "1", "--time"]);
    let json: Value = serde_json::from_slice(&timed.stdout).expect("the output is JSON");
    assert!(json["plan_micros"].as_f64().unwrap() > 0.0);
}

#[test]
fn baselines_plan_the_same_file() {
    let none = plan(WORKED_EXAMPLE, &["--balancer", "none"]);
    let json: Value = serde_json::from_slice(&none.stdout).expect("JSON");
    assert_eq!(json["rank_loads"], serde_json::json!([400, 30, 30, 30]));
    let eplb = plan(WORKED_EXAMPLE, &["--balancer", "eplb"]);
    let json: Value = serde_json::from_slice(&eplb.stdout).expect("JSON");
    assert_eq!(json["balancer"], "eplb");
    // EPLB spends every slot: three on expert 0 (then capped at one copy per rank), one on
    // expert 1; its even split leaves ranks 2 and 3 at 130 (ultraep: 124 with three replicas).
    assert_eq!(json["replicas"], 4);
    assert_eq!(json["rank_loads"], serde_json::json!([115, 115, 130, 130]));
}

/// Expects exit status 2 and a one-line message containing `fragment`.
fn refused(input: &str, fragment: &str) {
    let out = plan(input, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        message.trim_end().lines().count(),
        1,
        "one line: {message:?}"
    );
    assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
}

macro_rules! malformed {
    ($test:ident, $input:expr, $fragment:expr) => {
        #[test]
        fn $test() {
            refused($input, $fragment);
        }
    };
}

malformed!(
    wrong_row_count,
    r#"{"num_ranks": 3, "experts_per_rank": 1, "slots_per_rank": 1, "domain_size": 1, "loads": [[1, 2, 3], [1, 2, 3]]}"#,
    "loads has 2 rows, but num_ranks is 3"
);
malformed!(
    wrong_row_length,
    r#"{"num_ranks": 2, "experts_per_rank": 1, "slots_per_rank": 1, "domain_size": 2, "loads": [[1, 2], [1]]}"#,
    "row 1 of loads has 1 entries"
);
malformed!(
    negative_count,
    r#"{"num_ranks": 1, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 1, "loads": [[-1]]}"#,
    "invalid value: integer `-1`"
);
malformed!(
    non_integer_count,
    r#"{"num_ranks": 1, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 1, "loads": [[1.5]]}"#,
    "floating point `1.5`"
);
malformed!(
    overflowing_count,
    r#"{"num_ranks": 1, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 1, "loads": [[4294967296]]}"#,
    "4294967296"
);
malformed!(
    overflowing_expert_total,
    r#"{"num_ranks": 2, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 2, "loads": [[4294967295, 0], [1, 0]]}"#,
    "more than 2^32 - 1"
);
malformed!(
    experts_not_divisible_without_home,
    r#"{"num_ranks": 2, "experts_per_rank": 2, "slots_per_rank": 0, "domain_size": 2, "loads": [[1, 2, 3], [1, 2, 3]]}"#,
    "3 experts are not divisible by experts_per_rank 2"
);
malformed!(
    experts_that_do_not_fill_the_ranks,
    r#"{"num_ranks": 2, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 2, "loads": [[1, 2, 3], [1, 2, 3]]}"#,
    "need 3 ranks, but num_ranks is 2"
);
malformed!(
    home_out_of_range,
    r#"{"num_ranks": 2, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 2, "loads": [[1, 2, 3], [1, 2, 3]], "home": [0, 1, 2]}"#,
    "expert 2 has home rank 2, but there are only 2 ranks"
);
malformed!(
    home_of_the_wrong_length,
    r#"{"num_ranks": 2, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 2, "loads": [[1, 2, 3], [1, 2, 3]], "home": [0, 1]}"#,
    "home has 2 entries, but loads has 3 experts"
);
malformed!(
    domain_size_not_dividing_the_ranks,
    r#"{"num_ranks": 4, "experts_per_rank": 1, "slots_per_rank": 1, "domain_size": 3, "loads": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]}"#,
    "domain_size 3 does not divide num_ranks 4"
);
malformed!(
    zero_ranks,
    r#"{"num_ranks": 0, "experts_per_rank": 1, "slots_per_rank": 1, "domain_size": 1, "loads": []}"#,
    "num_ranks must be at least 1"
);
malformed!(
    missing_field,
    r#"{"num_ranks": 1, "experts_per_rank": 1, "domain_size": 1, "loads": [[1]]}"#,
    "missing field `slots_per_rank`"
);
malformed!(
    unknown_field,
    r#"{"num_ranks": 1, "experts_per_rank": 1, "slots_per_rank": 0, "domain_size": 1, "loads": [[1]], "slot_per_rank": 2}"#,
    "unknown field `slot_per_rank`"
);
malformed!(unparsable_json, r#"{"num_ranks": 1,"#, "EOF while parsing");

#[test]
fn missing_file_is_exit_two() {
    let out = Command::new(env!("CARGO_BIN_EXE_ultraep"))
        .args(["plan", "--input", "/nonexistent/problem.json"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("/nonexistent/problem.json")
    );
}
