//! `Standardize`: fitting, typed errors, and a checkpoint round trip. The transform contract
//! (inverse, log-det against the dense Jacobian, input delta by finite differences) is in
//! tests/transform_contract.rs.

use faer::{Mat, Par};
use snf::checkpoint::Checkpoint;
use snf::data::Tensor;
use snf::layers::linear::SelfNormLinear;
use snf::layers::Standardize;
use snf::prelude::*;

#[test]
fn fit_gives_the_population_mean_and_spread_even_far_from_zero() {
    // values near 1e8 with spread 1: a one-pass E[x^2] - E[x]^2 would lose most digits
    let data = Tensor::flat(Mat::from_fn(2, 4, |i, j| if i == 0 { 1e8 + [1.0, -1.0, 1.0, -1.0][j] } else { 5.0 })).unwrap();
    let s = Standardize::fit(&data).unwrap();
    assert_eq!(s.mean(), &[1e8, 5.0]);
    // exactly 1 (spread of +-1 about the mean) and the constant row's fallback 1
    assert_eq!(s.std(), &[1.0, 1.0]);
}

#[test]
fn bad_statistics_and_shapes_are_typed_errors() {
    assert!(Standardize::new(vec![], vec![]).is_err());
    assert!(Standardize::new(vec![0.0], vec![0.0]).is_err());
    assert!(Standardize::new(vec![0.0], vec![-1.0]).is_err());
    assert!(Standardize::new(vec![f64::NAN], vec![1.0]).is_err());
    assert!(Standardize::new(vec![0.0, 1.0], vec![1.0]).is_err());
    let s = Standardize::new(vec![0.0, 1.0], vec![1.0, 2.0]).unwrap();
    assert!(<Standardize as Transform<f64>>::output_shape(&s, Shape::flat(3)).is_err());
    assert!(Flow::<f64>::builder(Shape::flat(3)).then(s).build().is_err());
}

#[test]
fn a_flow_with_it_saves_and_loads_to_the_same_likelihood() {
    let mut rng = snf::init::rng(4);
    let x = Mat::<f64>::from_fn(3, 5, |i, j| 100.0 * i as f64 + ((i * 7 + j * 3) % 5) as f64);
    let st = Standardize::fit(&Tensor::flat(x.clone()).unwrap()).unwrap();
    let flow = Flow::<f64>::builder(Shape::flat(3)).then(st).then(SelfNormLinear::<f64>::new(3, true, &mut rng).unwrap()).build().unwrap();
    let mut ws = flow.workspace(5, Par::Seq).unwrap();
    let mut lp = vec![0.0; 5];
    flow.log_prob(x.as_ref(), &mut ws, &mut lp).unwrap();
    let bytes = Checkpoint::new(flow.clone()).unwrap().to_bytes().unwrap();
    let back = Checkpoint::<f64>::from_bytes(&bytes, "test").unwrap().flow;
    let mut ws2 = back.workspace(5, Par::Seq).unwrap();
    let mut lp2 = vec![0.0; 5];
    back.log_prob(x.as_ref(), &mut ws2, &mut lp2).unwrap();
    assert_eq!(lp, lp2);
}
