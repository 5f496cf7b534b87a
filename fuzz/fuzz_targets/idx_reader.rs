//! The IDX reader on arbitrary bytes, raw or gzip: a parsed array or a typed error,
//! never a panic, and a parsed array's payload always matches its dimensions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snf::data::idx::{decode_maybe_gz, parse_idx};

fuzz_target!(|data: &[u8]| {
    for bytes in [Some(data.to_vec()), decode_maybe_gz(data.to_vec(), "fuzz").ok()].into_iter().flatten() {
        if let Ok(a) = parse_idx(&bytes, "fuzz") {
            let n: usize = a.dims.iter().product();
            assert_eq!(n, a.data.len(), "payload length matches the dimensions");
        }
    }
});
