//! SHA-256 checksum lists in the `sha256sum` format (`<64 hex digits>  <file name>` per
//! line), as shipped beside the data files.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::DataError;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse a `sha256sum` listing into `(file name, hex digest)` pairs; malformed lines are
/// an error, blank lines are skipped.
///
/// # Errors
/// [`DataError::Inconsistent`] for a line that is not `<64 hex>  <name>`.
pub fn parse_sums(text: &str, path: &str) -> Result<Vec<(String, String)>, DataError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let bad = || DataError::Inconsistent { path: path.to_string(), reason: format!("line {} is not `<sha256>  <file>`", n + 1) };
        let (hex, name) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        let name = name.trim_start().trim_start_matches('*');
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return Err(bad());
        }
        out.push((name.to_string(), hex.to_ascii_lowercase()));
    }
    Ok(out)
}

/// Check `bytes` (the content of the file named `name`) against the listing `sums`.
///
/// # Errors
/// [`DataError::Inconsistent`] if `name` is not listed, [`DataError::Checksum`] if the
/// digest differs.
pub fn verify(bytes: &[u8], name: &str, sums: &[(String, String)], path: &Path) -> Result<(), DataError> {
    let expected = sums
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, h)| h.clone())
        .ok_or_else(|| DataError::Inconsistent { path: path.display().to_string(), reason: format!("no checksum listed for {name}") })?;
    let got = sha256_hex(bytes);
    if got != expected {
        return Err(DataError::Checksum { path: path.display().to_string(), expected, got });
    }
    Ok(())
}
