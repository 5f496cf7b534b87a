//! PNG grids of images of any shape (one channel: grey, three: colour).

use std::path::Path;

use snf::Shape;

use crate::error::{CliError, Result};

const GAP: usize = 2;

/// One RGB grid: `images` in rows of `cols`, on a mid-grey background.
pub struct Grid {
    pub width: usize,
    pub height: usize,
    /// RGB, row-major.
    pub pixels: Vec<u8>,
}

impl Grid {
    /// `images` of `shape` (channel-major bytes, 1 or 3 channels; other channel counts
    /// show their first channel).
    pub fn new(images: &[Vec<u8>], shape: Shape, cols: usize) -> Self {
        let (side_h, side_w) = (shape.h, shape.w);
        let cols = cols.max(1);
        let rows = images.len().div_ceil(cols).max(1);
        let width = cols * side_w + (cols + 1) * GAP;
        let height = rows * side_h + (rows + 1) * GAP;
        let mut pixels = vec![128u8; width * height * 3];
        let plane = side_h * side_w;
        for (k, img) in images.iter().enumerate() {
            let (r, c) = (k / cols, k % cols);
            let (y0, x0) = (GAP + r * (side_h + GAP), GAP + c * (side_w + GAP));
            for y in 0..side_h {
                for x in 0..side_w {
                    let at = |ch: usize| img.get(ch * plane + y * side_w + x).copied().unwrap_or(0);
                    let rgb = if shape.c == 3 { [at(0), at(1), at(2)] } else { [at(0); 3] };
                    let o = ((y0 + y) * width + x0 + x) * 3;
                    pixels[o..o + 3].copy_from_slice(&rgb);
                }
            }
        }
        Self { width, height, pixels }
    }

    /// `self` and `other` side by side with a wider gap.
    pub fn beside(&self, other: &Grid) -> Grid {
        let gap = 4 * GAP;
        let width = self.width + gap + other.width;
        let height = self.height.max(other.height);
        let mut pixels = vec![255u8; width * height * 3];
        for (g, x0) in [(self, 0), (other, self.width + gap)] {
            for y in 0..g.height {
                pixels[(y * width + x0) * 3..(y * width + x0 + g.width) * 3].copy_from_slice(&g.pixels[y * g.width * 3..(y + 1) * g.width * 3]);
            }
        }
        Grid { width, height, pixels }
    }

    /// Nearest-neighbour upscaling by `k` (28-pixel digits are small on a screen).
    pub fn scaled(&self, k: usize) -> Grid {
        let k = k.max(1);
        let (width, height) = (self.width * k, self.height * k);
        let mut pixels = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let o = ((y / k) * self.width + x / k) * 3;
                pixels.extend_from_slice(&self.pixels[o..o + 3]);
            }
        }
        Grid { width, height, pixels }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |e: String| CliError::Image { path: path.display().to_string(), reason: e };
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| err(e.to_string()))?;
            w.write_image_data(&self.pixels).map_err(|e| err(e.to_string()))?;
        }
        snf::checkpoint::write_atomic(path, &bytes)?;
        Ok(())
    }
}
