//! The activations as [`Transform`]s: element-wise, so they take any shape and keep it.

use faer::{MatMut, MatRef, Par};
use serde_json::json;

use super::spline::SplineWorkspace;
use super::{LeakyRelu, ScalarBijection, SmoothLeakyRelu, SplineActivation, SplineGrads};
use crate::error::Result;
use crate::real::Real;
use crate::shape::{shape_error, Shape};
use crate::transform::{Blocks, BlocksMut, GradBlocks, Grads, Param, Tape, Transform, Workspace};

/// Any [`ScalarBijection`] applied entry-wise as a flow step (log-det
/// $\sum_i\log f'(x_i)$ per example). The built-in activations are their own transforms;
/// this wrapper puts a user's bijection in a [`Flow`](crate::flow::Flow).
/// (It has no checkpoint spec: register a kind of your own to save it.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Elementwise<F>(pub F);

macro_rules! elementwise_transform {
    ([$($gen:tt)*] $ty:ty, $f:ident => $kind:expr, $bij:expr, $spec:expr) => {
        impl<T: Real, $($gen)*> Transform<T> for $ty {
            fn kind(&self) -> &'static str {
                $kind
            }
            fn output_shape(&self, input: Shape) -> Result<Shape> {
                Ok(input)
            }
            fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
                Workspace::new((), max_batch, par)
            }
            fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
                let $f = self;
                super::forward($bij, x, y, logdet, ws.par())?;
                Ok(ws.record(x))
            }
            fn backward(&self, tape: Tape, x: MatRef<'_, T>, dy: MatRef<'_, T>, dx: MatMut<'_, T>, _grads: &mut Grads<T>, ws: &mut Workspace<T>, _lambda: T) -> Result<f64> {
                ws.consume(tape, x)?;
                let $f = self;
                super::backward($bij, x, dy, dx, ws.par()).map(|_| 0.0)
            }
            fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, _ws: &mut Workspace<T>) -> Result<()> {
                let $f = self;
                super::inverse($bij, y, x)
            }
            fn spec(&self) -> serde_json::Value {
                #[allow(unused_variables)]
                let $f = self;
                $spec
            }
        }
    };
}

elementwise_transform!([] SmoothLeakyRelu, f => "smooth-leaky-relu", f, json!({"kind": "smooth-leaky-relu", "alpha": f.alpha()}));
elementwise_transform!([] LeakyRelu, f => "leaky-relu", f, json!({"kind": "leaky-relu", "slope": f.slope()}));
elementwise_transform!([F: ScalarBijection + Clone + std::fmt::Debug + 'static] Elementwise<F>, f => "elementwise", &f.0, serde_json::Value::Null);

impl<T: Real> GradBlocks<T> for SplineGrads<T> {
    fn blocks(&self) -> Blocks<'_, T> {
        smallvec::smallvec![self.w.as_ref(), self.h.as_ref(), self.d.as_ref()]
    }
    fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        smallvec::smallvec![self.w.as_mut(), self.h.as_mut(), self.d.as_mut()]
    }
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>> {
        Box::new(self.clone())
    }
}

impl<T: Real> Transform<T> for SplineActivation<T> {
    fn kind(&self) -> &'static str {
        "spline"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        if input.dim() == self.dim() {
            Ok(input)
        } else {
            Err(shape_error("SplineActivation::output_shape", Shape::flat(self.dim()), input))
        }
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        Workspace::new(self.workspace_buffers()?, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        let par = ws.par();
        self.forward_in(x, y, logdet, ws.buffers_mut::<SplineWorkspace<T>>()?, par)?;
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
        let par = ws.par();
        self.backward_with(x, dy, dx, grads.downcast_mut()?, Some(ws.buffers_mut::<SplineWorkspace<T>>()?), par).map(|_| 0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, _ws: &mut Workspace<T>) -> Result<()> {
        SplineActivation::inverse(self, y, x)
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        let [w, h, d] = self.parameters();
        vec![Param { name: "widths", value: w }, Param { name: "heights", value: h }, Param { name: "slopes", value: d }]
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        SplineActivation::params_mut(self).into_iter().collect()
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(SplineActivation::zero_grads(self))
    }
    fn spec(&self) -> serde_json::Value {
        let mut v = crate::transform::spec_with_kind("spline", self.config());
        if let Some(m) = v.as_object_mut() {
            m.insert("dim".into(), self.dim().into());
        }
        v
    }
}
