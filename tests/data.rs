//! The IDX reader, checksums, the MNIST loader on the shipped copy, and shuffling.

use std::io::Write;

use faer::Mat;
use snf::data::batches::epoch_order;
use snf::data::checksum::{parse_sums, sha256_hex};
use snf::data::idx::{parse_idx, read_idx};
use snf::data::mnist::{LoadOptions, Mnist, PIXELS};
use snf::{DataError, Error};

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

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
    assert!(length(parse_idx(&idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]), "t")), "absurd dimensions");
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
