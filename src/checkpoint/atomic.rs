//! Crash-safe file replacement: write a temporary file in the same folder, flush it to
//! disk, then rename it over the target. A crash at any point leaves either the old file
//! or the new one, never a mix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{CheckpointError, Result};

fn io_err(path: &Path, e: std::io::Error) -> CheckpointError {
    CheckpointError::Io { path: path.display().to_string(), reason: e.to_string() }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Replace `path` by `bytes` atomically (temporary file, `fsync`, rename, `fsync` of the
/// folder where the platform allows it).
///
/// # Errors
/// [`CheckpointError::Io`] when the folder is missing or not writable, the disk is full, ...
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, |_| {})
}

/// [`write_atomic`] with a hook that runs after the temporary file is complete and
/// before it replaces `path` (fault-injection tests kill the process there).
///
/// # Errors
/// As [`write_atomic`].
#[doc(hidden)]
pub fn write_atomic_with(path: &Path, bytes: &[u8], before_rename: impl FnOnce(&Path)) -> Result<()> {
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp, e).into());
    }
    before_rename(&tmp);
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, e).into());
    }
    // make the rename itself durable; not every platform can open a folder, so best effort
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
