//! Integration tests of `ultraep-kernels`: the CPU references.

#[path = "../common/mod.rs"]
mod common;
mod references;
