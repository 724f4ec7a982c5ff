//! Integration tests of `ultraep-xfer`: one binary, a module per concern.

mod checksums;
mod chosen;
mod cpu;
mod migration;
mod properties;
mod replicas;
mod simulation;
