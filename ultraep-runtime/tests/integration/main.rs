//! Integration tests of `ultraep-runtime`.

mod engine;
