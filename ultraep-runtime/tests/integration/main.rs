//! Integration tests of `ultraep-runtime`.

mod engine;
mod fixture;
mod in_flight;
mod routing;
mod tiny_moe;
