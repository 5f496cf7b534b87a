//! Squeeze (space-to-depth by 2): a volume-preserving permutation used between the blocks
//! of the convolutional model.

use faer::{MatMut, MatRef};

use crate::error::{check_shape, Error, Result};
use crate::real::Real;

/// $C\times H\times W \to 4C\times\frac H2\times\frac W2$:
/// $\mathrm{out}_{4c + 2a + b,\,y,\,x} = \mathrm{in}_{c,\,2y + a,\,2x + b}$ for $a, b \in \{0, 1\}$
/// (the channel order of Glow and of the authors' code). A permutation of the entries, so
/// its log-det is 0 and its input delta is the inverse permutation of the output delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Squeeze {
    channels: usize,
    height: usize,
    width: usize,
}

impl Squeeze {
    /// Squeeze for `channels` images of `height x width` (both even, positive).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for odd or zero sizes.
    pub fn new(channels: usize, height: usize, width: usize) -> Result<Self> {
        let size = channels.checked_mul(height).and_then(|v| v.checked_mul(width));
        if size.is_none() || channels == 0 || height == 0 || width == 0 || !height.is_multiple_of(2) || !width.is_multiple_of(2) {
            return Err(Error::InvalidArgument {
                op: "Squeeze::new",
                reason: format!("needs positive channels and even height and width, got {channels}x{height}x{width}"),
            });
        }
        Ok(Self { channels, height, width })
    }
    /// The example dimension $CHW$.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// The input shape `[C, H, W]`.
    pub fn in_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
    /// The output shape `[4C, H/2, W/2]`.
    pub fn out_shape(&self) -> [usize; 3] {
        [4 * self.channels, self.height / 2, self.width / 2]
    }

    /// Index in the input of output entry `o`.
    #[inline]
    fn source(&self, o: usize) -> usize {
        let (h2, w2) = (self.height / 2, self.width / 2);
        let (ch, rest) = (o / (h2 * w2), o % (h2 * w2));
        let (y, x) = (rest / w2, rest % w2);
        let (c, a, b) = (ch / 4, (ch % 4) / 2, ch % 2);
        (c * self.height + 2 * y + a) * self.width + 2 * x + b
    }

    /// Space to depth: `out = squeeze(x)`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward<T: Real>(&self, x: MatRef<'_, T>, out: MatMut<'_, T>) -> Result<()> {
        check_shape("Squeeze::forward", (self.dim(), x.ncols()), (x.nrows(), x.ncols()))?;
        check_shape("Squeeze::forward", (self.dim(), x.ncols()), (out.nrows(), out.ncols()))?;
        let mut out = out;
        for j in 0..x.ncols() {
            for o in 0..self.dim() {
                out[(o, j)] = x[(self.source(o), j)];
            }
        }
        Ok(())
    }

    /// Depth to space (the inverse, and the map of deltas backwards): `x = unsqueeze(z)`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn inverse<T: Real>(&self, z: MatRef<'_, T>, x: MatMut<'_, T>) -> Result<()> {
        check_shape("Squeeze::inverse", (self.dim(), z.ncols()), (z.nrows(), z.ncols()))?;
        check_shape("Squeeze::inverse", (self.dim(), z.ncols()), (x.nrows(), x.ncols()))?;
        let mut x = x;
        for j in 0..z.ncols() {
            for o in 0..self.dim() {
                x[(self.source(o), j)] = z[(o, j)];
            }
        }
        Ok(())
    }
}

impl<T: Real> crate::transform::Transform<T> for Squeeze {
    fn kind(&self) -> &'static str {
        "squeeze"
    }
    fn output_shape(&self, input: crate::shape::Shape) -> Result<crate::shape::Shape> {
        let want = crate::shape::Shape::from(self.in_shape());
        if input.fits(want) {
            Ok(self.out_shape().into())
        } else {
            Err(crate::shape::shape_error("Squeeze::output_shape", want, input))
        }
    }
    fn workspace(&self, max_batch: usize, par: faer::Par) -> Result<crate::transform::Workspace<T>> {
        crate::transform::Workspace::new((), max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut crate::transform::Workspace<T>) -> Result<crate::transform::Tape> {
        Squeeze::forward(self, x, y)?;
        Ok(ws.record(x))
    }
    /// A permutation: the delta is permuted back, and there is no log-det term.
    fn backward(
        &self,
        tape: crate::transform::Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        _grads: &mut crate::transform::Grads<T>,
        ws: &mut crate::transform::Workspace<T>,
        _lambda: T,
    ) -> Result<f64> {
        ws.consume(tape, x)?;
        Squeeze::inverse(self, dy, dx).map(|_| 0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, _ws: &mut crate::transform::Workspace<T>) -> Result<()> {
        Squeeze::inverse(self, y, x)
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({"kind": "squeeze", "shape": self.in_shape()})
    }
}
