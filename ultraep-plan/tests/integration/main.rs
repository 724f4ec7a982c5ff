//! Integration tests of `ultraep-plan`: one binary, a module per concern.

mod accessors;
mod allocation;
mod baselines;
mod cost;
mod eplb;
mod errors;
mod invariants;
mod properties;
mod reference;
mod rehome;
