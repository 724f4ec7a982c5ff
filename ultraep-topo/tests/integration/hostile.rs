//! Regression tests for hostile topology files: errors stay one short line, and files with very
//! many domains or rank overrides are checked in n log n (each case here took 13-29 s when the
//! checks compared every name and override with every earlier one).

use ultraep_topo::{TopoError, Topology};

const LINKS: &str = "[links]\nscale_up_egress_gb_per_s = 450\nscale_up_ingress_gb_per_s = 450\nscale_up_latency_us = 1\nscale_out_gb_per_s = 50\nscale_out_latency_us = 3\n";

#[test]
fn a_syntax_error_is_one_line_that_does_not_echo_the_input() {
    let long = "x".repeat(1 << 20);
    let text = format!("name = \"t\"\n{LINKS}\nbroken = {long}\n");
    let error = Topology::from_toml_str(&text).unwrap_err();
    assert!(matches!(error, TopoError::Syntax { .. }));
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.len() < 400, "{} bytes", message.len());
    assert!(message.contains("line 9, column 10"), "{message}");
}

#[test]
fn a_hundred_thousand_one_rank_domains_are_read() {
    let mut text = format!("name = \"t\"\n{LINKS}");
    for rank in 0..100_000 {
        text.push_str(&format!(
            "[[domain]]\nname = \"d{rank}\"\nranks = \"{rank}\"\n"
        ));
    }
    let topology = Topology::from_toml_str(&text).unwrap();
    assert_eq!(topology.domain_count(), 100_000);
    // The same with one name repeated at the end is refused, naming it.
    text.push_str("[[domain]]\nname = \"d7\"\nranks = \"100000\"\n");
    let error = Topology::from_toml_str(&text).unwrap_err();
    assert!(
        matches!(&error, TopoError::DuplicateDomainName { name } if name == "d7"),
        "{error}"
    );
}

#[test]
fn two_hundred_thousand_rank_overrides_are_read() {
    let mut text =
        format!("name = \"t\"\n{LINKS}[[domain]]\nname = \"all\"\nranks = \"0-199999\"\n");
    for rank in 0..200_000 {
        text.push_str(&format!(
            "[[rank]]\nid = {rank}\nlinks = {{ scale_out_gb_per_s = 25 }}\n"
        ));
    }
    let topology = Topology::from_toml_str(&text).unwrap();
    assert_eq!(topology.rank_count(), 200_000);
    text.push_str("[[rank]]\nid = 5\nlinks = { scale_out_gb_per_s = 20 }\n");
    let error = Topology::from_toml_str(&text).unwrap_err();
    assert!(
        matches!(error, TopoError::RankOverriddenTwice { rank: 5 }),
        "{error}"
    );
}
