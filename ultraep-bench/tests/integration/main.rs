//! Integration tests of `ultraep-bench`: the experiments, the result tables, traces and the
//! fuzz corpus, through the library.

mod evaluation;
#[path = "../../../test-support/bench_fixtures.rs"]
mod fixtures;
mod fuzz_corpus;
mod trace;
