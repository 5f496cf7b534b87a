//! Layer and model construction from arbitrary configurations and shapes: convolution
//! geometries (channels, sizes, kernels, stride, padding, dilation, groups, inverse
//! kernels), spline configurations, squeezes and splits (huge declared sizes included),
//! linear layers from arbitrary parameters,
//! and layer descriptions parsed from arbitrary JSON. Each returns a layer or a typed
//! error, never a panic; a layer that is built must run a forward pass and its inverse.
#![no_main]

use faer::{Mat, Par};
use libfuzzer_sys::fuzz_target;
use snf::activation::{SplineActivation, SplineConfig};
use snf::checkpoint::LayerSpec;
use snf::conv::Conv2dSpec;
use snf::flow::{Flow, Inverse, Squeeze};
use snf::layers::conv::{ExactConv2d, SelfNormConv2d, SelfNormConv2dConfig};
use snf::layers::linear::SelfNormLinear;
use snf::layers::Split;
use snf::transform::Transform;
use snf::Shape;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> usize {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b as usize
            }
            None => 0,
        }
    }
    fn small(&mut self, m: usize) -> usize {
        self.byte() % m
    }
    fn float(&mut self) -> f64 {
        let mut b = [0u8; 8];
        for v in &mut b {
            *v = self.byte() as u8;
        }
        f64::from_le_bytes(b)
    }
}

/// Build a one-transform flow on `shape` and run it: every call returns, none panics.
fn run_flow(shape: Shape, layer: Box<dyn Transform<f64>>) {
    let Ok(d) = shape.checked_dim() else { return };
    if d > 4096 {
        return;
    }
    if let Ok(flow) = Flow::new(shape, vec![layer]) {
        let Ok(mut ws) = flow.workspace(2, Par::Seq) else { return };
        let x = Mat::from_fn(d, 2, |i, j| ((i * 7 + j) % 13) as f64 - 6.0);
        let mut lp = [0.0; 2];
        let _ = flow.log_prob(x.as_ref(), &mut ws, &mut lp);
        let mut y = Mat::zeros(d, 2);
        let _ = flow.inverse(x.as_ref(), y.as_mut(), &mut ws, Inverse::Learned);
        let mut grads = flow.zero_grads();
        let _ = flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0);
        let _ = flow.static_log_det(&mut ws);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    match b.small(5) {
        0 => {
            let c = 1 + b.small(6);
            let forward = Conv2dSpec {
                in_channels: c * (1 + b.small(2)),
                out_channels: c * (1 + b.small(2)),
                input: [b.small(12), b.small(12)],
                kernel: [b.small(8), b.small(8)],
                stride: [b.small(3), b.small(3)],
                padding: [b.small(5), b.small(5)],
                dilation: [b.small(3), b.small(3)],
                groups: b.small(4),
            };
            let cfg = SelfNormConv2dConfig { forward, inverse_kernel: [b.small(9), b.small(9)], bias: b.small(2) == 1 };
            let mut rng = snf::init::rng(b.byte() as u64);
            let shape = Shape::image(cfg.forward.in_channels, cfg.forward.input[0], cfg.forward.input[1]);
            if let Ok(l) = SelfNormConv2d::<f64>::new(cfg, &mut rng) {
                run_flow(shape, Box::new(l));
            }
            if let Ok(l) = ExactConv2d::<f64>::new(cfg, &mut rng) {
                run_flow(shape, Box::new(l));
            }
        }
        1 => {
            let cfg = SplineConfig { bins: b.small(20), tail_bound: b.float(), min_width: b.float(), min_height: b.float(), min_derivative: b.float() };
            let d = b.small(64);
            if let Ok(s) = SplineActivation::<f64>::new(d, cfg) {
                run_flow(Shape::flat(d), Box::new(s));
            }
        }
        2 => {
            let (c, h, w) = (b.small(5), b.small(9), b.small(9));
            if let Ok(s) = Squeeze::new(c, h, w) {
                run_flow(Shape::image(c, h, w), Box::new(s));
            }
            // huge declared sizes: a typed error, never an overflow
            let _ = Squeeze::new((1 << 62) + b.small(3), 2 + 2 * b.small(2), 2);
            let shape = Shape::image(b.small(6), b.small(6), b.small(6));
            if let Ok(s) = Split::<f64>::new(shape) {
                run_flow(shape, Box::new(s));
            }
        }
        3 => {
            let (n, m) = (b.small(6), b.small(6));
            let w = Mat::from_fn(n, m, |_, _| b.float());
            let r = Mat::from_fn(n, m, |_, _| b.float());
            if let Ok(l) = SelfNormLinear::from_parts(w, r, None) {
                run_flow(Shape::flat(n), Box::new(l));
            }
        }
        _ => {
            // a layer description from arbitrary JSON, built from tensors of arbitrary shapes
            let split = b.small(64).min(b.0.len());
            let (json, rest) = b.0.split_at(split);
            let mut b = Bytes(rest);
            if let Ok(spec) = serde_json::from_slice::<LayerSpec>(json) {
                let tensors = spec.tensor_names().iter().map(|_| Mat::from_fn(b.small(10), b.small(10), |_, _| 0.01)).collect();
                if let Ok(l) = spec.build::<f64>(tensors) {
                    let shape = (1..=4096).map(Shape::flat).find(|s| l.output_shape(*s).is_ok());
                    if let Some(shape) = shape {
                        run_flow(shape, l);
                    }
                }
            }
        }
    }
});
