//! Typed errors. Every public fallible function in `snf` returns [`Result`];
//! library code never panics on user input.

use thiserror::Error;

/// Everything that can go wrong in `snf`.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands disagree in shape.
    #[error("{op}: shape mismatch, expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The operation that checked the shapes.
        op: &'static str,
        /// The shape it needed (rows, cols).
        expected: (usize, usize),
        /// The shape it was given (rows, cols).
        got: (usize, usize),
    },
    /// A matrix that must be square is not.
    #[error("{op}: matrix must be square, got {rows}x{cols}")]
    NotSquare {
        /// The operation that needed a square matrix.
        op: &'static str,
        /// Rows of the offending matrix.
        rows: usize,
        /// Columns of the offending matrix.
        cols: usize,
    },
    /// A dimension or size argument is out of its valid range (zero, too large, ...).
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation that rejected the argument.
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A convolution configuration is invalid, or does not meet a requirement of the
    /// operation (e.g. the self-normalizing gradient of Eq. 15 needs a square
    /// convolution matrix with $\mathcal T(\mathrm{flip}\,k) = \mathcal T(k)^T$).
    #[error("{op}: invalid convolution: {reason}")]
    InvalidConv {
        /// The operation that rejected the configuration.
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a data set failed (see [`DataError`]).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The GPU backend (feature `cuda`) is unavailable or failed: no driver, cuBLAS or
    /// NVRTC on this machine, no such device, a failed launch or copy.
    #[error("{op}: {reason}")]
    Gpu {
        /// The operation.
        op: &'static str,
        /// What happened.
        reason: String,
    },
    /// Reading or writing a checkpoint failed (see [`CheckpointError`]).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A training setting is out of its range ([`TrainConfig::validate`](crate::train::TrainConfig::validate)).
    #[error("invalid training configuration: {field} {reason}")]
    InvalidConfig {
        /// The setting (`lr`, `batch`, `epochs`, `lambda`, `geco_target`, `geco_rate`,
        /// `geco_bounds`, `geco_ema`, `clip_norm`, `warmup_epochs`, `max_reconstruction_error`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A backward pass was given a [`Tape`](crate::transform::Tape) that does not belong to
    /// the last forward pass of its workspace, or an input other than that pass's.
    #[error("backward: stale tape: {reason}")]
    StaleTape {
        /// What did not match.
        reason: &'static str,
    },
    /// An input or a result holds NaN or an infinity.
    #[error("{op}: non-finite value (NaN or infinity)")]
    NonFinite {
        /// The operation that found it.
        op: &'static str,
    },
    /// LU factorisation met a pivot that is zero, or negligible relative to the largest
    /// pivot (`|u_kk| <= n * eps * max_i |u_ii|`): the matrix is singular to working precision.
    #[error("{op}: matrix is singular to working precision (pivot {index}: |u| = {pivot:e}, largest pivot {max_pivot:e})")]
    Singular {
        /// The operation that factored the matrix.
        op: &'static str,
        /// Index of the smallest pivot on the diagonal of U.
        index: usize,
        /// Its magnitude.
        pivot: f64,
        /// Magnitude of the largest pivot.
        max_pivot: f64,
    },
}

/// Everything that can go wrong reading a data set from disk.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read, or a gzip stream is corrupt.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's (or the decompressor's) message.
        reason: String,
    },
    /// The IDX header is malformed: wrong magic number, unsupported element type, or
    /// the wrong number of dimensions for what was asked.
    #[error("{path}: not an IDX file of the expected kind: {reason}")]
    BadHeader {
        /// The file.
        path: String,
        /// What is wrong with the header.
        reason: String,
    },
    /// The payload is shorter or longer than the header's dimensions say.
    #[error("{path}: IDX payload has {got} bytes, the header's dimensions need {expected}")]
    WrongLength {
        /// The file.
        path: String,
        /// Bytes the dimensions imply.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// A file's SHA-256 does not match its line in the checksum list.
    #[error("{path}: SHA-256 {got} does not match the expected {expected}")]
    Checksum {
        /// The file.
        path: String,
        /// The hex digest listed.
        expected: String,
        /// The hex digest computed.
        got: String,
    },
    /// The data set's files disagree with each other or with the data set's definition
    /// (image and label counts, image size, label range, a missing checksum line).
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The file (or folder) concerned.
        path: String,
        /// What disagrees.
        reason: String,
    },
}

/// Everything that can go wrong saving or loading a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The file could not be read, written or renamed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        reason: String,
    },
    /// The file is not a readable `snf` checkpoint: not safetensors, no or unparsable
    /// `snf` metadata, an unknown format version, a missing or extra tensor, a tensor of
    /// the wrong type or shape.
    #[error("{path}: not a valid snf checkpoint: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The tensors or the configuration were changed after writing (truncation, bit
    /// flips, edits): their SHA-256 differs from the one recorded in the file.
    #[error("{path}: checkpoint is corrupt: SHA-256 {got} does not match the recorded {expected}")]
    Checksum {
        /// The file.
        path: String,
        /// The digest recorded at write time.
        expected: String,
        /// The digest of what is there now.
        got: String,
    },
    /// The checkpoint is intact but its contents are invalid for the model it describes
    /// (e.g. non-finite parameters, a layer that cannot be built from its configuration).
    #[error("{path}: checkpoint does not describe a valid model: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The builder's error.
        reason: String,
    },
}

/// `Result` with [`enum@Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Check that `got == expected`, else return [`Error::ShapeMismatch`].
pub(crate) fn check_shape(op: &'static str, expected: (usize, usize), got: (usize, usize)) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { op, expected, got })
    }
}
