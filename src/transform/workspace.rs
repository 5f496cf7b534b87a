//! A transform's buffers and the tape that ties a backward pass to its forward pass.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use faer::{MatRef, Par};

use crate::error::{Error, Result};
use crate::real::Real;

/// Proof that a forward pass ran on one input batch with one workspace; consumed by the
/// matching backward pass. Only [`Workspace::record`] makes one, and it cannot be copied.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "pass the tape to backward"]
pub struct Tape {
    generation: u64,
    input: InputKey,
}

impl Tape {
    /// The batch width of the forward pass.
    pub fn batch(&self) -> usize {
        self.input.cols
    }
}

/// Where an input batch lives and its shape: a view of the same memory and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InputKey {
    ptr: usize,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl InputKey {
    fn of<T>(x: MatRef<'_, T>) -> Self {
        Self { ptr: x.as_ptr() as usize, rows: x.nrows(), cols: x.ncols(), row_stride: x.row_stride(), col_stride: x.col_stride() }
    }
}

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A transform's buffers (any type the transform chooses, allocated once), its
/// parallelism and batch capacity, and the record of the last forward pass.
pub struct Workspace<T: Real> {
    inner: Box<dyn Any + Send + Sync>,
    par: Par,
    max_batch: usize,
    live: Option<(u64, InputKey)>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Real> std::fmt::Debug for Workspace<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("par", &self.par).field("max_batch", &self.max_batch).field("live", &self.live.is_some()).finish_non_exhaustive()
    }
}

impl<T: Real> Workspace<T> {
    /// A workspace holding `buffers` (use `()` for a stateless transform).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `max_batch == 0`.
    pub fn new<W: Any + Send + Sync>(buffers: W, max_batch: usize, par: Par) -> Result<Self> {
        if max_batch == 0 {
            return Err(Error::InvalidArgument { op: "Workspace::new", reason: "max_batch must be positive".into() });
        }
        Ok(Self { inner: Box::new(buffers), par, max_batch, live: None, _t: PhantomData })
    }
    /// The parallelism the transform should use.
    pub fn par(&self) -> Par {
        self.par
    }
    /// The largest batch it holds.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// The transform's buffers, if they are a `W`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the workspace was made by another kind of transform.
    pub fn buffers<W: Any>(&self) -> Result<&W> {
        self.inner.downcast_ref().ok_or_else(foreign)
    }
    /// The transform's buffers, mutable.
    ///
    /// # Errors
    /// As [`buffers`](Self::buffers).
    pub fn buffers_mut<W: Any>(&mut self) -> Result<&mut W> {
        self.inner.downcast_mut().ok_or_else(foreign)
    }
    /// Record a forward pass on `x` and return its tape (a transform's `forward` ends with
    /// this). Any earlier tape of this workspace becomes stale.
    pub fn record(&mut self, x: MatRef<'_, T>) -> Tape {
        let key = InputKey::of(x);
        let generation = next_generation();
        self.live = Some((generation, key));
        Tape { generation, input: key }
    }
    /// Check that `tape` is the last forward pass of this workspace and that `x` is its
    /// input (same memory, same shape), and use it up (a transform's `backward` starts
    /// with this).
    ///
    /// # Errors
    /// [`Error::StaleTape`] otherwise.
    pub fn consume(&mut self, tape: Tape, x: MatRef<'_, T>) -> Result<()> {
        match self.live {
            Some((g, key)) if g == tape.generation => {
                if key != InputKey::of(x) {
                    return Err(Error::StaleTape { reason: "backward was given another input than its forward pass" });
                }
                self.live = None;
                Ok(())
            }
            Some(_) => Err(Error::StaleTape { reason: "the tape is not from the last forward pass of this workspace" }),
            None => Err(Error::StaleTape { reason: "no forward pass is pending on this workspace" }),
        }
    }
    /// Forget the pending forward pass (e.g. after an error).
    pub fn clear_tape(&mut self) {
        self.live = None;
    }
}

fn foreign() -> Error {
    Error::InvalidArgument { op: "Workspace::buffers", reason: "workspace made by another kind of transform".into() }
}
