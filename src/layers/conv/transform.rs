//! [`SelfNormConv2d`] and [`ExactConv2d`] as [`Transform`]s.

use faer::{MatMut, MatRef, Par};

use super::{Conv2dGrads, ConvWorkspace, ExactConv2d, ExactConv2dGrads, ExactConv2dWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
use crate::error::Result;
use crate::layers::linear::InverseFit;
use crate::real::Real;
use crate::shape::{shape_error, Shape};
use crate::transform::{Blocks, BlocksMut, GradBlocks, Grads, Param, SelfNormalizing, Tape, Transform, Workspace};

impl<T: Real> GradBlocks<T> for Conv2dGrads<T> {
    fn blocks(&self) -> Blocks<'_, T> {
        Conv2dGrads::blocks(self).collect()
    }
    fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        [Some(self.w.as_mut()), Some(self.r.as_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>> {
        Box::new(self.clone())
    }
}

impl<T: Real> GradBlocks<T> for ExactConv2dGrads<T> {
    fn blocks(&self) -> Blocks<'_, T> {
        [Some(self.w.as_ref()), self.b.as_ref().map(|b| b.as_ref())].into_iter().flatten().collect()
    }
    fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        [Some(self.w.as_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>> {
        Box::new(self.clone())
    }
}

/// The image shape a convolution of `config` maps (input = output).
fn conv_shape(config: &SelfNormConv2dConfig) -> Shape {
    let [h, w] = config.forward.input;
    Shape::image(config.forward.in_channels, h, w)
}

fn conv_output(op: &'static str, config: &SelfNormConv2dConfig, input: Shape) -> Result<Shape> {
    let want = conv_shape(config);
    if input.fits(want) {
        Ok(want)
    } else {
        Err(shape_error(op, want, input))
    }
}

fn spec_of(kind: &str, config: &SelfNormConv2dConfig) -> serde_json::Value {
    crate::transform::spec_with_kind(kind, config)
}

impl<T: Real> Transform<T> for SelfNormConv2d<T> {
    fn kind(&self) -> &'static str {
        "snf-conv"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        conv_output("SelfNormConv2d::output_shape", self.config(), input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        let mut buffers = ConvWorkspace::new(self, max_batch, par)?;
        if let InverseFit::Projection(_) = self.fit {
            buffers = buffers.with_projection()?;
        }
        Workspace::new(buffers, max_batch, par)
    }
    fn after_step(&mut self, ws: &mut Workspace<T>) -> Result<()> {
        self.apply_projection(ws.buffers_mut()?).map(|_| ())
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        SelfNormConv2d::forward(self, x, y, ws.buffers_mut()?)?;
        Ok(ws.record(x))
    }
    fn backward(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        lambda: T,
    ) -> Result<f64> {
        ws.consume(tape, x)?;
        SelfNormConv2d::backward(self, x, dy, dx, grads.downcast_mut()?, ws.buffers_mut()?, lambda).map(|s| s.reconstruction_error)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        self.inverse_exact(y, x, ws.buffers_mut()?)
    }
    fn static_log_det(&self, ws: &mut Workspace<T>) -> Result<f64> {
        self.log_abs_det(ws.buffers_mut()?)
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        let mut v = vec![Param { name: "w", value: self.w() }, Param { name: "r", value: self.r() }];
        v.extend(self.bias().map(|b| Param { name: "b", value: b }));
        v
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        SelfNormConv2d::params_mut(self).collect()
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(SelfNormConv2d::zero_grads(self))
    }
    fn spec(&self) -> serde_json::Value {
        let mut spec = spec_of("snf-conv", self.config());
        // the paper's layer keeps the spec older checkpoints have
        if let (InverseFit::Projection(_), Some(map)) = (self.fit, spec.as_object_mut()) {
            map.insert("inverse_fit".into(), serde_json::json!(self.fit));
        }
        spec
    }
    fn as_self_normalizing(&self) -> Option<&dyn SelfNormalizing<T>> {
        Some(self)
    }
}

impl<T: Real> SelfNormalizing<T> for SelfNormConv2d<T> {
    fn prepare_exact(&self, ws: &mut Workspace<T>) -> Result<()> {
        let cw = ws.buffers_mut::<ConvWorkspace<T>>()?;
        self.check_ws("SelfNormConv2d::prepare_exact", cw)?;
        cw.ensure_exact()?;
        Ok(())
    }
    fn inverse_learned(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        SelfNormConv2d::inverse(self, y, x, ws.buffers_mut()?)
    }
    fn g_forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        self.g_inverse(x, y, ws.buffers_mut()?)
    }
    fn backward_exact(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dz_f: MatRef<'_, T>,
        dz_g: MatRef<'_, T>,
        dx_f: MatMut<'_, T>,
        dx_g: MatMut<'_, T>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        lambda: T,
    ) -> Result<f64> {
        ws.consume(tape, x)?;
        SelfNormConv2d::backward_exact(self, x, dz_f, dz_g, dx_f, dx_g, grads.downcast_mut()?, ws.buffers_mut()?, lambda).map(|s| s.reconstruction_error)
    }
}

impl<T: Real> Transform<T> for ExactConv2d<T> {
    fn kind(&self) -> &'static str {
        "exact-conv"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        conv_output("ExactConv2d::output_shape", self.config(), input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        Workspace::new(ExactConv2dWorkspace::new(self, par)?, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        crate::layers::check_batch("ExactConv2d::forward", x, self.dim(), ws.max_batch())?;
        ExactConv2d::forward(self, x, y, ws.buffers_mut()?)?;
        Ok(ws.record(x))
    }
    fn backward(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        _lambda: T,
    ) -> Result<f64> {
        ws.consume(tape, x)?;
        ExactConv2d::backward(self, x, dy, dx, grads.downcast_mut()?, ws.buffers_mut()?).map(|_| 0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        ExactConv2d::inverse(self, y, x, ws.buffers_mut()?)
    }
    fn static_log_det(&self, ws: &mut Workspace<T>) -> Result<f64> {
        self.log_abs_det(ws.buffers_mut()?)
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        let mut v = vec![Param { name: "w", value: self.w() }];
        v.extend(self.bias().map(|b| Param { name: "b", value: b }));
        v
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        ExactConv2d::params_mut(self).into_iter().collect()
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(ExactConv2d::zero_grads(self))
    }
    fn spec(&self) -> serde_json::Value {
        spec_of("exact-conv", self.config())
    }
}
