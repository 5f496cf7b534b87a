//! Gradient diagnostics: the angle between the self-normalizing and exact gradients
//! (Fig. 3 of the paper).
//!
//! [`angle_degrees`] takes each gradient as a list of parameter blocks and treats the
//! list as one concatenated vector, so the same function gives
//! - the **per-layer** angle: pass one layer's blocks, e.g.
//!   `LinearGrads::blocks()` = `[dW, dR, db]` (or just `[dW]` for the W-gradient angle);
//! - the **whole-model** angle: pass every layer's blocks, chained in the same order for
//!   both gradients.

mod angle;

pub use angle::angle_degrees;
