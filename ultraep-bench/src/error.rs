//! The one error type of this crate.

use std::path::PathBuf;

use thiserror::Error;
use ultraep_topo::TopoError;

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
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}
