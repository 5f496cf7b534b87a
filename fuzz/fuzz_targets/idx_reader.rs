//! The IDX reader on arbitrary bytes, raw or gzip (whole-file inflation and the
//! header-first reader that refuses oversized payloads before inflating them): a parsed
//! array or a typed error, never a panic, and a parsed array's payload always matches its
//! dimensions; both readers agree whenever both succeed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snf::data::idx::{decode_idx_checked, decode_maybe_gz, parse_idx};

/// The element count the dimensions declare, without overflow (a zero dimension after
/// huge ones is a valid, empty array).
fn count(dims: &[usize]) -> u128 {
    if dims.contains(&0) {
        return 0;
    }
    dims.iter().try_fold(1u128, |acc, &d| acc.checked_mul(d as u128)).unwrap_or(u128::MAX)
}

fuzz_target!(|data: &[u8]| {
    let mut whole = None;
    for bytes in [Some(data.to_vec()), decode_maybe_gz(data.to_vec(), "fuzz").ok()].into_iter().flatten() {
        if let Ok(a) = parse_idx(&bytes, "fuzz") {
            assert_eq!(count(&a.dims), a.data.len() as u128, "payload length matches the dimensions");
            whole = Some(a);
        }
    }
    if let Ok(a) = decode_idx_checked(data, "fuzz") {
        assert_eq!(count(&a.dims), a.data.len() as u128, "payload length matches the dimensions");
        assert_eq!(Some(&a), whole.as_ref(), "the header-first reader agrees with the whole-file one");
    }
});
