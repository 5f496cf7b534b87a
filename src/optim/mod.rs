//! Optimisers. They see `(parameter, gradient)` pairs, never data or layers.

mod adam;

pub use adam::{Adam, AdamConfig, AdamState};
