//! The exceptions of the `ultraep` package: one hierarchy under `ultraep.Error`, a
//! `RuntimeError`, so that a caller catches everything the engine refuses or reports with one
//! `except` clause, and tells a lost peer from a refused call by its class.
//!
//! Bad arguments (a wrong shape, dtype or configuration value) stay `ValueError` and `TypeError`,
//! as everywhere in Python; what the engine refuses in its state, a divergence of the ranks and a
//! failed group are `ultraep.Error`s.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use ultraep_runtime::RuntimeError;

pyo3::create_exception!(
    ultraep,
    Error,
    PyRuntimeError,
    "Every error of ultraep that is not a bad argument: the base class of the others."
);
pyo3::create_exception!(
    ultraep,
    RefusedError,
    Error,
    "The engine refused a call in its present state (no plan for the step, more microbatches in \
     flight than configured, a step not in its backward, masters changed without notice); \
     nothing changed."
);
pyo3::create_exception!(
    ultraep,
    DivergedError,
    Error,
    "The ranks no longer agree on what happened (their metadata digests differ): every rank \
     raises it, and the group has to be rebuilt."
);
pyo3::create_exception!(
    ultraep,
    PeerLostError,
    Error,
    "An operation of the expert-parallel group failed: a peer process died or left, or a \
     collective ran past the group's timeout. The state is not usable afterwards; the group has \
     to be rebuilt, as after any failed collective of torch.distributed."
);

/// The Python exception of an engine error.
pub(crate) fn runtime_error(error: RuntimeError) -> PyErr {
    let message = error.to_string();
    match error {
        RuntimeError::InvalidConfig(_) | RuntimeError::WrongSize { .. } => {
            PyValueError::new_err(message)
        }
        RuntimeError::PeerLost { .. } | RuntimeError::Timeout { .. } => {
            PeerLostError::new_err(message)
        }
        RuntimeError::Diverged { .. } => DivergedError::new_err(message),
        _ => RefusedError::new_err(message),
    }
}

/// Adds the exception classes to the module.
pub(crate) fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add("Error", py.get_type::<Error>())?;
    module.add("RefusedError", py.get_type::<RefusedError>())?;
    module.add("DivergedError", py.get_type::<DivergedError>())?;
    module.add("PeerLostError", py.get_type::<PeerLostError>())?;
    Ok(())
}
