//! Shapes of a 2-D convolution: the user's [`Conv2dSpec`] and the validated
//! [`Conv2dGeometry`] every operation works from.

use crate::error::{Error, Result};

/// The parameters of a batched 2-D convolution, as in PyTorch's `conv2d`
/// (NCHW, cross-correlation, zero padding).
///
/// Build one with [`Conv2dSpec::new`] and the `with_*` setters, then validate it with
/// [`Conv2dGeometry::new`]. Pairs are `[height, width]`.
///
/// # Example
/// ```
/// use snf::conv::{Conv2dGeometry, Conv2dSpec};
/// // 4 -> 8 channels, 14x14 input, 3x3 kernel, stride 2, padding 1
/// let g = Conv2dGeometry::new(Conv2dSpec::new(4, 8, [14, 14], [3, 3]).with_stride([2, 2]).with_padding([1, 1]))?;
/// assert_eq!(g.out_size(), [7, 7]);
/// assert_eq!(g.kernel_shape(), (4 * 3 * 3, 8));
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Conv2dSpec {
    /// Input channels $C_{in}$.
    pub in_channels: usize,
    /// Output channels $C_{out}$.
    pub out_channels: usize,
    /// Input image size `[H, W]`.
    pub input: [usize; 2],
    /// Kernel size `[KH, KW]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]` (default `[1, 1]`).
    pub stride: [usize; 2],
    /// Zero padding on each side `[ph, pw]` (default `[0, 0]`).
    pub padding: [usize; 2],
    /// Dilation `[dh, dw]` (default `[1, 1]`).
    pub dilation: [usize; 2],
    /// Groups $G$: input and output channels are split into $G$ blocks and block $g$ of
    /// the output sees only block $g$ of the input (default 1).
    pub groups: usize,
}

impl Conv2dSpec {
    /// Stride 1, no padding, no dilation, one group.
    pub fn new(in_channels: usize, out_channels: usize, input: [usize; 2], kernel: [usize; 2]) -> Self {
        Self { in_channels, out_channels, input, kernel, stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
    /// A `channels -> channels` convolution with an odd kernel, stride 1 and "same"
    /// zero padding `(k - 1) / 2`: the shape of the self-normalizing layer.
    pub fn same(channels: usize, input: [usize; 2], kernel: [usize; 2]) -> Self {
        Self::new(channels, channels, input, kernel).with_padding([kernel[0] / 2, kernel[1] / 2])
    }
    /// Set the stride.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }
    /// Set the zero padding.
    pub fn with_padding(mut self, padding: [usize; 2]) -> Self {
        self.padding = padding;
        self
    }
    /// Set the dilation.
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }
    /// Set the number of groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
}

/// A validated [`Conv2dSpec`] with its output size.
///
/// **Layouts.** One example of the input is a column of length $C_{in}HW$ holding the
/// `C x H x W` image in row-major (NCHW) order; a batch is a matrix with one example per
/// column. The kernel $k \in \mathbb R^{C_{out}\times (C_{in}/G)\times K_H\times K_W}$ is
/// stored as a column-major `(C_in/G * KH * KW) x C_out` matrix, whose memory is exactly
/// PyTorch's contiguous `[C_out, C_in/G, KH, KW]` tensor: element $k_{o,i,h,w}$ sits at
/// row $(iK_H + h)K_W + w$, column $o$ (see [`kernel_index`](Self::kernel_index)).
///
/// The convolution is $z_{o,y,x} = \sum_{i,h,w} k_{o,i,h,w}\,
/// x_{g(o)C_g + i,\; s_h y - p_h + d_h h,\; s_w x - p_w + d_w w}$ with $x = 0$ outside
/// the image, where $g(o) = \lfloor o / (C_{out}/G)\rfloor$ and $C_g = C_{in}/G$; its
/// output size is $\lfloor (H + 2p_h - d_h(K_H - 1) - 1)/s_h\rfloor + 1$ (and the same
/// for the width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    spec: Conv2dSpec,
    out: [usize; 2],
}

fn invalid(op: &'static str, reason: String) -> Error {
    Error::InvalidConv { op, reason }
}

/// Largest number of elements any one buffer (image batch column, kernel, im2col block)
/// may hold, so that every index computation stays far from `isize` overflow.
const MAX_ELEMS: usize = 1 << 40;

impl Conv2dGeometry {
    /// Validate `spec`.
    ///
    /// # Errors
    /// [`Error::InvalidConv`] if a size, stride, dilation or group count is zero, the
    /// channels are not divisible by the groups, the dilated kernel does not fit the padded
    /// input, or a size overflows.
    pub fn new(spec: Conv2dSpec) -> Result<Self> {
        const OP: &str = "Conv2dGeometry::new";
        let s = &spec;
        let nonzero = [
            ("in_channels", s.in_channels),
            ("out_channels", s.out_channels),
            ("input height", s.input[0]),
            ("input width", s.input[1]),
            ("kernel height", s.kernel[0]),
            ("kernel width", s.kernel[1]),
            ("stride height", s.stride[0]),
            ("stride width", s.stride[1]),
            ("dilation height", s.dilation[0]),
            ("dilation width", s.dilation[1]),
            ("groups", s.groups),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(invalid(OP, format!("{name} must be positive")));
            }
        }
        if !s.in_channels.is_multiple_of(s.groups) || !s.out_channels.is_multiple_of(s.groups) {
            return Err(invalid(OP, format!("channels ({} in, {} out) must be divisible by groups ({})", s.in_channels, s.out_channels, s.groups)));
        }
        let mut out = [0; 2];
        for a in 0..2 {
            let padded = s.padding[a].checked_mul(2).and_then(|p| p.checked_add(s.input[a]));
            let extent = (s.kernel[a] - 1).checked_mul(s.dilation[a]).and_then(|e| e.checked_add(1));
            match (padded, extent) {
                (Some(padded), Some(extent)) if padded <= MAX_ELEMS && extent <= padded => {
                    out[a] = (padded - extent) / s.stride[a] + 1;
                }
                (Some(padded), Some(extent)) if padded <= MAX_ELEMS => {
                    return Err(invalid(OP, format!("dilated kernel extent {extent} exceeds padded input {padded} along the {}", ["height", "width"][a])))
                }
                _ => return Err(invalid(OP, format!("sizes exceed the supported maximum of {MAX_ELEMS}"))),
            }
        }
        let sizes = [
            mul(&[s.in_channels, s.input[0], s.input[1]]),
            mul(&[s.out_channels, out[0], out[1]]),
            mul(&[s.in_channels / s.groups, s.kernel[0], s.kernel[1], s.out_channels]),
            mul(&[s.in_channels / s.groups, s.kernel[0], s.kernel[1], out[0], out[1]]),
        ];
        if sizes.iter().any(|v| v.is_none_or(|v| v > MAX_ELEMS)) {
            return Err(invalid(OP, format!("sizes exceed the supported maximum of {MAX_ELEMS} elements")));
        }
        Ok(Self { spec, out })
    }

    /// The spec this geometry was validated from.
    pub fn spec(&self) -> &Conv2dSpec {
        &self.spec
    }
    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.spec.in_channels
    }
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.spec.out_channels
    }
    /// Groups.
    pub fn groups(&self) -> usize {
        self.spec.groups
    }
    /// Input channels per group, $C_{in}/G$.
    pub fn in_per_group(&self) -> usize {
        self.spec.in_channels / self.spec.groups
    }
    /// Output channels per group, $C_{out}/G$.
    pub fn out_per_group(&self) -> usize {
        self.spec.out_channels / self.spec.groups
    }
    /// Input image size `[H, W]`.
    pub fn in_size(&self) -> [usize; 2] {
        self.spec.input
    }
    /// Output image size `[OH, OW]`.
    pub fn out_size(&self) -> [usize; 2] {
        self.out
    }
    /// Kernel size `[KH, KW]`.
    pub fn kernel_size(&self) -> [usize; 2] {
        self.spec.kernel
    }
    /// Length of one input example, $C_{in}HW$.
    pub fn in_len(&self) -> usize {
        self.spec.in_channels * self.spec.input[0] * self.spec.input[1]
    }
    /// Length of one output example, $C_{out}\,OH\,OW$.
    pub fn out_len(&self) -> usize {
        self.spec.out_channels * self.out[0] * self.out[1]
    }
    /// Number of output positions per channel, $OH\cdot OW$.
    pub fn out_positions(&self) -> usize {
        self.out[0] * self.out[1]
    }
    /// Kernel taps per group and output channel, $C_g K_H K_W$: the rows of the kernel matrix.
    pub fn taps(&self) -> usize {
        self.in_per_group() * self.spec.kernel[0] * self.spec.kernel[1]
    }
    /// Shape `(rows, cols)` of the kernel matrix: `(C_in/G * KH * KW, C_out)`.
    pub fn kernel_shape(&self) -> (usize, usize) {
        (self.taps(), self.spec.out_channels)
    }
    /// `(row, col)` of kernel element $k_{o,i,h,w}$ in the kernel matrix ($i$ is the
    /// channel index *within* the group).
    pub fn kernel_index(&self, o: usize, i: usize, h: usize, w: usize) -> (usize, usize) {
        ((i * self.spec.kernel[0] + h) * self.spec.kernel[1] + w, o)
    }

    /// True when the convolution matrix is square and its transpose is the convolution
    /// by the flipped kernel *in this same geometry*:
    /// $\mathcal T(\mathrm{flip}\,k) = \mathcal T(k)^T$. This holds exactly when
    /// $C_{in} = C_{out}$, the stride is 1, and $2p = d(K - 1)$ along both axes ("same"
    /// padding, so the kernel is odd wherever the dilation is odd). See `proofs/conv.md` §2.
    pub fn is_self_transpose(&self) -> bool {
        let s = &self.spec;
        s.in_channels == s.out_channels && (0..2).all(|a| s.stride[a] == 1 && 2 * s.padding[a] == s.dilation[a] * (s.kernel[a] - 1))
    }

    /// The geometry $\mathcal G'$ of the transpose: $\mathcal T_{\mathcal G'}(\mathrm{flip}\,k)
    /// = \mathcal T_{\mathcal G}(k)^T$ for every kernel $k$.
    ///
    /// It swaps the channel counts and the input/output sizes and uses padding
    /// $p' = d(K - 1) - p$ (same kernel size, dilation and groups). `proofs/conv.md` §2.
    ///
    /// # Errors
    /// [`Error::InvalidConv`] if the stride is not 1 (the transpose of a strided
    /// convolution is a fractionally strided one, not a convolution) or $p > d(K-1)$.
    pub fn transpose(&self) -> Result<Self> {
        const OP: &str = "Conv2dGeometry::transpose";
        let s = &self.spec;
        let mut padding = [0; 2];
        for (a, pad) in padding.iter_mut().enumerate() {
            if s.stride[a] != 1 {
                return Err(invalid(OP, "the transpose of a strided convolution is not a convolution".into()));
            }
            let reach = s.dilation[a] * (s.kernel[a] - 1);
            *pad = reach.checked_sub(s.padding[a]).ok_or_else(|| invalid(OP, format!("padding {} exceeds the kernel reach {reach}", s.padding[a])))?;
        }
        Self::new(Conv2dSpec {
            in_channels: s.out_channels,
            out_channels: s.in_channels,
            input: self.out,
            kernel: s.kernel,
            stride: [1, 1],
            padding,
            dilation: s.dilation,
            groups: s.groups,
        })
    }

    /// The same geometry with another kernel size and the matching "same" padding
    /// $d(K-1)/2$ (used for the asymmetric inverse kernel of Appendix A.4).
    pub(crate) fn with_kernel_same(&self, kernel: [usize; 2]) -> Result<Self> {
        let s = self.spec;
        Self::new(Conv2dSpec { kernel, padding: [s.dilation[0] * (kernel[0].max(1) - 1) / 2, s.dilation[1] * (kernel[1].max(1) - 1) / 2], ..s })
    }
}

fn mul(v: &[usize]) -> Option<usize> {
    v.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x))
}
