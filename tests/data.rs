//! The IDX reader, checksums, the MNIST loader on the shipped copy, and shuffling.

use faer::Mat;
use snf::data::batches::epoch_order;
use snf::data::checksum::{parse_sums, sha256_hex};
use snf::data::idx::{parse_idx, read_idx};
use snf::data::mnist::{LoadOptions, Mnist, PIXELS};
use snf::{DataError, Error};

mod common;
use common::files::{gzip, idx_bytes, write_idx_set};

#[test]
fn idx_round_trips_and_rejects_malformed_files() {
    let data: Vec<u8> = (0..24).collect();
    let a = parse_idx(&idx_bytes(&[2, 3, 4], &data), "t").unwrap();
    assert_eq!((a.dims.clone(), a.data.clone()), (vec![2, 3, 4], data.clone()));
    // the same through a gzip file and a raw file on disk
    let dir = tempdir();
    std::fs::write(dir.join("a.gz"), gzip(&idx_bytes(&[2, 3, 4], &data))).unwrap();
    std::fs::write(dir.join("a"), idx_bytes(&[2, 3, 4], &data)).unwrap();
    assert_eq!(read_idx(&dir.join("a.gz")).unwrap(), a);
    assert_eq!(read_idx(&dir.join("a")).unwrap(), a);

    let header = |r: Result<_, DataError>| matches!(r, Err(DataError::BadHeader { .. }));
    let length = |r: Result<_, DataError>| matches!(r, Err(DataError::WrongLength { .. }));
    assert!(header(parse_idx(&[], "t")));
    assert!(header(parse_idx(&[0, 0, 8], "t")));
    assert!(header(parse_idx(&[1, 0, 8, 1, 0, 0, 0, 0], "t")), "magic must start with two zeros");
    assert!(header(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 0], "t")), "float elements are not supported");
    assert!(header(parse_idx(&[0, 0, 8, 0], "t")), "zero dimensions");
    assert!(header(parse_idx(&[0, 0, 8, 3, 0, 0, 0, 1], "t")), "header shorter than its dimension count");
    assert!(length(parse_idx(&idx_bytes(&[2, 3, 4], &data[..23]), "t")), "truncated payload");
    let mut long = data.clone();
    long.push(0);
    assert!(length(parse_idx(&idx_bytes(&[2, 3, 4], &long), "t")), "trailing bytes");
    // absurd dimensions: a header error giving the size they declare and the limit
    match parse_idx(&idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]), "t") {
        Err(DataError::BadHeader { reason, .. }) => assert!(reason.contains("79228162458924105385300197375") && reason.contains("limit"), "{reason}"),
        other => panic!("absurd dimensions: {other:?}"),
    }
    // a corrupt gzip stream is an I/O error, not a panic
    let mut gz = gzip(&idx_bytes(&[2, 3, 4], &data));
    let n = gz.len();
    gz.truncate(n - 9);
    std::fs::write(dir.join("bad.gz"), gz).unwrap();
    assert!(matches!(read_idx(&dir.join("bad.gz")), Err(DataError::Io { .. })));
    assert!(matches!(read_idx(&dir.join("missing")), Err(DataError::Io { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checksums_are_parsed_and_enforced() {
    // the SHA-256 of "abc" (FIPS 180-2, appendix B.1)
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let sums = parse_sums("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a.txt\n\n", "s").unwrap();
    assert_eq!(sums, vec![("a.txt".to_string(), sha256_hex(b"abc"))]);
    assert!(parse_sums("xyz  a.txt", "s").is_err());
    assert!(parse_sums(&"0".repeat(64), "s").is_err(), "no file name");

    // a copy of the shipped data with one flipped byte in one file is rejected
    let dir = tempdir();
    for f in std::fs::read_dir(Mnist::shipped_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let target = dir.join("t10k-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&target).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    match Mnist::load(&dir) {
        Err(Error::Data(DataError::Checksum { path, .. })) => assert!(path.ends_with("t10k-labels-idx1-ubyte.gz")),
        other => panic!("expected a checksum error, got {other:?}"),
    }
    // without verification the corrupt gzip trailer (its CRC) still fails, as I/O
    let unverified = LoadOptions { verify_checksums: false, ..Default::default() };
    assert!(matches!(Mnist::load_with(&dir, unverified), Err(Error::Data(DataError::Io { .. }))));
    // a missing checksum list is an error when verification is on
    std::fs::remove_file(dir.join("SHA256SUMS")).unwrap();
    assert!(matches!(Mnist::load(&dir), Err(Error::Data(DataError::Io { .. }))));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped copy, checked against facts about MNIST that do not come from this code:
/// the split sizes, the first training labels (5 0 4 1 9 2 1 3 1 4), the first test labels
/// (7 2 1 0 4 1 4 9 5 9), and the mean training pixel (0.1307 * 255 = 33.3 over all
/// 60 000; 33.395 over the first 50 000, computed independently with Python's gzip).
#[test]
fn shipped_mnist_loads_with_the_papers_split() {
    let m = Mnist::load(&Mnist::shipped_dir()).unwrap();
    assert_eq!((m.train.len(), m.valid.len(), m.test.len()), (50_000, 10_000, 10_000));
    assert_eq!(&m.train.labels()[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&m.test.labels()[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let mean = m.train.images().iter().map(|&p| p as f64).sum::<f64>() / m.train.images().len() as f64;
    assert!((mean - 33.395).abs() < 1e-3, "mean pixel {mean}");
    // every digit occurs in every split
    for s in [&m.train, &m.valid, &m.test] {
        assert!((0..10).all(|d| s.labels().contains(&d)));
    }
    // the validation split is the *last* 10 000 training images: they differ from the first
    assert_ne!(m.valid.image(0), m.train.image(0));
    // a batch: raw pixel values, one image per column
    let mut b = Mat::<f32>::zeros(PIXELS, 3);
    m.train.fill_batch(&[0, 7, 49_999], b.as_mut()).unwrap();
    assert_eq!(b[(14 * 28 + 14, 0)], m.train.image(0).unwrap()[14 * 28 + 14] as f32);
    assert!(m.train.fill_batch(&[50_000], Mat::<f32>::zeros(PIXELS, 1).as_mut()).is_err());
    assert!(m.train.fill_batch(&[0], Mat::<f32>::zeros(PIXELS, 2).as_mut()).is_err());
    // a validation split as large as the training set is rejected
    let opts = LoadOptions { validation: 60_000, ..Default::default() };
    assert!(matches!(Mnist::load_with(&Mnist::shipped_dir(), opts), Err(Error::Data(DataError::Inconsistent { .. }))));
}

#[test]
fn epoch_orders_are_permutations_fixed_by_seed_and_epoch() {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    epoch_order(1000, 7, 3, &mut a);
    epoch_order(1000, 7, 3, &mut b);
    assert_eq!(a, b, "same seed and epoch: same order (resumable)");
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "a permutation");
    epoch_order(1000, 7, 4, &mut c);
    assert_ne!(a, c, "another epoch: another order");
    epoch_order(1000, 8, 3, &mut c);
    assert_ne!(a, c, "another seed: another order");
    assert_ne!(a, (0..1000).collect::<Vec<_>>(), "actually shuffled");
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!("snf-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Any IDX folder laid out like MNIST: other image sizes, channels or flat vectors, gzip or
/// raw, labels optional, checksums verified only when a list is there (or required), the
/// validation split by size; every problem a typed error naming the file.
#[test]
fn any_idx_folder_loads_with_optional_checksums() {
    use snf::data::idx_set::{load_idx, Checksums, IdxOptions};
    use snf::data::Dataset;
    use snf::Shape;
    // 12x12 grey images, gzip, labelled, no checksum list
    let dir = tempdir();
    write_idx_set(&dir, &[12, 12], 120, 30, true, true);
    let s = load_idx(&dir, IdxOptions::default()).unwrap();
    assert_eq!(s.train.shape(), Shape::image(1, 12, 12));
    assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (100, 20, 30), "a sixth of 120 for validation");
    assert_eq!(s.valid.image(0).unwrap()[1], ((100 * 31 + 7) % 256) as u8, "validation = the last training images");
    assert_eq!(s.train.labels().len(), 100);
    let mut m = Mat::<f64>::zeros(144, 2);
    s.test.fill_batch(&[0, 29], m.as_mut()).unwrap();
    assert_eq!(m[(3, 1)], ((29 * 31 + 21) % 256) as f64);
    assert_eq!(s.train.dequantization(), snf::data::Dequantization::Uniform);
    // a checksum list is then required...
    let e = load_idx(&dir, IdxOptions { checksums: Checksums::Required, validation: None }).unwrap_err();
    assert!(e.to_string().contains("SHA256SUMS"), "{e}");
    // ...and, when present, enforced
    let mut sums = String::new();
    for f in ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"] {
        sums.push_str(&format!("{}  {f}\n", sha256_hex(&std::fs::read(dir.join(f)).unwrap())));
    }
    std::fs::write(dir.join("SHA256SUMS"), &sums).unwrap();
    load_idx(&dir, IdxOptions { checksums: Checksums::Required, validation: Some(10) }).unwrap();
    let mut lbl = std::fs::read(dir.join("t10k-labels-idx1-ubyte")).unwrap();
    lbl[9] ^= 1;
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), lbl).unwrap();
    assert!(matches!(load_idx(&dir, IdxOptions::default()), Err(Error::Data(DataError::Checksum { .. }))));
    assert!(load_idx(&dir, IdxOptions { checksums: Checksums::Skip, validation: None }).is_ok());
    // 3-channel and flat images, raw files, no labels
    let dir = tempdir();
    write_idx_set(&dir, &[3, 8, 8], 60, 12, false, false);
    let s = load_idx(&dir, IdxOptions { checksums: Checksums::IfPresent, validation: Some(12) }).unwrap();
    assert_eq!((s.train.shape(), s.train.len(), s.train.labels().len()), (Shape::image(3, 8, 8), 48, 0));
    let dir = tempdir();
    write_idx_set(&dir, &[10], 60, 12, false, false);
    assert_eq!(load_idx(&dir, IdxOptions::default()).unwrap().test.shape(), Shape::flat(10));
    // errors: a missing image file names the files it looked for; a validation split as
    // large as the set; labels that do not match; a 5-D array
    let empty = tempdir();
    let e = load_idx(&empty, IdxOptions::default()).unwrap_err().to_string();
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("t10k-labels-idx1-ubyte"), "{e}");
    assert!(load_idx(&dir, IdxOptions { checksums: Checksums::Skip, validation: Some(60) }).is_err());
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_bytes(&[59], &[0; 59])).unwrap();
    assert!(matches!(load_idx(&dir, IdxOptions::default()), Err(Error::Data(DataError::Inconsistent { .. }))));
    let dir = tempdir();
    write_idx_set(&dir, &[1, 1, 2, 2], 12, 6, false, false);
    assert!(matches!(load_idx(&dir, IdxOptions::default()), Err(Error::Data(DataError::BadHeader { .. }))));
}

/// CIFAR-10's binary records: label byte + 3 colour planes, in the crate's channel-major
/// layout; short or mislabelled files are typed errors.
#[test]
fn cifar10_binary_files_load() {
    use snf::data::cifar10::{load_cifar10, parse_batch, RECORD, SHAPE};
    use snf::data::idx_set::Checksums;
    let dir = tempdir();
    common::files::write_cifar(&dir, 4, 3);
    let record = |i: usize| -> Vec<u8> {
        let mut r = vec![(i % 10) as u8];
        r.extend((0..RECORD - 1).map(|p| ((i * 13 + p) % 251) as u8));
        r
    };
    let s = load_cifar10(&dir, 5, Checksums::IfPresent).unwrap();
    assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (15, 5, 3));
    assert_eq!(s.train.shape(), SHAPE);
    // pixel (c, y, x) of image i is byte 1 + c*1024 + y*32 + x of its record
    let img = s.train.image(6).unwrap();
    assert_eq!(img[2 * 1024 + 5 * 32 + 7], ((6 * 13 + 2 * 1024 + 5 * 32 + 7) % 251) as u8);
    assert_eq!(s.test.labels(), &[0, 1, 2]);
    // the files may sit in cifar-10-batches-bin/
    let outer = tempdir();
    std::fs::rename(&dir, outer.join("cifar-10-batches-bin")).unwrap();
    assert_eq!(load_cifar10(&outer, 5, Checksums::Skip).unwrap().train.len(), 15);
    // errors
    assert!(matches!(parse_batch(&record(0)[..100], "t"), Err(DataError::WrongLength { .. })));
    let mut bad = record(0);
    bad[0] = 10;
    assert!(matches!(parse_batch(&bad, "t"), Err(DataError::Inconsistent { .. })));
    let e = load_cifar10(&tempdir(), 5, Checksums::Skip).unwrap_err().to_string();
    assert!(e.contains("data_batch_1.bin"), "{e}");
    assert!(load_cifar10(&outer, 20, Checksums::Skip).is_err(), "validation as large as the training set");
}

/// A gzip file of several members (valid, and what `cat a.gz b.gz` makes) is read whole.
#[test]
fn multi_member_gzip_is_read_whole() {
    let bytes = idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    let (a, b) = bytes.split_at(7);
    let mut two = gzip(a);
    two.extend(gzip(b));
    let dir = tempdir();
    std::fs::write(dir.join("m.gz"), two).unwrap();
    assert_eq!(read_idx(&dir.join("m.gz")).unwrap().data, vec![1, 2, 3, 4, 5, 6]);
}

/// Toy densities and in-memory data: shapes, determinism under a seed, typed errors;
/// continuous data is used as it is (no dequantisation noise).
#[test]
fn toy_densities_and_tensors() {
    use snf::data::toy::{gaussian_mixture, two_moons};
    use snf::data::{Dataset, Dequantization, Tensor};
    let a = two_moons(500, 0.05, &mut snf::init::rng(1)).unwrap();
    let b = two_moons(500, 0.05, &mut snf::init::rng(1)).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.len(), a.shape().dim(), a.dequantization()), (500, 2, Dequantization::None));
    // points near the two half circles: radius 1 around (0, 0) or around (1, 0.5)
    let m = a.data();
    let near = (0..500).filter(|&j| {
        let (x, y) = (m[(0, j)], m[(1, j)]);
        let r0 = (x * x + y * y).sqrt();
        let r1 = ((x - 1.0).powi(2) + (y - 0.5).powi(2)).sqrt();
        (r0 - 1.0).abs() < 0.25 || (r1 - 1.0).abs() < 0.25
    });
    assert!(near.count() > 490);
    let g = gaussian_mixture(300, 3, 4, 0.1, &mut snf::init::rng(2)).unwrap();
    assert_eq!((g.len(), g.shape().dim()), (300, 3));
    assert!(two_moons(0, 0.1, &mut snf::init::rng(0)).is_err() && gaussian_mixture(10, 2, 0, 0.1, &mut snf::init::rng(0)).is_err());
    assert!(Tensor::flat(Mat::from_fn(2, 2, |i, _| if i == 0 { f64::NAN } else { 0.0 })).is_err());
    let mut out = Mat::<f32>::zeros(2, 2);
    a.fill_batch(&[3, 7], out.as_mut()).unwrap();
    assert_eq!(out[(1, 1)], m[(1, 7)] as f32);
    assert!(a.fill_batch(&[500], Mat::<f32>::zeros(2, 1).as_mut()).is_err());
}

/// Evaluation of continuous data draws no noise (any seed gives the same NLL), of pixel
/// data it does; an empty set is an error, not an NLL of 0.
#[test]
fn evaluation_follows_the_dequantisation_policy() {
    use faer::Par;
    use snf::data::toy::two_moons;
    use snf::prelude::*;
    let data = two_moons(64, 0.1, &mut snf::init::rng(3)).unwrap();
    let flow = Flow::<f64>::builder(Shape::flat(2)).then(SelfNormLinear::new(2, true, &mut snf::init::rng(4)).unwrap()).build().unwrap();
    let mut ws = flow.workspace(16, Par::Seq).unwrap();
    let mut batch = Mat::zeros(2, 16);
    let a = snf::train::evaluate(&flow, &data, 16, 1, &mut ws, &mut batch).unwrap();
    let b = snf::train::evaluate(&flow, &data, 16, 2, &mut ws, &mut batch).unwrap();
    assert_eq!(a, b);
    let empty = data.range(0, 0);
    assert!(snf::train::evaluate(&flow, &empty, 16, 1, &mut ws, &mut batch).is_err());
    assert!(snf::train::evaluate(&flow, &data, 0, 1, &mut ws, &mut batch).is_err());
    assert!(snf::train::evaluate(&flow, &data, 32, 1, &mut ws, &mut batch).is_err(), "wider than the workspace");
}
