//! Tensor shapes: a batch is a `D x B` matrix whose rows are one example laid out as
//! channels × height × width (channel-major, then row-major within a channel), with
//! $D = C\cdot H\cdot W$. Flat data (tabular, 2-D toys) is `Shape::flat(D)` = $D\times1\times1$.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The shape of one example: `c` channels of `h x w` (flat data: `h = w = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Shape {
    /// `c x h x w` images.
    pub const fn image(c: usize, h: usize, w: usize) -> Self {
        Self { c, h, w }
    }
    /// Flat vectors of length `d` (`d x 1 x 1`).
    pub const fn flat(d: usize) -> Self {
        Self { c: d, h: 1, w: 1 }
    }
    /// $D = C\cdot H\cdot W$, or an error naming the shape if the product overflows or is 0.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty shape or one whose size overflows `usize`.
    pub fn checked_dim(&self) -> Result<usize> {
        match self.c.checked_mul(self.h).and_then(|v| v.checked_mul(self.w)) {
            Some(d) if d > 0 => Ok(d),
            _ => Err(Error::InvalidArgument { op: "Shape::checked_dim", reason: format!("shape {self} is empty or too large") }),
        }
    }
    /// $D = C\cdot H\cdot W$ (saturating; shapes made by the crate's constructors are checked).
    pub fn dim(&self) -> usize {
        self.c.saturating_mul(self.h).saturating_mul(self.w)
    }
    /// True for `d x 1 x 1`.
    pub fn is_flat(&self) -> bool {
        self.h == 1 && self.w == 1
    }
    /// `[c, h, w]`.
    pub fn to_array(&self) -> [usize; 3] {
        [self.c, self.h, self.w]
    }
    /// True when `self` is `want`, or a flat shape of the same size (a flat batch is read
    /// as `want`'s layout, like a reshape).
    pub fn fits(&self, want: Shape) -> bool {
        *self == want || (self.is_flat() && self.dim() == want.dim())
    }
}

impl From<[usize; 3]> for Shape {
    fn from([c, h, w]: [usize; 3]) -> Self {
        Self { c, h, w }
    }
}

impl core::fmt::Display for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.is_flat() {
            write!(f, "{}", self.c)
        } else {
            write!(f, "{}x{}x{}", self.c, self.h, self.w)
        }
    }
}

/// The error every shaped transform returns for an input it cannot take.
pub(crate) fn shape_error(op: &'static str, want: Shape, got: Shape) -> Error {
    Error::InvalidArgument { op, reason: format!("input shape {got}, this transform takes {want}") }
}
