//! Grayscale PNG grids of 28x28 images.

use std::path::Path;

use crate::error::{CliError, Result};

const SIDE: usize = 28;
const GAP: usize = 2;

/// One grid: `images` (28*28 bytes each) in rows of `cols`, on a mid-grey background.
pub struct Grid {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Grid {
    pub fn new(images: &[Vec<u8>], cols: usize) -> Self {
        let cols = cols.max(1);
        let rows = images.len().div_ceil(cols).max(1);
        let width = cols * SIDE + (cols + 1) * GAP;
        let height = rows * SIDE + (rows + 1) * GAP;
        let mut pixels = vec![128u8; width * height];
        for (k, img) in images.iter().enumerate() {
            let (r, c) = (k / cols, k % cols);
            let (y0, x0) = (GAP + r * (SIDE + GAP), GAP + c * (SIDE + GAP));
            for y in 0..SIDE {
                for x in 0..SIDE {
                    pixels[(y0 + y) * width + x0 + x] = img.get(y * SIDE + x).copied().unwrap_or(0);
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
        let mut pixels = vec![255u8; width * height];
        for (g, x0) in [(self, 0), (other, self.width + gap)] {
            for y in 0..g.height {
                pixels[y * width + x0..y * width + x0 + g.width].copy_from_slice(&g.pixels[y * g.width..(y + 1) * g.width]);
            }
        }
        Grid { width, height, pixels }
    }

    /// Nearest-neighbour upscaling by `k` (28-pixel digits are small on a screen).
    pub fn scaled(&self, k: usize) -> Grid {
        let k = k.max(1);
        let (width, height) = (self.width * k, self.height * k);
        let pixels = (0..height).flat_map(|y| (0..width).map(move |x| (y / k, x / k))).map(|(y, x)| self.pixels[y * self.width + x]).collect();
        Grid { width, height, pixels }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |e: String| CliError::Image { path: path.display().to_string(), reason: e };
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| err(e.to_string()))?;
            w.write_image_data(&self.pixels).map_err(|e| err(e.to_string()))?;
        }
        snf::checkpoint::write_atomic(path, &bytes)?;
        Ok(())
    }
}
