//! `ultraep.Trace` and `ultraep.simulate`: recorded loads and the MoE step simulator of
//! `ultraep-bench`, so that an evaluation can be scripted from Python.

use std::path::PathBuf;

use numpy::ndarray::Array4;
use numpy::{IntoPyArray, PyArray4, PyReadonlyArray4};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use ultraep_bench::simulation::{SimulationInput, simulate as run_simulation};
use ultraep_bench::step::Mode;
use ultraep_bench::tables::scenario_table;
use ultraep_bench::trace::Trace;

fn value_error(error: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(error.to_string())
}

/// Recorded router loads: steps of layers of ranks x experts token counts.
#[pyclass(module = "ultraep._ultraep", name = "Trace", frozen)]
pub(crate) struct PyTrace {
    trace: Trace,
}

#[pymethods]
impl PyTrace {
    /// A trace of `loads`: an array of shape [steps, layers, ranks, experts] of uint32 counts, or
    /// of int32 counts none of which is negative.
    #[new]
    #[pyo3(signature = (loads, *, top_k = None))]
    fn new(loads: &Bound<'_, PyAny>, top_k: Option<u32>) -> PyResult<Self> {
        let array: Array4<u32> = if let Ok(array) = loads.extract::<PyReadonlyArray4<'_, u32>>() {
            array.as_array().to_owned()
        } else if let Ok(array) = loads.extract::<PyReadonlyArray4<'_, i32>>() {
            let array = array.as_array();
            if let Some(negative) = array.iter().find(|&&count| count < 0) {
                return Err(value_error(format!(
                    "loads hold a negative count ({negative})"
                )));
            }
            array.mapv(|count| count as u32)
        } else {
            return Err(PyTypeError::new_err(
                "loads must be a 4-D array [steps, layers, ranks, experts] of uint32 or int32 counts",
            ));
        };
        let &[steps, layers, ranks, experts] = array.shape() else {
            return Err(value_error("loads must have 4 dimensions"));
        };
        if layers == 0 || ranks == 0 || experts == 0 {
            return Err(value_error(format!(
                "loads of shape {:?}: layers, ranks and experts must not be 0",
                array.shape()
            )));
        }
        if top_k == Some(0) {
            return Err(value_error("top_k must not be 0"));
        }
        let too_large = |what: &str| value_error(format!("{what} do not fit in 32 bits"));
        let ranks_u32 = u32::try_from(ranks).map_err(|_| too_large("ranks"))?;
        let experts_u32 = u32::try_from(experts).map_err(|_| too_large("experts"))?;
        let steps = (0..steps)
            .map(|step| {
                (0..layers)
                    .map(|layer| {
                        let matrix = array.slice(numpy::ndarray::s![step, layer, .., ..]);
                        matrix.iter().copied().collect()
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            trace: Trace {
                ranks: ranks_u32,
                experts: experts_u32,
                top_k,
                steps,
                layouts: Vec::new(),
            },
        })
    }

    /// Reads a JSON-lines trace file or a TensorRT-LLM expert-statistics directory.
    #[staticmethod]
    fn read(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let trace = py.detach(|| Trace::load(&path)).map_err(value_error)?;
        Ok(Self { trace })
    }

    /// Parses a JSON-lines trace.
    #[staticmethod]
    fn from_jsonl(text: &str) -> PyResult<Self> {
        let trace = Trace::from_jsonl(text, "the text").map_err(value_error)?;
        Ok(Self { trace })
    }

    /// The trace as JSON lines (what `ultraep simulate --trace` reads).
    fn to_jsonl(&self) -> PyResult<String> {
        self.trace.to_jsonl().map_err(value_error)
    }

    /// The loads, as a uint32 array of shape [steps, layers, ranks, experts].
    #[getter]
    fn loads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray4<u32>>> {
        let trace = &self.trace;
        let shape = (
            trace.steps.len(),
            trace.layers() as usize,
            trace.ranks as usize,
            trace.experts as usize,
        );
        let values: Vec<u32> = trace.steps.iter().flatten().flatten().copied().collect();
        Ok(Array4::from_shape_vec(shape, values)
            .map_err(value_error)?
            .into_pyarray(py))
    }

    /// Source ranks.
    #[getter]
    fn ranks(&self) -> u32 {
        self.trace.ranks
    }

    /// Routed experts.
    #[getter]
    fn experts(&self) -> u32 {
        self.trace.experts
    }

    /// Experts per token, where recorded.
    #[getter]
    fn top_k(&self) -> Option<u32> {
        self.trace.top_k
    }

    /// Layers per step.
    #[getter]
    fn layers(&self) -> u32 {
        self.trace.layers()
    }

    /// Steps.
    #[getter]
    fn steps(&self) -> usize {
        self.trace.steps.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Trace(steps={}, layers={}, ranks={}, experts={}, top_k={:?})",
            self.trace.steps.len(),
            self.trace.layers(),
            self.trace.ranks,
            self.trace.experts,
            self.trace.top_k
        )
    }
}

/// Runs every balancer through the MoE step simulator, on a published scenario or on `trace`;
/// returns the result as JSON and its Markdown table. The GIL is released while it runs.
#[pyfunction]
#[pyo3(signature = (scenario = None, *, trace = None, model = "Qwen3-235B", mode = "prefill", sequence = 8192, full = false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn simulate(
    py: Python<'_>,
    scenario: Option<String>,
    trace: Option<PyRef<'_, PyTrace>>,
    model: &str,
    mode: &str,
    sequence: u64,
    full: bool,
) -> PyResult<(String, String)> {
    let mode = match mode {
        "training" => Mode::Training,
        "prefill" => Mode::Prefill,
        "decode" => Mode::Decode,
        other => {
            return Err(value_error(format!(
                "mode {other:?}: use \"training\", \"prefill\" or \"decode\""
            )));
        }
    };
    let input = match trace {
        Some(trace) => SimulationInput::Trace {
            trace: trace.trace.clone(),
            source: "the trace".into(),
            model: model.to_owned(),
            mode,
            sequence,
        },
        None => SimulationInput::Scenario(scenario),
    };
    let result = py
        .detach(|| run_simulation(&input, full))
        .map_err(value_error)?;
    let json = serde_json::to_string(&result).map_err(value_error)?;
    Ok((json, scenario_table(&result)))
}
