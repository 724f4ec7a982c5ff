//! Integration tests of `ultraep-kernels`: the CPU references.

mod references;
