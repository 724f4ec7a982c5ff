//! Integration tests of `ultraep-cli`: the `ultraep` command as a user runs it.

mod commands;
#[path = "../../../test-support/bench_fixtures.rs"]
mod fixtures;
mod hostile;
mod plan;
mod report;
mod simulate;
mod topo;
mod xfer;
