//! faer matrices to and from safetensors' row-major little-endian buffers.

use faer::{Mat, MatRef};
use safetensors::Dtype;
use sha2::{Digest, Sha256};

use crate::real::Real;

/// The safetensors type that stores `T` without loss.
pub(crate) fn dtype_of<T: Real>() -> Dtype {
    if std::mem::size_of::<T>() == 4 {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

/// An owned tensor ready to be written.
pub(crate) struct Owned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Row-major bytes of `m` in `T`'s own precision.
pub(crate) fn encode<T: Real>(name: String, m: MatRef<'_, T>) -> Owned {
    let dtype = dtype_of::<T>();
    let mut data = Vec::with_capacity(m.nrows() * m.ncols() * std::mem::size_of::<T>());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            let v = m[(i, j)].as_f64();
            match dtype {
                Dtype::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
    }
    Owned { name, dtype, shape: vec![m.nrows(), m.ncols()], data }
}

/// The matrix stored in a 2-D `F32` or `F64` tensor, or why it cannot be read.
pub(crate) fn decode<T: Real>(dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<Mat<T>, String> {
    let &[rows, cols] = shape else {
        return Err(format!("shape {shape:?} is not 2-D"));
    };
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
        other => return Err(format!("type {other:?}, expected F32 or F64")),
    };
    let n = rows.checked_mul(cols).ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if n.checked_mul(width) != Some(data.len()) {
        return Err(format!("{} bytes for shape {shape:?}", data.len()));
    }
    let value = |k: usize| -> f64 {
        let b = &data[k * width..(k + 1) * width];
        match width {
            4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            _ => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        }
    };
    Ok(Mat::from_fn(rows, cols, |i, j| T::from_f64(value(i * cols + j))))
}

/// SHA-256 over the configuration text and every tensor (name, type, shape, bytes) in
/// name order: what a checkpoint records to detect corruption.
pub(crate) fn digest<'a>(config: &str, tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> String {
    let mut items: Vec<_> = tensors.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    h.update((config.len() as u64).to_le_bytes());
    h.update(config.as_bytes());
    for (name, dtype, shape, data) in items {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{dtype:?}").as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for s in shape {
            h.update((*s as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
