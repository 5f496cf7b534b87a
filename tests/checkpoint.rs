//! Checkpoints: exact round trips for every layer kind, precision conversion, bit-identical
//! resumption of training, and typed errors (never a panic, never a silently different
//! model) for truncated, bit-flipped, edited or foreign files.

use faer::{Mat, Par};
use snf::checkpoint::{write_atomic, write_atomic_with, Checkpoint};
use snf::data::mnist::Mnist;
use snf::flow::models::{conv_nine_layer, fc_two_layer};
use snf::flow::Flow;
use snf::optim::AdamConfig;
use snf::train::{Geco, Lambda, TrainConfig, Trainer};
use snf::{CheckpointError, Error};

fn same_params<A: snf::Real, B: snf::Real>(a: &Flow<A>, b: &Flow<B>) -> bool {
    a.layers().len() == b.layers().len()
        && a.layers().iter().zip(b.layers()).all(|(la, lb)| {
            let (pa, pb) = (la.params(), lb.params());
            la.kind() == lb.kind()
                && pa.len() == pb.len()
                && pa.iter().zip(&pb).all(|(a, b)| {
                    let (ma, mb) = (a.value, b.value);
                    a.name == b.name
                        && ma.nrows() == mb.nrows()
                        && ma.ncols() == mb.ncols()
                        && (0..ma.ncols()).all(|j| (0..ma.nrows()).all(|i| ma[(i, j)].as_f64().to_bits() == mb[(i, j)].as_f64().to_bits()))
                })
        })
}

#[test]
fn every_layer_kind_round_trips_bit_for_bit() {
    for snf_layers in [true, false] {
        let fc = fc_two_layer::<f32, _>(
            snf::data::mnist::SHAPE,
            if snf_layers { snf::flow::models::Gradient::SelfNormalizing } else { snf::flow::models::Gradient::Exact },
            &mut snf::init::rng(1),
        )
        .unwrap();
        let conv = conv_nine_layer::<f64, _>(
            snf::data::mnist::SHAPE,
            if snf_layers { snf::flow::models::Gradient::SelfNormalizing } else { snf::flow::models::Gradient::Exact },
            &mut snf::init::rng(2),
        )
        .unwrap();
        let ck = Checkpoint::new(fc).unwrap();
        let back = Checkpoint::<f32>::from_bytes(&ck.to_bytes().unwrap(), "t").unwrap();
        assert!(same_params(&ck.flow, &back.flow));
        assert_eq!(back.static_log_det.to_bits(), ck.static_log_det.to_bits());
        let ck = Checkpoint::new(conv).unwrap();
        let back = Checkpoint::<f64>::from_bytes(&ck.to_bytes().unwrap(), "t").unwrap();
        assert!(same_params(&ck.flow, &back.flow));
        // the rebuilt flow computes the same function (same kinds, configs, parameters)
        let x = Mat::from_fn(784, 2, |i, j| ((i * 7 + j * 13) % 256) as f64 + 0.5);
        let (mut a, mut b) = ([0.0; 2], [0.0; 2]);
        let mut wa = ck.flow.workspace(2, Par::Seq).unwrap();
        let mut wb = back.flow.workspace(2, Par::Seq).unwrap();
        ck.flow.log_prob_given(x.as_ref(), ck.static_log_det, &mut wa, &mut a).unwrap();
        back.flow.log_prob_given(x.as_ref(), back.static_log_det, &mut wb, &mut b).unwrap();
        assert_eq!(a, b);
        // and its cached log-det is the one a fresh LU gives
        assert!((back.flow.static_log_det(&mut wb).unwrap() - back.static_log_det).abs() <= 1e-9 * back.static_log_det.abs().max(1.0));
    }
}

#[test]
fn the_conv_baselines_round_trip_bit_for_bit() {
    use snf::flow::models::{conv_nine_layer_with, ConvMixing};
    for (seed, mixing) in [ConvMixing::Emerging, ConvMixing::ConvExp].into_iter().enumerate() {
        let flow = conv_nine_layer_with::<f64, _>(snf::data::mnist::SHAPE, mixing, &mut snf::init::rng(3 + seed as u64)).unwrap();
        let ck = Checkpoint::new(flow).unwrap();
        let back = Checkpoint::<f64>::from_bytes(&ck.to_bytes().unwrap(), "t").unwrap();
        assert!(same_params(&ck.flow, &back.flow), "{mixing:?}");
        assert_eq!(back.static_log_det.to_bits(), ck.static_log_det.to_bits(), "{mixing:?}");
        let x = Mat::from_fn(784, 2, |i, j| ((i * 7 + j * 13) % 256) as f64 + 0.5);
        let (mut a, mut b) = ([0.0; 2], [0.0; 2]);
        let mut wa = ck.flow.workspace(2, Par::Seq).unwrap();
        let mut wb = back.flow.workspace(2, Par::Seq).unwrap();
        ck.flow.log_prob_given(x.as_ref(), ck.static_log_det, &mut wa, &mut a).unwrap();
        back.flow.log_prob_given(x.as_ref(), back.static_log_det, &mut wb, &mut b).unwrap();
        assert_eq!(a, b, "{mixing:?}");
        assert!(a.iter().all(|v| v.is_finite()), "{mixing:?}: {a:?}");
    }
}

/// Glow (ActNorms and couplings initialised from data, then moved) with each mixing: the
/// same parameters, initialisation flags and log-likelihoods after a round trip.
#[test]
fn glow_round_trips_bit_for_bit() {
    use snf::flow::glow::{glow, GlowConfig, GlowMixing};
    use snf::layers::AffineCoupling;
    let shape = snf::prelude::Shape::image(1, 8, 8);
    let x = Mat::from_fn(64, 4, |i, j| ((i * 7 + j * 13) % 256) as f64 + 0.5);
    for (seed, mixing) in [GlowMixing::Exact1x1, GlowMixing::Lu1x1, GlowMixing::Snf1x1, GlowMixing::Snf(5)].into_iter().enumerate() {
        let mut flow = glow::<f64, _>(shape, GlowConfig::new(2, 2, 4, mixing), &mut snf::init::rng(30 + seed as u64)).unwrap();
        flow.data_init(x.as_ref(), Par::Seq).unwrap();
        for l in flow.layers_mut() {
            for mut p in l.params_mut() {
                p[(0, 0)] += 0.01;
            }
        }
        let ck = Checkpoint::new(flow).unwrap();
        let back = Checkpoint::<f64>::from_bytes(&ck.to_bytes().unwrap(), "t").unwrap();
        assert!(same_params(&ck.flow, &back.flow), "{mixing:?}");
        let k = (0..back.flow.layers().len()).find(|&k| back.flow.layers()[k].kind() == "affine-coupling").unwrap();
        assert!(back.flow.layer::<AffineCoupling<f64>>(k).unwrap().is_initialized(), "{mixing:?}: the initialisation flag was lost");
        let (mut a, mut b) = ([0.0; 4], [0.0; 4]);
        let mut wa = ck.flow.workspace(4, Par::Seq).unwrap();
        let mut wb = back.flow.workspace(4, Par::Seq).unwrap();
        ck.flow.log_prob_given(x.as_ref(), ck.static_log_det, &mut wa, &mut a).unwrap();
        back.flow.log_prob_given(x.as_ref(), back.static_log_det, &mut wb, &mut b).unwrap();
        assert_eq!(a, b, "{mixing:?}");
        assert!(a.iter().all(|v| v.is_finite()), "{mixing:?}: {a:?}");
    }
}

#[test]
fn f32_checkpoints_load_as_f64_exactly() {
    let fc = fc_two_layer::<f32, _>(snf::data::mnist::SHAPE, snf::flow::models::Gradient::SelfNormalizing, &mut snf::init::rng(4)).unwrap();
    let ck = Checkpoint::new(fc).unwrap();
    let bytes = ck.to_bytes().unwrap();
    assert_eq!(snf::checkpoint::stored_dtype(&bytes, "t").unwrap(), "f32");
    let wide = Checkpoint::<f64>::from_bytes(&bytes, "t").unwrap();
    assert!(same_params(&ck.flow, &wide.flow));
}

mod common;

fn small_mnist() -> Mnist {
    common::small_mnist(300, 200)
}

/// Three epochs in one go equal one epoch, a checkpoint through bytes, and two more epochs
/// resumed from it: parameters, optimiser moments, λ (a GECO multiplier, whose state is
/// the hardest to carry) and records, bit for bit.
#[test]
fn resuming_from_a_checkpoint_is_bit_identical() {
    let m = small_mnist();
    let cfg = TrainConfig {
        epochs: 3,
        adam: AdamConfig { lr: 1e-3, ..Default::default() },
        lambda: Lambda::Geco(Geco::new(3.0, 1.0)),
        angle_batches: 1,
        ..Default::default()
    };
    let fresh = || fc_two_layer::<f32, _>(snf::data::mnist::SHAPE, snf::flow::models::Gradient::SelfNormalizing, &mut snf::init::rng(5)).unwrap();
    let mut straight = Trainer::new(fresh(), cfg, Par::rayon(2)).unwrap();
    for _ in 0..3 {
        straight.epoch(&m.train, &m.valid).unwrap();
    }

    let mut first = Trainer::new(fresh(), cfg, Par::rayon(2)).unwrap();
    first.epoch(&m.train, &m.valid).unwrap();
    let best = Checkpoint::new(first.best().unwrap().2.clone()).unwrap().to_bytes().unwrap();
    let bytes = Checkpoint::new(first.flow().clone()).unwrap().with_training(*first.config(), first.state()).to_bytes().unwrap();
    drop(first);
    let ck = Checkpoint::<f32>::from_bytes(&bytes, "t").unwrap();
    let (cfg2, state) = ck.training.unwrap();
    assert_eq!(cfg2, cfg);
    let best_flow = Checkpoint::<f32>::from_bytes(&best, "b").unwrap().flow;
    let mut resumed = Trainer::resume(ck.flow, cfg2, Par::rayon(2), state, Some(best_flow)).unwrap();
    assert_eq!(resumed.next_epoch(), 2);
    for _ in 0..2 {
        resumed.epoch(&m.train, &m.valid).unwrap();
    }

    assert!(same_params(straight.flow(), resumed.flow()));
    let (a, b) = (straight.state(), resumed.state());
    assert_eq!(a.adam, b.adam, "optimiser moments differ");
    assert_eq!(a.lambda, b.lambda);
    assert_eq!(a.step, b.step);
    assert_eq!(a.best, b.best);
    let nll = |t: &Trainer<f32>| t.history().iter().map(|r| r.val_nll.to_bits()).collect::<Vec<_>>();
    assert_eq!(nll(&straight), nll(&resumed));
}

fn sample_bytes() -> Vec<u8> {
    let fc = fc_two_layer::<f32, _>(snf::data::mnist::SHAPE, snf::flow::models::Gradient::SelfNormalizing, &mut snf::init::rng(6)).unwrap();
    Checkpoint::new(fc).unwrap().with_meta(serde_json::json!({"note": "test"})).to_bytes().unwrap()
}

fn kind(e: Error) -> &'static str {
    match e {
        Error::Checkpoint(CheckpointError::Format { .. }) => "format",
        Error::Checkpoint(CheckpointError::Checksum { .. }) => "checksum",
        Error::Checkpoint(CheckpointError::Invalid { .. }) => "invalid",
        Error::Checkpoint(CheckpointError::Io { .. }) => "io",
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_flipped_bit_anywhere_in_the_tensors_is_a_checksum_error() {
    let bytes = sample_bytes();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_start = 8 + n;
    // a few positions across the tensor data, including the first and last byte
    for pos in [data_start, data_start + 12_345, (data_start + bytes.len()) / 2, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        let e = Checkpoint::<f32>::from_bytes(&b, "flipped").unwrap_err();
        assert_eq!(kind(e), "checksum", "byte {pos}");
    }
}

#[test]
fn truncated_empty_and_foreign_files_are_format_errors() {
    let bytes = sample_bytes();
    for len in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let e = Checkpoint::<f32>::from_bytes(&bytes[..len], "truncated").unwrap_err();
        assert_eq!(kind(e), "format", "length {len}");
    }
    let e = Checkpoint::<f32>::from_bytes(b"definitely not a checkpoint", "junk").unwrap_err();
    assert_eq!(kind(e), "format");
    // a valid safetensors file that is not ours
    let t = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 1], &[0, 0, 0, 0]).unwrap();
    let foreign = safetensors::serialize([("x", t)], None).unwrap();
    assert_eq!(kind(Checkpoint::<f32>::from_bytes(&foreign, "foreign").unwrap_err()), "format");
}

#[test]
fn edited_metadata_is_detected() {
    let bytes = sample_bytes();
    // change one character of the JSON header without changing its length
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let at = header.find("\\\"test\\\"").expect("the meta note is in the header") + 3;
    let mut b = bytes.clone();
    b[8 + at] = b'b';
    assert_eq!(kind(Checkpoint::<f32>::from_bytes(&b, "edited").unwrap_err()), "checksum");
}

#[test]
fn missing_files_are_io_errors_and_atomic_writes_leave_the_old_file_until_the_rename() {
    let dir = std::env::temp_dir().join(format!("snf-ckpt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    assert_eq!(kind(Checkpoint::<f32>::load(&path).unwrap_err()), "io");
    write_atomic(&path, b"old").unwrap();
    // the hook runs when the new contents are complete in the temporary file
    write_atomic_with(&path, b"new", |tmp| {
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read(tmp).unwrap(), b"new");
    })
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    // a folder that does not exist
    let e = write_atomic(&dir.join("no/such/folder/c"), b"x").unwrap_err();
    assert!(matches!(e, Error::Checkpoint(CheckpointError::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fuzz seeds (`scripts/fuzz_seeds.py`) are real checkpoints once re-sealed, so the
/// checkpoint fuzzer starts from inputs that reach the layer builders; this also pins the
/// JSON format the seeds were written in.
#[test]
fn fuzz_seeds_load_once_resealed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/checkpoint_loader");
    for name in ["fc4", "conv4"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        // as committed, the digest is a placeholder
        assert_eq!(kind(Checkpoint::<f32>::from_bytes(&bytes, name).unwrap_err()), "checksum");
        let sealed = snf::checkpoint::fuzzing::reseal(&bytes).unwrap();
        let c = Checkpoint::<f32>::from_bytes(&sealed, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.flow.dim(), 4);
    }
}
