//! The command line's errors: each prints as one line.

use std::path::Path;

/// What can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the library (data, checkpoints, numerics).
    #[error(transparent)]
    Snf(#[from] snf::Error),
    /// A file or folder could not be read or written.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// Arguments that parse but do not fit together or with the run folder.
    #[error("{0}")]
    Usage(String),
    /// Drawing a plot or encoding an image failed.
    #[error("{path}: could not write image: {reason}")]
    Image { path: String, reason: String },
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

pub fn io(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Io { path: path.display().to_string(), reason: e.to_string() }
}
