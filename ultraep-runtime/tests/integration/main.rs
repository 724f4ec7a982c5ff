//! Integration tests of `ultraep-runtime`.

mod allocation;
mod by_domain;
mod engine;
mod ep64;
mod fixture;
mod host_driven;
mod host_plane;
mod in_flight;
mod layout_change;
mod processes;
mod program;
mod properties;
mod rank_split;
mod residency;
mod routing;
#[path = "../../../test-support/skewed_layer.rs"]
mod skewed_layer;
mod soak;
mod tiny_moe;
