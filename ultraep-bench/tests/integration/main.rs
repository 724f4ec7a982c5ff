//! Integration tests of `ultraep-bench`: the `ultraep` command as a user runs it.

mod evaluation;
mod fuzz_corpus;
mod hostile;
mod plan;
mod topo;
mod trace;
mod xfer;
