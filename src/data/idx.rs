//! The IDX format of the MNIST files: a big-endian header (two zero bytes, an element
//! type code, the number of dimensions, then one `u32` per dimension) followed by the
//! elements. Only unsigned bytes (type `0x08`) are supported, which is what MNIST uses.

use std::io::Read;
use std::path::Path;

use crate::error::DataError;

/// Largest payload accepted (1 GiB), so a corrupt header cannot ask for an absurd buffer.
const MAX_BYTES: u64 = 1 << 30;

/// An IDX array of unsigned bytes: its dimensions and its elements in row-major order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The elements, `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

/// Parse an IDX byte buffer (already decompressed). `path` only labels errors.
///
/// # Errors
/// [`DataError::BadHeader`] for a wrong magic number, an element type other than
/// unsigned byte, or zero dimensions; [`DataError::WrongLength`] when the payload is not
/// exactly as long as the dimensions say (or longer than 1 GiB).
pub fn parse_idx(bytes: &[u8], path: &str) -> Result<IdxArray, DataError> {
    let bad = |reason: String| DataError::BadHeader { path: path.to_string(), reason };
    let [z0, z1, ty, nd, ..] = *bytes else {
        return Err(bad(format!("{} bytes is too short for a header", bytes.len())));
    };
    if (z0, z1) != (0, 0) {
        return Err(bad(format!("magic number starts with {z0:#04x} {z1:#04x}, not two zero bytes")));
    }
    if ty != 0x08 {
        return Err(bad(format!("element type {ty:#04x} is not unsigned byte (0x08)")));
    }
    let nd = nd as usize;
    if nd == 0 {
        return Err(bad("zero dimensions".into()));
    }
    let header = 4 + 4 * nd;
    let Some(dim_bytes) = bytes.get(4..header) else {
        return Err(bad(format!("{} bytes is too short for {nd} dimensions", bytes.len())));
    };
    let dims: Vec<usize> = dim_bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let got = (bytes.len() - header) as u64;
    let n = payload_size(&dims, path)?;
    if n == got {
        Ok(IdxArray { dims, data: bytes[header..].to_vec() })
    } else {
        Err(DataError::WrongLength { path: path.to_string(), expected: n, got })
    }
}

/// The payload size the dimensions declare, or an error naming it and the limit.
fn payload_size(dims: &[usize], path: &str) -> Result<u64, DataError> {
    let n = if dims.contains(&0) { 0 } else { dims.iter().try_fold(1u128, |acc, &d| acc.checked_mul(d as u128)).unwrap_or(u128::MAX) };
    if n > MAX_BYTES as u128 {
        return Err(DataError::BadHeader {
            path: path.to_string(),
            reason: format!("dimensions {dims:?} declare {n} bytes, more than the limit of {MAX_BYTES} (1 GiB)"),
        });
    }
    Ok(n as u64)
}

/// Read and parse an IDX file, raw or gzip-compressed, checking the header before the
/// payload: a compressed file whose header declares more than the 1 GiB limit is refused
/// after inflating its first bytes, not its whole body (a gzip bomb costs nothing).
///
/// # Errors
/// As [`read_maybe_gz`] and [`parse_idx`].
pub fn read_idx_checked(path: &Path) -> Result<IdxArray, DataError> {
    let name = path.display().to_string();
    let raw = std::fs::read(path).map_err(|e| DataError::Io { path: name.clone(), reason: e.to_string() })?;
    decode_idx_checked(&raw, &name)
}

/// [`read_idx_checked`] on bytes already read (`path` only labels errors).
///
/// # Errors
/// As [`read_idx_checked`].
pub fn decode_idx_checked(raw: &[u8], path: &str) -> Result<IdxArray, DataError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return parse_idx(raw, path);
    }
    let io = |e: std::io::Error| DataError::Io { path: path.to_string(), reason: e.to_string() };
    let mut dec = flate2::read::MultiGzDecoder::new(raw);
    let mut head = [0u8; 4];
    dec.read_exact(&mut head).map_err(io)?;
    let nd = head[3] as usize;
    let mut dims = vec![0u8; 4 * nd];
    dec.read_exact(&mut dims).map_err(io)?;
    let mut bytes = head.to_vec();
    bytes.extend_from_slice(&dims);
    let declared: Vec<usize> = dims.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    if head[..2] == [0, 0] && head[2] == 0x08 && nd > 0 {
        let n = payload_size(&declared, path)?;
        // at most one byte more than declared: a longer payload is a length error anyway
        dec.take(n + 1).read_to_end(&mut bytes).map_err(io)?;
    }
    parse_idx(&bytes, path)
}

/// Read a whole file, transparently decompressing gzip (detected by its magic bytes,
/// not by the name).
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read or the gzip stream is corrupt.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::Io { path: path.display().to_string(), reason: e.to_string() })?;
    decode_maybe_gz(raw, &path.display().to_string())
}

/// Decompress `raw` if it is gzip (by its magic bytes), else return it; at most
/// 1 GiB + 1 bytes are inflated (a larger payload then fails the IDX length check).
///
/// # Errors
/// [`DataError::Io`] for a corrupt gzip stream (`path` names it).
pub fn decode_maybe_gz(raw: Vec<u8>, path: &str) -> Result<Vec<u8>, DataError> {
    let io = |e: std::io::Error| DataError::Io { path: path.to_string(), reason: e.to_string() };
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..]).take(MAX_BYTES + 1).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Read and parse an IDX file, gzip-compressed or raw.
///
/// # Errors
/// As [`read_maybe_gz`] and [`parse_idx`].
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes, &path.display().to_string())
}
