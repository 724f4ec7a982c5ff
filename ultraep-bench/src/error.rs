//! The one error type of this crate.

use std::path::PathBuf;

use thiserror::Error;
use ultraep_plan::PlanError;
use ultraep_runtime::RuntimeError;
use ultraep_topo::TopoError;
use ultraep_xfer::XferError;

/// What can go wrong in a command or an experiment.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A topology could not be built or read.
    #[error(transparent)]
    Topology(#[from] TopoError),
    /// A topology file in particular could not be read.
    #[error("{path}: {source}")]
    TopologyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: TopoError,
    },
    /// A planning problem is malformed (the message names the problem).
    #[error("{source_name}: {message}")]
    InvalidProblem {
        /// Where the problem came from (a path, or "standard input").
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The planner refused a problem.
    #[error("{source_name}: {source}")]
    Plan {
        /// Where the problem came from.
        source_name: String,
        /// The planner's reason.
        source: PlanError,
    },
    /// A transfer schedule could not be built or played.
    #[error(transparent)]
    Transfer(#[from] XferError),
    /// A plan could not be made.
    #[error(transparent)]
    Planning(#[from] PlanError),
    /// The runtime's engine refused or failed.
    #[error(transparent)]
    Engine(#[from] RuntimeError),
    /// A worker thread of a parallel run ended without its result (it panicked).
    #[error("a worker of the parallel run ended without a result")]
    Worker,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}
