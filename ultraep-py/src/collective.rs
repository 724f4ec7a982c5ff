//! A `Collective` whose operations are a Python object's methods: how `Engine.step_by_domain`
//! reaches the caller's communication library (`torch.distributed` in `ultraep.torch`).
//!
//! The object has `all_gather(local) -> gathered` (a 1-D uint32 array in, every rank's, rank
//! after rank, out) and may have `all_reduce_sum(local) -> sums` (element-wise, on every rank);
//! without it the sum goes through `all_gather`. An exception in either becomes a
//! `RuntimeError::Collective` naming it inside the engine, which fails the step on this rank as
//! any collective failure would; the exception itself is kept, and `Engine.step_by_domain` raises
//! it, so that a `PeerLostError` from the caller's collective arrives as one.

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use ultraep_runtime::{Collective, RuntimeError};

/// The caller's collective, as Python methods.
pub(crate) struct PyCollective<'py> {
    object: Bound<'py, PyAny>,
    rank: u32,
    ranks: u32,
    /// The first exception a method raised, raised again once the engine has failed the step.
    failure: Option<PyErr>,
}

impl<'py> PyCollective<'py> {
    pub(crate) fn new(object: Bound<'py, PyAny>, rank: u32, ranks: u32) -> Self {
        Self {
            object,
            rank,
            ranks,
            failure: None,
        }
    }

    /// The exception a method raised, if one did.
    pub(crate) fn take_failure(&mut self) -> Option<PyErr> {
        self.failure.take()
    }

    /// Calls `method` on `local` and copies the uint32 array it returns into `out`.
    fn call(&mut self, method: &str, local: &[u32], out: &mut [u32]) -> Result<(), RuntimeError> {
        let failed = |error: String| RuntimeError::Collective(format!("{method}: {error}"));
        let py = self.object.py();
        let array = PyArray1::from_slice(py, local);
        let result = match self.object.call_method1(method, (array,)) {
            Ok(result) => result,
            Err(error) => {
                let message = failed(error.to_string());
                self.failure.get_or_insert(error);
                return Err(message);
            }
        };
        let values: PyReadonlyArray1<'_, u32> = result
            .extract()
            .map_err(|_| failed("it must return a 1-D uint32 array".into()))?;
        let values = values
            .as_slice()
            .map_err(|_| failed("it must return a contiguous array".into()))?;
        if values.len() != out.len() {
            return Err(failed(format!(
                "it returned {} values, not {}",
                values.len(),
                out.len()
            )));
        }
        out.copy_from_slice(values);
        Ok(())
    }
}

impl Collective for PyCollective<'_> {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn ranks(&self) -> u32 {
        self.ranks
    }

    fn all_gather(&mut self, local: &[u32], gathered: &mut [u32]) -> Result<(), RuntimeError> {
        self.call("all_gather", local, gathered)
    }

    fn all_reduce_sum(
        &mut self,
        local: &[u32],
        sums: &mut [u32],
        scratch: &mut Vec<u32>,
    ) -> Result<(), RuntimeError> {
        let reduces = self
            .object
            .hasattr("all_reduce_sum")
            .map_err(|error| RuntimeError::Collective(error.to_string()))?;
        if reduces {
            self.call("all_reduce_sum", local, sums)
        } else {
            self.prefix_sums(local, sums, scratch, self.ranks)
        }
    }
}
