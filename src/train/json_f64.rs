//! JSON for `f64` values that may be NaN or infinite (an evaluation of a diverged model):
//! finite values as numbers, the others as the strings `"NaN"`, `"inf"`, `"-inf"`, so
//! that a record always round-trips (plain JSON has no non-finite numbers).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Num(f64),
    Text(String),
}

fn to_repr(v: f64) -> Repr {
    if v.is_finite() {
        Repr::Num(v)
    } else if v.is_nan() {
        Repr::Text("NaN".into())
    } else if v > 0.0 {
        Repr::Text("inf".into())
    } else {
        Repr::Text("-inf".into())
    }
}

fn from_repr<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
    match r {
        Repr::Num(v) => Ok(v),
        Repr::Text(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(E::custom(format!("expected a number, \"NaN\", \"inf\" or \"-inf\", got {other:?}"))),
        },
    }
}

pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    to_repr(*v).serialize(s)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    from_repr(Repr::deserialize(d)?)
}

/// The same for `(layer, mean, sd)` lists.
pub(crate) mod triples {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[(usize, f64, f64)], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|&(k, a, b)| (k, to_repr(a), to_repr(b))).collect::<Vec<_>>().serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(usize, f64, f64)>, D::Error> {
        Vec::<(usize, Repr, Repr)>::deserialize(d)?.into_iter().map(|(k, a, b)| Ok((k, from_repr(a)?, from_repr(b)?))).collect()
    }
}
