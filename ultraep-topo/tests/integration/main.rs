//! Integration tests of `ultraep-topo`: one binary, a module per concern.

mod bad_files;
mod hostile;
mod presets;
mod properties;
