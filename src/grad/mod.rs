//! Gradient diagnostics: the angle between the self-normalizing and exact gradients.

mod angle;

pub use angle::angle_degrees;
