//! Integration tests of `ultraep-xfer`: one binary, a module per concern.

mod checksums;
mod chosen;
mod migration;
mod properties;
mod replicas;
mod simulation;
#[path = "../../../test-support/skewed_layer.rs"]
mod skewed_layer;
mod tasks;
