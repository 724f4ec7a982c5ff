//! The Python binding of ultraep (the `ultraep._ultraep` extension module): the planner on a load
//! matrix given as a numpy array, read in place, and its plan as numpy arrays; one rank's
//! host-driven engine (`engine`); recorded traces and the MoE step simulator (`simulate`).
//!
//! The `ultraep` Python package (`python/ultraep/`) wraps it: it accepts anything numpy can view
//! without a copy (a CPU torch tensor included) and documents the calls; `_ultraep.pyi` types
//! them. Bad arguments arrive as `ValueError` (values and shapes) or `TypeError` (dtypes), what the
//! engine refuses or reports as the `ultraep.Error` hierarchy (`errors`), each with the library's
//! message; planning runs with the GIL released.

mod collective;
mod engine;
mod errors;
mod rehome;
mod simulate;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use ultraep_plan::{
    Balancer, ExpertLayout, InstanceCost, LoadMatrix, Plan, PlanConfig, Planner, RankDomains,
    RankSplit, SplitEntry, SplitMode,
};

pub(crate) fn value_error(error: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(error.to_string())
}

/// The split mode named `name`.
fn split_mode(name: &str) -> PyResult<SplitMode> {
    match name {
        "locality" => Ok(SplitMode::LocalityAware),
        "proportional" => Ok(SplitMode::Proportional),
        "contiguous" => Ok(SplitMode::Contiguous),
        "none" => Ok(SplitMode::None),
        other => Err(value_error(format!(
            "split {other:?}: use \"locality\", \"proportional\", \"contiguous\" or \"none\""
        ))),
    }
}

/// The exact-load planner of one expert-parallel group.
#[pyclass(module = "ultraep._ultraep", name = "Planner")]
struct PyPlanner {
    planner: Planner,
    ranks: usize,
    experts: usize,
}

#[pymethods]
impl PyPlanner {
    #[new]
    #[pyo3(signature = (homes, domains, slots_per_rank = 2, *, tolerance_ppm = 10_000, min_replica_tokens = 1024, master_keeps_token = true, split = "locality", token_cost = 1, instance_cost = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        homes: Vec<u32>,
        domains: Vec<u32>,
        slots_per_rank: u32,
        tolerance_ppm: u32,
        min_replica_tokens: u32,
        master_keeps_token: bool,
        split: &str,
        token_cost: u32,
        instance_cost: u64,
    ) -> PyResult<Self> {
        let ranks = domains.len();
        let experts = homes.len();
        let layout = ExpertLayout::from_homes(ranks as u32, homes).map_err(value_error)?;
        let domains = RankDomains::from_labels(domains).map_err(value_error)?;
        let config = PlanConfig {
            tolerance_ppm,
            min_replica_tokens,
            master_keeps_token,
            split: split_mode(split)?,
            cost: InstanceCost {
                per_token: token_cost.max(1),
                per_instance: instance_cost,
            },
            transfer: None,
        };
        let planner = Planner::new(layout, domains, slots_per_rank, config).map_err(value_error)?;
        Ok(Self {
            planner,
            ranks,
            experts,
        })
    }

    /// Ranks of the group.
    #[getter]
    fn ranks(&self) -> usize {
        self.ranks
    }

    /// Experts of a layer.
    #[getter]
    fn experts(&self) -> usize {
        self.experts
    }

    /// Plans `loads` (tokens from every rank to every expert: a C-contiguous 2-D array of uint32,
    /// or of int32 with no negative count), read in place.
    fn plan(&mut self, py: Python<'_>, loads: &Bound<'_, PyAny>) -> PyResult<PyPlan> {
        let counts = Counts::from_array(loads, self.ranks, self.experts)?;
        let words = counts.words()?;
        let ranks = self.ranks;
        let experts = self.experts;
        let planner = &mut self.planner;
        let result = py.detach(|| -> Result<(Plan, Vec<u32>), String> {
            let matrix = LoadMatrix::new(words, ranks, experts).map_err(|e| e.to_string())?;
            let mut plan = Plan::default();
            planner
                .plan_into(matrix, &mut plan)
                .map_err(|e| e.to_string())?;
            Ok((plan, words.to_vec()))
        });
        let (plan, loads) = result.map_err(value_error)?;
        Ok(PyPlan {
            plan,
            loads,
            ranks,
            experts,
        })
    }
}

/// A load matrix borrowed from numpy: uint32 as it is, int32 once no count is negative.
enum Counts<'py> {
    Unsigned(PyReadonlyArray2<'py, u32>),
    Signed(PyReadonlyArray2<'py, i32>),
}

impl<'py> Counts<'py> {
    fn from_array(loads: &Bound<'py, PyAny>, ranks: usize, experts: usize) -> PyResult<Self> {
        let counts = if let Ok(array) = loads.extract::<PyReadonlyArray2<'py, u32>>() {
            Counts::Unsigned(array)
        } else if let Ok(array) = loads.extract::<PyReadonlyArray2<'py, i32>>() {
            Counts::Signed(array)
        } else {
            return Err(PyTypeError::new_err(
                "loads must be a 2-D numpy array (or CPU tensor) of uint32 or int32 counts",
            ));
        };
        let shape = match &counts {
            Counts::Unsigned(array) => array.shape().to_vec(),
            Counts::Signed(array) => array.shape().to_vec(),
        };
        if shape != [ranks, experts] {
            return Err(value_error(format!(
                "loads of shape {shape:?}; this planner takes [{ranks}, {experts}] (ranks x experts)"
            )));
        }
        Ok(counts)
    }

    /// The counts as 32-bit words, in place.
    fn words(&self) -> PyResult<&[u32]> {
        let contiguous = || value_error("loads must be C-contiguous (use numpy.ascontiguousarray)");
        match self {
            Counts::Unsigned(array) => array.as_slice().map_err(|_| contiguous()),
            Counts::Signed(array) => {
                let values = array.as_slice().map_err(|_| contiguous())?;
                if let Some(at) = values.iter().position(|&v| v < 0) {
                    return Err(value_error(format!(
                        "loads hold a negative count ({} at flat index {at})",
                        values[at]
                    )));
                }
                Ok(bytemuck::cast_slice(values))
            }
        }
    }
}

/// One plan: instances with quotas, rank loads, metrics, and the token split.
#[pyclass(module = "ultraep._ultraep", name = "Plan")]
struct PyPlan {
    plan: Plan,
    loads: Vec<u32>,
    ranks: usize,
    experts: usize,
}

/// Split entries as a numpy array of rows `[source, expert, instance rank, tokens]`.
type SplitArray<'py> = Bound<'py, PyArray2<i64>>;

/// `values` (rows of `width` values, one after the other) as a 2-D numpy array.
pub(crate) fn table<'py>(
    py: Python<'py>,
    values: Vec<i64>,
    width: usize,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let rows = values.len() / width;
    Ok(Array2::from_shape_vec((rows, width), values)
        .map_err(value_error)?
        .into_pyarray(py))
}

/// Rows of `entries` as `[source, expert, instance rank, tokens]`.
fn split_rows<'py>(
    py: Python<'py>,
    plan: &Plan,
    entries: impl Iterator<Item = SplitEntry>,
) -> PyResult<SplitArray<'py>> {
    let values = entries
        .flat_map(|entry| {
            [
                i64::from(entry.source),
                i64::from(entry.expert),
                i64::from(plan.instances()[entry.instance as usize].rank),
                i64::from(entry.tokens),
            ]
        })
        .collect();
    table(py, values, 4)
}

#[pymethods]
impl PyPlan {
    /// Every instance as a row `[expert, rank, slot, quota]`, grouped by expert, master first;
    /// `slot` is -1 for a master.
    #[getter]
    fn instances<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let rows: Vec<i64> = self
            .plan
            .instances()
            .iter()
            .flat_map(|instance| {
                [
                    i64::from(instance.expert),
                    i64::from(instance.rank),
                    instance.replica_slot.map_or(-1, i64::from),
                    i64::from(instance.quota),
                ]
            })
            .collect();
        table(py, rows, 4)
    }

    /// The load (tokens) of every rank under the plan.
    #[getter]
    fn rank_loads<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.plan.rank_loads().to_vec().into_pyarray(py)
    }

    /// Every rank's tokens for every expert, split among the instances: rows `[source, expert,
    /// rank of the instance, tokens]`, ordered by (expert, source, instance). Empty if the
    /// planner was built with `split="none"`.
    #[getter]
    fn split<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let loads = LoadMatrix::new(&self.loads, self.ranks, self.experts).map_err(value_error)?;
        split_rows(py, &self.plan, self.plan.split(loads))
    }

    /// Rank `rank`'s own part of the contiguous split, from this plan's quotas: the tokens it
    /// sends (its row) and those its instances receive (their columns), as rows like `split`.
    fn rank_split<'py>(
        &self,
        py: Python<'py>,
        rank: u32,
    ) -> PyResult<(SplitArray<'py>, SplitArray<'py>)> {
        let loads = LoadMatrix::new(&self.loads, self.ranks, self.experts).map_err(value_error)?;
        let mut part = RankSplit::default();
        part.compute(&self.plan, loads, rank).map_err(value_error)?;
        Ok((
            split_rows(py, &self.plan, part.row().iter().copied())?,
            split_rows(py, &self.plan, part.columns().iter().copied())?,
        ))
    }

    /// Replicas in the plan.
    #[getter]
    fn replicas(&self) -> u32 {
        self.plan.metrics().replicas
    }

    /// max/mean rank load under the plan.
    #[getter]
    fn imbalance(&self) -> f64 {
        self.plan.metrics().imbalance()
    }

    /// max/mean rank load before balancing (every token at its master).
    #[getter]
    fn initial_imbalance(&self) -> f64 {
        self.plan.metrics().initial_imbalance()
    }

    /// The lowest max/mean any plan could reach.
    #[getter]
    fn lower_bound(&self) -> f64 {
        self.plan.metrics().lower_bound_imbalance()
    }

    /// Tokens that leave their source rank.
    #[getter]
    fn tokens_leaving_source(&self) -> u64 {
        self.plan.metrics().tokens_leaving_source
    }

    /// Tokens that cross scale-up domains.
    #[getter]
    fn tokens_crossing_domains(&self) -> u64 {
        self.plan.metrics().tokens_crossing_domains
    }

    fn __repr__(&self) -> String {
        let metrics = self.plan.metrics();
        format!(
            "Plan(ranks={}, experts={}, replicas={}, imbalance {:.4} -> {:.4})",
            self.ranks,
            self.experts,
            metrics.replicas,
            metrics.initial_imbalance(),
            metrics.imbalance()
        )
    }
}

/// The extension module.
#[pymodule]
fn _ultraep(module: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(module)?;
    module.add_class::<PyPlanner>()?;
    module.add_class::<PyPlan>()?;
    module.add_class::<engine::PyEngine>()?;
    module.add_class::<engine::StepFigures>()?;
    module.add_class::<simulate::PyTrace>()?;
    module.add_class::<rehome::PyLoadHistory>()?;
    module.add_function(wrap_pyfunction!(rehome::rehome, module)?)?;
    module.add_function(wrap_pyfunction!(simulate::simulate, module)?)?;
    Ok(())
}
