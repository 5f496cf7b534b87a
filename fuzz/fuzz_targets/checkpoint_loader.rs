//! The checkpoint loader on arbitrary bytes, and on arbitrary bytes re-sealed with a
//! matching SHA-256 so that mutated configurations and tensors reach the parser and the
//! layer builders: a checkpoint or a typed error, never a panic. A loaded checkpoint's
//! flow must evaluate without panicking, and must survive a save/load round trip.
#![no_main]

use faer::{Mat, Par};
use libfuzzer_sys::fuzz_target;
use snf::checkpoint::{fuzzing::reseal, stored_dtype, Checkpoint};
use snf::flow::Inverse;

fn exercise(bytes: &[u8]) {
    let _ = stored_dtype(bytes, "fuzz");
    let _ = Checkpoint::<f64>::from_bytes(bytes, "fuzz");
    if let Ok(c) = Checkpoint::<f32>::from_bytes(bytes, "fuzz") {
        let d = c.flow.dim();
        if d <= 4096 {
            if let Ok(mut ws) = c.flow.workspace(2, Par::Seq) {
                let x = Mat::from_fn(d, 2, |i, j| ((i + 3 * j) % 255) as f32 + 0.5);
                let mut lp = [0.0; 2];
                let _ = c.flow.log_prob_given(x.as_ref(), c.static_log_det, &mut ws, &mut lp);
                let mut y = Mat::zeros(d, 2);
                let _ = c.flow.inverse(x.as_ref(), y.as_mut(), &mut ws, Inverse::Learned);
            }
        }
        let again = c.to_bytes().expect("a loaded checkpoint serialises");
        Checkpoint::<f32>::from_bytes(&again, "round trip").expect("and loads again");
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if let Some(sealed) = reseal(data) {
        exercise(&sealed);
    }
});
