//! Small data files written by the tests themselves: IDX sets and CIFAR-10 batches.

use std::io::Write;
use std::path::Path;

/// An IDX file of unsigned bytes with dimensions `dims`.
pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Write an IDX folder of `n_train` / `n_test` images of `dims` (after the count) into
/// `dir`; image `i`'s pixel `p` is `(i * 31 + p * 7) % 256`. Labels when `labels`.
pub fn write_idx_set(dir: &Path, dims: &[u32], n_train: u32, n_test: u32, labels: bool, gz: bool) {
    let per: u32 = dims.iter().product();
    for (name, n) in [("train", n_train), ("t10k", n_test)] {
        let data: Vec<u8> = (0..n * per).map(|k| (((k / per) * 31 + (k % per) * 7) % 256) as u8).collect();
        let mut all = vec![n];
        all.extend_from_slice(dims);
        let img = idx_bytes(&all, &data);
        let file = format!("{name}-images-idx3-ubyte");
        if gz {
            std::fs::write(dir.join(format!("{file}.gz")), gzip(&img)).unwrap();
        } else {
            std::fs::write(dir.join(file), img).unwrap();
        }
        if labels {
            let l: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            std::fs::write(dir.join(format!("{name}-labels-idx1-ubyte")), idx_bytes(&[n], &l)).unwrap();
        }
    }
}

/// CIFAR-10 batch files in `dir`: five training files of `per_file` records and a test
/// file of `test` records; record `i` has label `i % 10` and pixel `p` = `(i * 13 + p) % 251`.
pub fn write_cifar(dir: &Path, per_file: usize, test: usize) {
    use snf::data::cifar10::{RECORD, TEST_FILE, TRAIN_FILES};
    let record = |i: usize| -> Vec<u8> {
        let mut r = vec![(i % 10) as u8];
        r.extend((0..RECORD - 1).map(|p| ((i * 13 + p) % 251) as u8));
        r
    };
    for (k, f) in TRAIN_FILES.iter().enumerate() {
        let bytes: Vec<u8> = (0..per_file).flat_map(|i| record(k * per_file + i)).collect();
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    std::fs::write(dir.join(TEST_FILE), (100..100 + test).flat_map(record).collect::<Vec<u8>>()).unwrap();
}
