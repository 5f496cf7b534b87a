//! [`SelfNormLinear`], [`ExactLinear`] and [`RelativeLinear`] as [`Transform`]s.

use faer::{MatMut, MatRef, Par};
use serde_json::json;

use super::{
    ExactLinear, ExactLinearGrads, ExactLinearWorkspace, InverseFit, LinearGrads, LinearWorkspace, RelativeLinear, RelativeLinearWorkspace, SelfNormLinear,
};
use crate::error::Result;
use crate::real::Real;
use crate::shape::{shape_error, Shape};
use crate::transform::{Blocks, BlocksMut, GradBlocks, Grads, Param, SelfNormalizing, Tape, Transform, Workspace};

impl<T: Real> GradBlocks<T> for LinearGrads<T> {
    fn blocks(&self) -> Blocks<'_, T> {
        LinearGrads::blocks(self).collect()
    }
    fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        [Some(self.w.as_mut()), Some(self.rt.as_mut().transpose_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>> {
        Box::new(self.clone())
    }
}

impl<T: Real> GradBlocks<T> for ExactLinearGrads<T> {
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

fn flat_output(op: &'static str, dim: usize, input: Shape) -> Result<Shape> {
    if input.dim() == dim {
        Ok(input)
    } else {
        Err(shape_error(op, Shape::flat(dim), input))
    }
}

impl<T: Real> Transform<T> for SelfNormLinear<T> {
    fn kind(&self) -> &'static str {
        "snf-linear"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        flat_output("SelfNormLinear::output_shape", self.dim(), input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        let mut buffers = LinearWorkspace::<T>::new(self.dim(), max_batch, par)?;
        if let InverseFit::Projection(_) = self.fit {
            buffers = buffers.with_projection()?;
        }
        Workspace::new(buffers, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        SelfNormLinear::forward(self, x, y, ws.buffers_mut()?)?;
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
        SelfNormLinear::backward(self, x, dy, dx, grads.downcast_mut()?, ws.buffers_mut()?, lambda).map(|s| s.reconstruction_error)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        self.inverse_exact(y, x, ws.buffers_mut()?)
    }
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        self.log_abs_det()
    }
    fn after_step(&mut self, ws: &mut Workspace<T>) -> Result<()> {
        self.apply_projection(ws.buffers_mut()?).map(|_| ())
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        let mut v = vec![Param { name: "w", value: self.w() }, Param { name: "r", value: self.r() }];
        v.extend(self.bias().map(|b| Param { name: "b", value: b }));
        v
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        [Some(self.w.as_mut()), Some(self.rt.as_mut().transpose_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(SelfNormLinear::zero_grads(self))
    }
    fn spec(&self) -> serde_json::Value {
        match self.fit {
            // the paper's layer keeps the spec older checkpoints have
            InverseFit::Penalty => json!({"kind": "snf-linear", "dim": self.dim(), "bias": self.b.is_some()}),
            fit => json!({"kind": "snf-linear", "dim": self.dim(), "bias": self.b.is_some(), "inverse_fit": fit}),
        }
    }
    fn as_self_normalizing(&self) -> Option<&dyn SelfNormalizing<T>> {
        Some(self)
    }
}

impl<T: Real> SelfNormalizing<T> for SelfNormLinear<T> {
    fn uses_penalty(&self) -> bool {
        self.fit == InverseFit::Penalty
    }
    fn prepare_exact(&self, ws: &mut Workspace<T>) -> Result<()> {
        ws.buffers_mut::<LinearWorkspace<T>>()?.ensure_exact().map(|_| ())
    }
    fn inverse_learned(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        SelfNormLinear::inverse(self, y, x, ws.buffers_mut()?)
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
        SelfNormLinear::backward_exact(self, x, dz_f, dz_g, dx_f, dx_g, grads.downcast_mut()?, ws.buffers_mut()?, lambda).map(|s| s.reconstruction_error)
    }
}

impl<T: Real> Transform<T> for ExactLinear<T> {
    fn kind(&self) -> &'static str {
        "exact-linear"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        flat_output("ExactLinear::output_shape", self.dim(), input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        Workspace::new(ExactLinearWorkspace::<T>::new(self.dim(), max_batch, par)?, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        ExactLinear::forward(self, x, y, ws.buffers()?)?;
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
        ExactLinear::backward(self, x, dy, dx, grads.downcast_mut()?, ws.buffers_mut()?).map(|_| 0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        ExactLinear::inverse(self, y, x, ws.buffers_mut()?)
    }
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        self.log_abs_det()
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        let mut v = vec![Param { name: "w", value: self.w() }];
        v.extend(self.bias().map(|b| Param { name: "b", value: b }));
        v
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        [Some(self.w.as_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(ExactLinear::zero_grads(self))
    }
    fn spec(&self) -> serde_json::Value {
        json!({"kind": "exact-linear", "dim": self.dim(), "bias": self.b.is_some()})
    }
}

impl<T: Real> Transform<T> for RelativeLinear<T> {
    fn kind(&self) -> &'static str {
        "relative-linear"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        flat_output("RelativeLinear::output_shape", self.dim(), input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        Workspace::new(RelativeLinearWorkspace::<T>::new(self.dim(), max_batch, par)?, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        RelativeLinear::forward(self, x, y, ws.buffers()?)?;
        Ok(ws.record(x))
    }
    /// The *relative* gradient (not the gradient): the exact one times $W^TW$.
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
        RelativeLinear::backward(self, x, dy, dx, grads.downcast_mut()?, ws.buffers_mut()?).map(|_| 0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        RelativeLinear::inverse(self, y, x, ws.buffers_mut()?)
    }
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        self.as_exact().log_abs_det()
    }
    // the same parameters, in the same order, as the exact twin it wraps
    fn params(&self) -> Vec<Param<'_, T>> {
        Transform::params(self.as_exact())
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        Transform::params_mut(self.as_exact_mut())
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(RelativeLinear::zero_grads(self))
    }
    fn spec(&self) -> serde_json::Value {
        json!({"kind": "relative-linear", "dim": self.dim(), "bias": self.as_exact().bias().is_some()})
    }
}
