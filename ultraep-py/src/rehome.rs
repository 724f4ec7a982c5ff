//! The slow loop from Python: `ultraep.LoadHistory` (every expert's decaying load) and
//! `ultraep.rehome` (masters swapped between scale-up domains so that their expected loads even
//! out), whose new homes `ultraep.torch.ExpertParallelMoE.change_layout` or
//! `ultraep.Engine.begin_layout_change` carry out.

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use ultraep_plan::{ExpertLayout, LoadHistory, LoadMatrix, RankDomains, RehomeConfig};

use crate::value_error;

/// A decaying history of every expert's load, the same on every rank that records the same loads.
#[pyclass(module = "ultraep._ultraep", name = "LoadHistory")]
pub(crate) struct PyLoadHistory {
    history: LoadHistory,
}

#[pymethods]
impl PyLoadHistory {
    /// An empty history of `experts` experts, decaying by `1 / 2**shift` per recorded step.
    #[new]
    #[pyo3(signature = (experts, shift = 6))]
    fn new(experts: u32, shift: u32) -> PyResult<Self> {
        Ok(Self {
            history: LoadHistory::new(experts, shift).map_err(value_error)?,
        })
    }

    /// Adds one step's loads of a layer: a C-contiguous [ranks, experts] uint32 array.
    fn record(&mut self, loads: PyReadonlyArray2<'_, u32>) -> PyResult<()> {
        let shape = loads.shape().to_vec();
        let words = loads
            .as_slice()
            .map_err(|_| value_error("loads must be a C-contiguous uint32 array"))?;
        let matrix = LoadMatrix::new(words, shape[0], shape[1]).map_err(value_error)?;
        self.history.record(matrix).map_err(value_error)
    }

    /// Every expert's expected load (its decayed sum).
    #[getter]
    fn expected<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.history.expected().to_vec().into_pyarray(py)
    }
}

/// Swaps masters between the hottest and the coldest scale-up domains until their expected loads
/// are within `tolerance_ppm` of the mean or `max_moves` experts moved. Returns the new home of
/// every expert, the moves as rows `[expert, from_rank, to_rank]`, and the largest domain load
/// over the mean before and after.
#[pyfunction]
#[pyo3(signature = (homes, domains, expected, *, tolerance_ppm = 10_000, max_moves = 16))]
#[allow(clippy::type_complexity)]
pub(crate) fn rehome<'py>(
    py: Python<'py>,
    homes: Vec<u32>,
    domains: Vec<u32>,
    expected: PyReadonlyArray1<'_, u64>,
    tolerance_ppm: u32,
    max_moves: u32,
) -> PyResult<(
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray2<i64>>,
    f64,
    f64,
)> {
    let ranks = domains.len() as u32;
    let layout = ExpertLayout::from_homes(ranks, homes).map_err(value_error)?;
    let domains = RankDomains::from_labels(domains).map_err(value_error)?;
    let expected = expected
        .as_slice()
        .map_err(|_| value_error("expected must be a contiguous uint64 array"))?;
    let config = RehomeConfig {
        tolerance_ppm,
        max_moves,
    };
    let rehoming =
        ultraep_plan::rehome(&layout, &domains, expected, &config).map_err(value_error)?;
    let (before, after) = rehoming.imbalance();
    let moves = rehoming
        .moves
        .iter()
        .flat_map(|moved| {
            [
                i64::from(moved.expert),
                i64::from(moved.from),
                i64::from(moved.to),
            ]
        })
        .collect();
    Ok((
        rehoming.layout.homes().to_vec().into_pyarray(py),
        crate::table(py, moves, 3)?,
        before,
        after,
    ))
}
