//! Regression tests for the defects found by probing the library as a hostile user would
//! (issue "Reliability"): each of these failed on the release before the fix — a panic,
//! an abort on allocation failure, or a silently wrong answer — and is now a typed error.

mod common;

use faer::{Mat, Par};
use snf::checkpoint::{fuzzing::reseal, Checkpoint};
use snf::exact::Lu;
use snf::layers::conv::{SelfNormConv2d, SelfNormConv2dConfig};
use snf::layers::linear::{ExactLinear, LinearWorkspace, SelfNormLinear};
use snf::prelude::*;
use snf::CheckpointError;

/// Sizes no machine has: typed errors naming the size, never an abort.
#[test]
fn impossible_sizes_are_errors_not_aborts() {
    let too_big = |r: snf::Result<()>| match r {
        Err(Error::InvalidArgument { reason, .. }) => assert!(reason.contains("cannot be allocated"), "{reason}"),
        other => panic!("expected an allocation error, got {other:?}"),
    };
    too_big(LinearWorkspace::<f32>::new(784, 1 << 40, Par::Seq).map(|_| ()));
    too_big(LinearWorkspace::<f32>::new(usize::MAX, 2, Par::Seq).map(|_| ()));
    too_big(SelfNormLinear::<f32>::new(1 << 20, true, &mut snf::init::rng(0)).map(|_| ()));
    too_big(Lu::<f64>::new(1 << 20, 1, Par::Seq).map(|_| ()));
    let flow = snf::flow::models::fc_two_layer::<f32, _>(Shape::flat(16), snf::flow::models::Gradient::SelfNormalizing, &mut snf::init::rng(1)).unwrap();
    too_big(flow.workspace(1 << 40, Par::Seq).map(|_| ()));
    too_big(Trainer::new(flow, TrainConfig { batch: 1 << 40, ..Default::default() }, Par::Seq).map(|_| ()));
    // the dense exact path of a 1x1024x1024 convolution needs a 2^20 x 2^20 matrix
    let conv = SelfNormConv2d::<f32>::new(SelfNormConv2dConfig::new(1, [1024, 1024], 3), &mut snf::init::rng(2)).unwrap();
    let mut ws = Transform::<f32>::workspace(&conv, 1, Par::Seq).unwrap();
    too_big(conv.static_log_det(&mut ws).map(|_| ()));
}

/// A checkpoint whose checksum is valid but whose configuration declares a convolution on
/// 8192x8192 images (a few hundred bytes on disk) is refused before anything is sized.
#[test]
fn a_crafted_checkpoint_cannot_ask_for_gigabytes() {
    let flow = Flow::<f32>::builder(Shape::image(1, 4, 4))
        .then(SelfNormConv2d::new(SelfNormConv2dConfig::new(1, [4, 4], 3), &mut snf::init::rng(3)).unwrap())
        .build()
        .unwrap();
    let bytes = Checkpoint::new(flow).unwrap().to_bytes().unwrap();
    for size in ["8192", "32768"] {
        // the JSON document lives (escaped) in the safetensors header: edit the image size
        // there, keep the tensor bytes, and re-seal the SHA-256
        let (start, end) = header_span(&bytes);
        let header = String::from_utf8(bytes[start..end].to_vec()).unwrap();
        let new_header = header
            .replacen("\\\"input\\\":[4,4]", &format!("\\\"input\\\":[{size},{size}]"), 1)
            .replacen("\\\"shape\\\":[1,4,4]", &format!("\\\"shape\\\":[1,{size},{size}]"), 1)
            .replacen("\\\"dim\\\":16", &format!("\\\"dim\\\":{}", size.parse::<usize>().unwrap().pow(2)), 1);
        assert_ne!(new_header, header, "the header edit must apply");
        let crafted = reseal(&with_header(&bytes, &new_header)).unwrap();
        let t0 = std::time::Instant::now();
        match Checkpoint::<f32>::from_bytes(&crafted, "crafted") {
            Err(Error::Checkpoint(CheckpointError::Invalid { reason, .. })) => assert!(reason.contains("limit"), "{reason}"),
            other => panic!("expected CheckpointError::Invalid, got {:?}", other.map(|_| ())),
        }
        assert!(t0.elapsed().as_secs() < 5, "refused without building anything");
    }
}

/// `[start, end)` of the JSON header of a safetensors file (after its 8-byte length).
fn header_span(bytes: &[u8]) -> (usize, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (8, 8 + n)
}

/// The same file with another header (padded with spaces to keep tensors aligned).
fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
    let (start, end) = header_span(bytes);
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[end..]);
    let _ = start;
    out
}

/// Sizes that overflow `usize` are errors, directly and through a checkpoint's spec.
#[test]
fn overflowing_shapes_are_errors() {
    assert!(Squeeze::new((1 << 62) + 1, 2, 2).is_err());
    assert!(Squeeze::new(1 << 40, 1 << 24, 2).is_err());
    assert!(Shape::image(1 << 62, 4, 4).checked_dim().is_err());
    let spec = serde_json::json!({"kind": "squeeze", "shape": [(1u64 << 62) + 1, 2, 2]});
    let b: snf::checkpoint::LayerSpec = serde_json::from_value(spec).unwrap();
    assert!(b.build::<f64>(vec![]).is_err());
    assert!(Split::<f64>::new(Shape::image(1 << 62, 4, 4)).is_err());
}

/// Evaluation with a buffer narrower than the batch, or a zero batch, is an error.
#[test]
fn evaluation_buffers_are_checked() {
    let data = snf::data::toy::two_moons(50, 0.1, &mut snf::init::rng(4)).unwrap();
    let flow = Flow::<f64>::builder(Shape::flat(2)).then(SelfNormLinear::new(2, true, &mut snf::init::rng(5)).unwrap()).build().unwrap();
    let mut ws = flow.workspace(10, Par::Seq).unwrap();
    assert!(snf::train::evaluate(&flow, &data, 10, 0, &mut ws, &mut Mat::zeros(2, 5)).is_err(), "narrow buffer");
    assert!(snf::train::evaluate(&flow, &data, 0, 0, &mut ws, &mut Mat::zeros(2, 10)).is_err(), "zero batch");
    assert!(snf::train::evaluate(&flow, &data, 10, 0, &mut ws, &mut Mat::zeros(3, 10)).is_err(), "wrong rows");
}

/// Error messages name the right operation and the real sizes.
#[test]
fn messages_name_what_went_wrong() {
    match ExactLinear::<f64>::new(0, true, &mut snf::init::rng(0)) {
        Err(Error::InvalidArgument { op, .. }) => assert_eq!(op, "ExactLinear::new"),
        other => panic!("{other:?}"),
    }
    // an IDX header declaring 2^40 bytes: the message gives the size and the limit
    let mut idx = vec![0, 0, 8, 3];
    for d in [1u32 << 20, 1 << 10, 1 << 10] {
        idx.extend_from_slice(&d.to_be_bytes());
    }
    let e = snf::data::idx::parse_idx(&idx, "big").unwrap_err().to_string();
    assert!(e.contains("1099511627776") && e.contains("limit"), "{e}");
}

/// A gzip bomb whose header declares more than the limit is refused from its first
/// inflated bytes: 256 MiB of zeros compress to a few hundred KiB, and the loader stops
/// after the header instead of inflating them.
#[test]
fn a_gzip_bomb_is_refused_from_its_header() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("snf-bomb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut header = vec![0u8, 0, 8, 2];
    header.extend_from_slice(&(1u32 << 16).to_be_bytes());
    header.extend_from_slice(&(1u32 << 15).to_be_bytes()); // 2^31 bytes > 1 GiB
    e.write_all(&header).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        e.write_all(&zeros).unwrap();
    }
    let path = dir.join("bomb.gz");
    std::fs::write(&path, e.finish().unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    let err = snf::data::idx::read_idx_checked(&path).unwrap_err().to_string();
    assert!(err.contains("limit"), "{err}");
    assert!(t0.elapsed().as_millis() < 500, "refused without inflating the body ({:?})", t0.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Trainer::resume` refuses a best flow of another model.
#[test]
fn resume_refuses_a_best_flow_of_another_model() {
    use snf::flow::models::{fc_two_layer, Gradient};
    let a = fc_two_layer::<f32, _>(Shape::flat(8), Gradient::SelfNormalizing, &mut snf::init::rng(6)).unwrap();
    let other = fc_two_layer::<f32, _>(Shape::flat(8), Gradient::Exact, &mut snf::init::rng(6)).unwrap();
    let data = snf::data::Tensor::flat(Mat::from_fn(8, 200, |i, j| ((i * 31 + j * 7) % 200) as f64 + 20.0)).unwrap();
    let cfg = TrainConfig { epochs: 1, batch: 50, angle_batches: 0, ..Default::default() };
    let mut t = Trainer::new(a.clone(), cfg, Par::Seq).unwrap();
    t.epoch(&data, &data).unwrap();
    let state = t.state();
    assert!(Trainer::resume(a.clone(), cfg, Par::Seq, state.clone(), Some(other)).is_err());
    assert!(Trainer::resume(a.clone(), cfg, Par::Seq, state, Some(t.best().unwrap().2.clone())).is_ok());
}

/// The exact path only measures the SNF-vs-exact angle: a batch where it cannot (a
/// singular W, so no W^{-T}) goes unmeasured and self-normalizing training goes on. This
/// aborted a Glow SNF 5x5 run ("Lu::solve_transpose_in_place: non-finite value") before
/// the fix.
#[test]
fn an_exact_path_that_fails_does_not_stop_snf_training() {
    let d = 4;
    // rank 1: W^{-T} does not exist; R = I keeps the self-normalizing gradient finite
    let w = Mat::from_fn(d, d, |i, j| (0.5 + 0.1 * i as f64) * (1.0 + j as f64));
    assert!(snf::exact::log_abs_det(w.as_ref()).map_or(true, |v| !v.is_finite()), "W must be singular");
    let r = Mat::from_fn(d, d, |i, j| if i == j { 1.0 } else { 0.0 });
    let flow = Flow::<f64>::builder(Shape::flat(d)).then(SelfNormLinear::from_parts(w, r, None).unwrap()).build().unwrap();
    let data = snf::data::Tensor::flat(Mat::from_fn(d, 100, |i, j| ((i * 31 + j * 7) % 13) as f64 / 13.0 - 0.5)).unwrap();
    let cfg = TrainConfig { epochs: 1, batch: 50, angle_batches: 1, warmup_epochs: 0.0, ..Default::default() };
    let mut t = Trainer::new(flow, cfg, Par::Seq).unwrap();
    let rec = t.epoch(&data, &data).unwrap();
    assert_eq!(rec.skipped_steps, 0);
    assert!(rec.angles.is_empty(), "the failed batch must not be measured: {:?}", rec.angles);
    assert!(rec.val_nll.is_finite(), "after the steps W is invertible again: {}", rec.val_nll);
}
