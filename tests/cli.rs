//! The `snf` binary end to end on a tiny MNIST subset: train -> checkpoint -> eval ->
//! sample -> plot; kill-and-resume (an abort injected just before a checkpoint replaces
//! its predecessor, and a real SIGKILL at an arbitrary point) gives bit-identical
//! parameters to an uninterrupted run; bad arguments and corrupt files give one error line
//! and a non-zero exit, never a panic.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use snf::checkpoint::Checkpoint;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_snf");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snf-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn snf(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("SNF_FAULT").output().expect("the snf binary runs")
}

fn ok(args: &[&str]) -> String {
    let o = snf(args);
    assert!(o.status.success(), "snf {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A failing command: non-zero exit, and stderr is one line starting with "error:" (or
/// clap's usage error), with no panic message or backtrace.
fn fails(args: &[&str]) -> String {
    let o = snf(args);
    assert!(!o.status.success(), "snf {args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE") && !err.contains("internal error"), "{err}");
    assert!(err.starts_with("error:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
    err
}

fn tiny(out: &Path, epochs: &str) -> Vec<String> {
    ["train", "--train-subset", "300", "--valid-subset", "200", "--epochs", epochs, "--quiet", "--samples", "0", "--out"]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
}

fn run_tiny(out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut args = tiny(out, epochs);
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(BIN).args(&args).env_remove("SNF_FAULT").output().unwrap()
}

fn load(p: &Path) -> Checkpoint<f32> {
    Checkpoint::<f32>::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn params_bits(c: &Checkpoint<f32>) -> Vec<u32> {
    c.flow
        .layers()
        .iter()
        .flat_map(|l| l.params())
        .flat_map(|p| {
            let m = p.value;
            (0..m.ncols()).flat_map(move |j| (0..m.nrows()).map(move |i| m[(i, j)].to_bits()))
        })
        .collect()
}

#[test]
fn train_checkpoint_eval_sample_plot() {
    let run = tmp("e2e");
    let r = run.display().to_string();
    let o = ok(&["train", "--train-subset", "300", "--valid-subset", "200", "--epochs", "2", "--samples", "9", "--out", &r]);
    assert!(o.contains("best epoch") && o.contains("metrics:") && o.contains("samples:"), "{o}");
    for f in ["run.json", "metrics.csv", "metrics.jsonl", "checkpoints/last.safetensors", "checkpoints/best.safetensors", "samples.png"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // metrics parse: a header and two rows in the CSV, two JSON records
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3);
    assert!(rows[0].starts_with("epoch,val_nll,"));
    let records: Vec<snf::train::EpochRecord> =
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2]);
    assert!(records[1].val_nll < records[0].val_nll, "training lowers the validation NLL");
    for (row, rec) in rows[1..].iter().zip(&records) {
        let v: f64 = row.split(',').nth(1).unwrap().parse().unwrap();
        assert_eq!(v, rec.val_nll);
    }

    // eval on the validation subset reproduces the NLL logged for the best checkpoint:
    // same flow, same dequantisation noise, same batches; the only difference is the
    // cached log-det, computed by the same LU, so they agree to rounding
    let best = records.iter().min_by(|a, b| a.val_nll.total_cmp(&b.val_nll)).unwrap();
    let e: serde_json::Value = serde_json::from_str(&ok(&["eval", &r, "--split", "valid", "--json"])).unwrap();
    assert_eq!(e["epoch"].as_u64(), Some(best.epoch as u64));
    assert_eq!(e["examples"].as_u64(), Some(200));
    let nll = e["nll_nats"].as_f64().unwrap();
    assert!((nll - best.val_nll).abs() <= 1e-9 * best.val_nll.abs(), "eval {nll} vs logged {}", best.val_nll);
    // recomputing the log-dets by LU gives the cached value
    let e2: serde_json::Value = serde_json::from_str(&ok(&["eval", &r, "--split", "valid", "--json", "--recompute-log-det"])).unwrap();
    assert!((e2["static_log_det"].as_f64().unwrap() - e2["cached_static_log_det"].as_f64().unwrap()).abs() < 1e-6);
    // the test split by default, text output
    let t = ok(&["eval", &r, "--subset", "300"]);
    assert!(t.starts_with("test NLL:"), "{t}");

    // samples: both inverses side by side
    let grid = run.join("grid.png");
    ok(&["sample", &run.join("checkpoints/best.safetensors").display().to_string(), "-n", "16", "--inverse", "both", "--out", &grid.display().to_string()]);
    let (w, h) = png_size(&grid);
    assert!(w > 2 * h - 40 && h >= 4 * 28 * 2, "{w}x{h}: two 4x4 grids side by side, scaled x2");

    // plots for two runs
    let plots = tmp("plots");
    let p = ok(&["plot", &r, &r, "--out", &plots.display().to_string()]);
    for f in ["nll_vs_epoch.png", "nll_vs_time.png", "angles.png"] {
        assert!(p.contains(f));
        let (w, h) = png_size(&plots.join(f));
        assert_eq!((w, h), (960, 600));
    }
    let _ = std::fs::remove_dir_all(&run);
    let _ = std::fs::remove_dir_all(&plots);
}

fn png_size(p: &Path) -> (u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height)
}

#[test]
fn kill_and_resume_is_bit_identical_to_an_uninterrupted_run() {
    let straight = tmp("straight");
    let o = run_tiny(&straight, "3", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // 1. an abort while the epoch-2 checkpoint is complete in its temporary file but has
    //    not replaced the epoch-1 one: the process dies, the epoch-1 checkpoint is intact
    let crashed = tmp("crashed");
    let mut args = tiny(&crashed, "3");
    args.push("--threads".into());
    args.push("2".into());
    let o = Command::new(BIN).args(&args).env("SNF_FAULT", "abort-before-rename:2").output().unwrap();
    assert!(!o.status.success(), "the injected abort kills the run");
    let prev = load(&crashed.join("checkpoints/last.safetensors"));
    assert_eq!(prev.training.as_ref().unwrap().1.history.len(), 1, "the previous (epoch 1) checkpoint is what is there");
    let leftovers =
        std::fs::read_dir(crashed.join("checkpoints")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp.")).count();
    assert_eq!(leftovers, 1, "the complete new file never replaced the old one");
    let o = Command::new(BIN).args(["train", "--resume", "--quiet", "--samples", "0", "--out", &crashed.display().to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (a, b) = (load(&straight.join("checkpoints/last.safetensors")), load(&crashed.join("checkpoints/last.safetensors")));
    assert_eq!(params_bits(&a), params_bits(&b), "parameters differ after resuming");
    let (sa, sb) = (&a.training.as_ref().unwrap().1, &b.training.as_ref().unwrap().1);
    assert_eq!(sa.adam, sb.adam);
    assert_eq!(sa.step, sb.step);
    assert_eq!(sa.history.iter().map(|r| r.val_nll.to_bits()).collect::<Vec<_>>(), sb.history.iter().map(|r| r.val_nll.to_bits()).collect::<Vec<_>>());
    assert_eq!(params_bits(&load(&straight.join("checkpoints/best.safetensors"))), params_bits(&load(&crashed.join("checkpoints/best.safetensors"))));
    // the metrics files were rewritten from the checkpoint: three epochs, no duplicates
    assert_eq!(std::fs::read_to_string(crashed.join("metrics.jsonl")).unwrap().lines().count(), 3);

    let leftovers =
        std::fs::read_dir(crashed.join("checkpoints")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp.")).count();
    assert_eq!(leftovers, 0, "the interrupted write's temporary file is cleaned up by the next run");

    // 2. kill -9 anywhere: SIGKILLs at pseudo-random moments of a short run (training,
    //    evaluating, writing a checkpoint: wherever the process is), each followed by a
    //    resume (or a fresh start, if no checkpoint exists yet), then a resume to the end:
    //    the final checkpoint is bit-identical to the uninterrupted run's
    #[cfg(unix)]
    {
        let killed = tmp("killed");
        let last = killed.join("checkpoints/last.safetensors");
        let mut seed = 0x9E37_79B9_u64 ^ std::process::id() as u64;
        let mut kills = 0;
        for _ in 0..5 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let delay = std::time::Duration::from_millis(100 + (seed >> 33) % 1400);
            let mut cmd = Command::new(BIN);
            if last.exists() {
                cmd.args(["train", "--resume", "--quiet", "--samples", "0", "--out", &killed.display().to_string()]);
            } else {
                cmd.args(tiny(&killed, "3"));
            }
            let mut child = cmd.env_remove("SNF_FAULT").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                kills += 1;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(kills > 0, "no process was killed: the run is faster than the delays");
        let mut args: Vec<String> = ["train", "--resume", "--quiet", "--samples", "0", "--out"].map(String::from).to_vec();
        args.push(killed.display().to_string());
        if !last.exists() {
            args = tiny(&killed, "3");
        }
        let o = Command::new(BIN).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(params_bits(&a), params_bits(&load(&last)), "parameters differ after {kills} kills and resumes");
        let _ = std::fs::remove_dir_all(&killed);
    }
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&crashed);
}

#[test]
fn bad_arguments_and_files_give_one_error_line() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    // unknown subcommand / flag / value: clap's usage errors
    fails(&["frobnicate"]);
    fails(&["train", "--no-such-flag"]);
    fails(&["train", "--model", "mlp"]);
    fails(&["train", "--epochs", "many"]);
    // values that parse but make no sense
    let e = fails(&["train", "--lr=-1", "--out", &d]);
    assert!(e.contains("--lr"), "{e}");
    fails(&["train", "--inverse-fit", "penalty", "--lambda", "nan", "--out", &d]);
    fails(&["train", "--epochs", "0", "--out", &d]);
    fails(&["train", "--geco-rate", "1e-3", "--out", &d]); // needs --geco-target
    let e = fails(&["train", "--inverse-fit", "penalty", "--geco-target", "4", "--geco-rate=-1", "--out", &d]);
    assert!(e.contains("--geco-rate"), "{e}");
    // the FC model's default projection fit has no λ to set (the conv model's has: the pull
    // on w); the conv baselines and Glow's exact mixings have no inverse to fit
    let e = fails(&["train", "--lambda", "0.5", "--out", &d]);
    assert!(e.contains("--inverse-fit penalty"), "{e}");
    let e = fails(&["train", "--model", "conv", "--mixing", "emerging", "--inverse-fit", "projection", "--out", &d]);
    assert!(e.contains("--inverse-fit"), "{e}");
    let e = fails(&["train", "--model", "glow", "--mixing", "exact1x1", "--inverse-fit", "projection", "--out", &d]);
    assert!(e.contains("--inverse-fit"), "{e}");
    // the inverse-kernel size: odd, and only for the conv model's self-normalizing layers
    let e = fails(&["train", "--model", "conv", "--inverse-kernel", "4", "--out", &d]);
    assert!(e.contains("--inverse-kernel must be odd"), "{e}");
    let e = fails(&["train", "--inverse-kernel", "5", "--out", &d]);
    assert!(e.contains("--inverse-kernel"), "{e}");
    let e = fails(&["train", "--model", "conv", "--grad", "exact", "--inverse-kernel", "5", "--out", &d]);
    assert!(e.contains("--inverse-kernel"), "{e}");
    fails(&["sample", &d, "-n", "0"]);
    // missing data folder
    let e = fails(&["train", "--data", "/no/such/mnist", "--out", &format!("{d}/r")]);
    assert!(e.contains("/no/such/mnist"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // nothing to resume, no checkpoint
    fails(&["train", "--resume", "--out", &format!("{d}/none")]);
    fails(&["eval", &format!("{d}/missing.safetensors")]);
    fails(&["eval", &d]);
    // corrupt and truncated checkpoints
    let fc = snf::flow::models::fc_two_layer::<f32, _>(snf::data::mnist::SHAPE, snf::flow::models::Gradient::SelfNormalizing, &mut snf::init::rng(0)).unwrap();
    let good = Checkpoint::new(fc).unwrap().to_bytes().unwrap();
    let mut flipped = good.clone();
    let k = flipped.len() - 100;
    flipped[k] ^= 1;
    std::fs::write(dir.join("flipped.safetensors"), &flipped).unwrap();
    std::fs::write(dir.join("short.safetensors"), &good[..good.len() / 3]).unwrap();
    std::fs::write(dir.join("junk.safetensors"), b"hello").unwrap();
    let e = fails(&["eval", &format!("{d}/flipped.safetensors")]);
    assert!(e.contains("corrupt"), "{e}");
    for f in ["short", "junk"] {
        let e = fails(&["sample", &format!("{d}/{f}.safetensors")]);
        assert!(e.contains("not a valid snf checkpoint"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    fails(&["plot", &d]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_prints_a_table() {
    let o = ok(&["bench", "--dims", "32,64", "--batch", "16", "--reps", "1"]);
    let rows: Vec<&str> = o.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(rows.len(), 2, "{o}");
    fails(&["bench", "--dims", "0"]);
}

/// Data other than MNIST: an IDX set of 16x16 images with no checksum list (FC and conv
/// models built for its shape, a relative --data path stored absolute so `snf eval` works
/// from another folder, eval naming its data), CIFAR-10 files (a conv model on 3x32x32 and
/// a colour sample grid), and an exact-gradient run (no angle plot, no learned-inverse
/// claims, no reconstruction column in its messages).
#[test]
fn other_data_sets_and_exact_runs() {
    let root = tmp("data");
    let idx = root.join("idx16");
    std::fs::create_dir_all(&idx).unwrap();
    common::files::write_idx_set(&idx, &[16, 16], 240, 40, true, true);
    let run = root.join("fc-idx");
    // a relative --data: run from `root`
    let o = Command::new(BIN)
        .current_dir(&root)
        .args(["train", "--dataset", "idx", "--data", "idx16", "--epochs", "1", "--batch", "20", "--quiet", "--samples", "4", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let settings = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(settings.contains(&idx.display().to_string()), "absolute data path in run.json: {settings}");
    assert!(run.join("samples.png").is_file() && run.join("angles.png").is_file());
    // from another folder, eval finds the data and says which it used
    let e = Command::new(BIN).current_dir(std::env::temp_dir()).args(["eval"]).arg(&run).output().unwrap();
    let out = String::from_utf8_lossy(&e.stdout);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    assert!(out.contains("over 40 images") && out.contains("idx at") && out.contains("idx16"), "{out}");
    // the conv model on the same shape
    let conv = root.join("conv-idx");
    let d = idx.display().to_string();
    ok(&[
        "train",
        "--model",
        "conv",
        "--dataset",
        "idx",
        "--data",
        &d,
        "--epochs",
        "1",
        "--batch",
        "20",
        "--quiet",
        "--samples",
        "0",
        "--out",
        &conv.display().to_string(),
    ]);
    // without --data, idx is a usage error, not MNIST
    fails(&["train", "--dataset", "idx", "--out", &root.join("x").display().to_string()]);
    // a checksum list that does not match is refused, --no-checksums skips it
    std::fs::write(idx.join("SHA256SUMS"), "00  train-images-idx3-ubyte.gz\n").unwrap();
    let bad = root.join("bad");
    let e = fails(&["train", "--dataset", "idx", "--data", &d, "--epochs", "1", "--batch", "20", "--quiet", "--out", &bad.display().to_string()]);
    assert!(e.contains("SHA-256") || e.contains("SHA256SUMS"), "{e}");
    assert!(!bad.join("run.json").exists(), "a failed start writes nothing");
    ok(&[
        "train",
        "--dataset",
        "idx",
        "--data",
        &d,
        "--no-checksums",
        "--epochs",
        "1",
        "--batch",
        "20",
        "--quiet",
        "--samples",
        "0",
        "--out",
        &bad.display().to_string(),
    ]);

    // CIFAR-10: a small conv model on 3x32x32 and a colour grid
    let cifar = root.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    common::files::write_cifar(&cifar, 12, 10);
    let crun = root.join("conv-cifar");
    let c = cifar.display().to_string();
    // (no angle batches: the exact gradient of nine 3072x3072 convolutions is minutes of LU)
    let args = [
        "train",
        "--model",
        "conv",
        "--dataset",
        "cifar10",
        "--data",
        &c,
        "--valid-size",
        "10",
        "--epochs",
        "1",
        "--batch",
        "10",
        "--quiet",
        "--samples",
        "4",
        "--angle-batches",
        "0",
    ];
    let o = Command::new(BIN).args(args).arg("--out").arg(&crun).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("bits/dim"), "{out}");
    let png = std::fs::read(crun.join("samples.png")).unwrap();
    assert_eq!(png[25], 2, "colour type RGB in the PNG header");

    // an exact-gradient run: no angle plot, no learned-inverse or reconstruction claims
    let exact = root.join("fc-exact");
    let o = Command::new(BIN)
        .args(["train", "--grad", "exact", "--train-subset", "300", "--valid-subset", "200", "--epochs", "1", "--samples", "4", "--out"])
        .arg(&exact)
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(!exact.join("angles.png").exists() && !out.contains("angles.png"), "{out}");
    assert!(!out.contains("learned inverse") && out.contains("exact inverse"), "{out}");
    assert!(!err.contains("recon") && !err.contains("lambda"), "{err}");
    fails(&["sample", &exact.display().to_string(), "--inverse", "learned", "--out", &root.join("s.png").display().to_string()]);
    let _ = std::fs::remove_dir_all(&root);
}

/// The command-line defects of the reliability probe, one check each (all failed on the
/// release before the fix).
#[test]
fn reliability_defects_of_the_cli() {
    let root = tmp("rel");
    std::fs::create_dir_all(&root).unwrap();
    let r = |name: &str| root.join(name).display().to_string();
    // 1. an empty validation or evaluation set is an error, not an NLL of 0
    fails(&["train", "--train-subset", "500", "--valid-subset", "0", "--epochs", "2", "--out", &r("empty")]);
    let a = root.join("a");
    assert!(run_tiny(&a, "1", &[]).status.success());
    fails(&["eval", &a.display().to_string(), "--subset", "0"]);
    // 3. absurd batch sizes: one error line (train, bench), or sized to the data (eval)
    fails(&["train", "--batch", "1000000000", "--out", &r("huge")]);
    fails(&["bench", "--batch", "1000000000"]);
    ok(&["eval", &a.display().to_string(), "--batch", "1000000000", "--subset", "50"]);
    // 2. resume refuses files of another run: a conv checkpoint copied into an FC run
    let b = root.join("b");
    let o = Command::new(BIN).args(tiny(&b, "1")).args(["--model", "conv"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    //    (the conv model's default λ is the projection fit's adaptive pull: a relative-error
    //    target of 3e-4, from λ = 0.02, within [1e-3, 1], one halving of the target at most)
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("run.json")).unwrap()).unwrap();
    let pull = &run["config"]["lambda"]["Adaptive"];
    assert_eq!(
        [&pull["target"], &pull["min_target"], &pull["min"], &pull["max"]].map(|v| v.as_f64()),
        [Some(3e-4), Some(1.5e-4), Some(1e-3), Some(1.0)],
        "{run}"
    );
    //    a 5x5 inverse kernel is a run setting: the checkpoint holds 5x5 kernels r, and
    //    evaluation and resume rebuild the model with them (a 3x3 rebuild fails to load)
    let b5 = root.join("b5");
    let o = run_tiny(&b5, "1", &["--model", "conv", "--inverse-kernel", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(b5.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["inverse_kernel"], 5, "{run}");
    let convs = load(&b5.join("checkpoints/last.safetensors")).flow;
    let k = convs.self_normalizing().next().unwrap();
    let conv = convs.layer::<snf::layers::conv::SelfNormConv2d<f32>>(k).unwrap();
    assert_eq!(conv.inverse_geometry().kernel_size(), [5, 5]);
    ok(&["eval", &b5.display().to_string(), "--subset", "50"]);
    ok(&["train", "--resume", "--epochs", "2", "--quiet", "--samples", "0", "--out", &b5.display().to_string()]);
    let mixed = root.join("mixed");
    assert!(run_tiny(&mixed, "1", &[]).status.success());
    std::fs::copy(b.join("checkpoints/last.safetensors"), mixed.join("checkpoints/last.safetensors")).unwrap();
    let e = fails(&["train", "--resume", "--epochs", "2", "--out", &mixed.display().to_string()]);
    assert!(e.contains("another run"), "{e}");
    //    ...and a best checkpoint of another run
    let mixed2 = root.join("mixed2");
    assert!(run_tiny(&mixed2, "1", &[]).status.success());
    std::fs::copy(a.join("checkpoints/best.safetensors"), mixed2.join("checkpoints/best.safetensors")).unwrap();
    let e = fails(&["train", "--resume", "--epochs", "2", "--out", &mixed2.display().to_string()]);
    assert!(e.contains("another run"), "{e}");
    // 11. a failed --force start touches nothing; --resume --epochs 0 is refused
    let settings = std::fs::read(a.join("run.json")).unwrap();
    let last = std::fs::read(a.join("checkpoints/last.safetensors")).unwrap();
    fails(&["train", "--force", "--model", "conv", "--data", "/no/such", "--out", &a.display().to_string()]);
    assert_eq!(std::fs::read(a.join("run.json")).unwrap(), settings);
    assert_eq!(std::fs::read(a.join("checkpoints/last.safetensors")).unwrap(), last);
    fails(&["train", "--resume", "--epochs", "0", "--out", &a.display().to_string()]);
    assert_eq!(std::fs::read(a.join("run.json")).unwrap(), settings);
    //    a successful --force replaces every file of the old run (one run id throughout)
    let o = Command::new(BIN).args(tiny(&a, "1")).args(["--force", "--seed", "3"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = |p: &Path| load(p).meta["settings"]["run_id"].as_str().unwrap().to_string();
    let run_json: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("run.json")).unwrap()).unwrap();
    assert_eq!(id(&a.join("checkpoints/last.safetensors")), id(&a.join("checkpoints/best.safetensors")));
    assert_eq!(run_json["run_id"].as_str().unwrap(), id(&a.join("checkpoints/last.safetensors")));
    // 9. a second process on the same run folder fails instead of overwriting the first
    let busy = root.join("busy");
    let mut first = Command::new(BIN).args(tiny(&busy, "50")).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !busy.join(".lock").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let e = fails(&["train", "--force", "--train-subset", "300", "--valid-subset", "200", "--epochs", "1", "--out", &busy.display().to_string()]);
    assert!(e.contains("in use"), "{e}");
    let _ = first.kill();
    let _ = first.wait();
    // 8. a closed output pipe ends the process quietly: no panic, no abort
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        let mut child = Command::new(BIN)
            .args(["eval", &a.display().to_string(), "--subset", "100"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || out.status.signal() == Some(13), "status {:?}: {err}", out.status);
        assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    }
    // 12. a missing required flag is named in the one-line message
    let e = fails(&["train", "--geco-rate", "0.1", "--out", &r("geco")]);
    assert!(e.contains("--geco-target"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// Table 1's conv baselines from the command line: `--mixing emerging|convexp` trains the
/// conv model with those mixing layers (exact gradients), evaluates and samples through
/// their exact inverses; combinations that mean nothing are one-line usage errors.
#[test]
fn conv_baselines_train_evaluate_and_sample() {
    let root = tmp("baselines");
    for mixing in ["emerging", "convexp"] {
        let out = root.join(mixing);
        let o = Command::new(BIN)
            .args([
                "train",
                "--model",
                "conv",
                "--mixing",
                mixing,
                "--train-subset",
                "200",
                "--valid-subset",
                "100",
                "--epochs",
                "1",
                "--samples",
                "4",
                "--out",
            ])
            .arg(&out)
            .env_remove("SNF_FAULT")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{mixing}: {stderr}");
        assert!(stderr.contains(&format!("{mixing} mixing")), "{mixing}: {stderr}");
        assert!(stdout.contains("exact inverse") && !stdout.contains("learned inverse"), "{mixing}: {stdout}");
        assert!(out.join("samples.png").is_file(), "{mixing}: no samples");
        let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["mixing"], mixing);
        assert_eq!(run["grad"], "exact");
        let kinds: Vec<&str> = load(&out.join("checkpoints/best.safetensors")).flow.layers().iter().map(|l| l.kind()).collect();
        let want = if mixing == "emerging" { "autoregressive-conv" } else { "conv-exp" };
        assert_eq!(kinds.iter().filter(|k| **k == want).count(), if mixing == "emerging" { 18 } else { 9 }, "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "inv-conv1x1").count(), 9, "{kinds:?}");
        let eval = ok(&["eval", &out.display().to_string(), "--split", "valid", "--json"]);
        let v: serde_json::Value = serde_json::from_str(eval.trim()).unwrap();
        assert!(v["nll_nats"].as_f64().is_some_and(|n| n.is_finite() && n > 0.0), "{eval}");
    }
    let d = root.join("bad").display().to_string();
    let e = fails(&["train", "--mixing", "emerging", "--out", &d]);
    assert!(e.contains("--model conv"), "{e}");
    let e = fails(&["train", "--model", "conv", "--mixing", "convexp", "--grad", "snf", "--out", &d]);
    assert!(e.contains("exact"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// `snf train --model glow` with each mixing: run folder and settings, the layer layout
/// (levels x steps of ActNorm, mixing, coupling; a split between levels), evaluation,
/// sampling through both inverses for SNF mixing, resume, and the flags' typed errors.
#[test]
fn glow_trains_evaluates_samples_and_resumes() {
    let root = tmp("glow");
    for (mixing, grad, kind) in
        [("snf1x1", "snf", "snf-conv"), ("exact1x1", "exact", "inv-conv1x1"), ("lu1x1", "exact", "lu-conv1x1"), ("snf5x5", "snf", "snf-conv")]
    {
        let out = root.join(mixing);
        let o = Command::new(BIN)
            .args(["train", "--model", "glow", "--mixing", mixing, "--levels", "2", "--steps", "2", "--width", "8"])
            .args(["--train-subset", "200", "--valid-subset", "100", "--epochs", "1", "--warmup", "0", "--samples", "4", "--out"])
            .arg(&out)
            .env_remove("SNF_FAULT")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{mixing}: {stderr}");
        assert!(stderr.contains(&format!("{mixing} mixing, 2 levels x 2 steps, width 8")), "{mixing}: {stderr}");
        assert_eq!(stdout.contains("learned inverse"), grad == "snf", "{mixing}: {stdout}");
        let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!((run["mixing"].as_str(), run["grad"].as_str()), (Some(mixing), Some(grad)));
        assert_eq!(run["glow"]["steps"], 2);
        // Glow's defaults: the paper's lr 1e-3 (A.3); self-normalizing mixing keeps its
        // inverse by the projection fit with the adaptive pull from 0.02 (λ in [1e-3, 1])
        if grad == "snf" {
            assert_eq!(run["inverse_fit"], "projection", "{run}");
            assert_eq!(run["config"]["lambda"]["Adaptive"]["lambda"], 0.02, "{run}");
            assert_eq!(run["config"]["lambda"]["Adaptive"]["max"], 1.0, "{run}");
        }
        assert_eq!(run["config"]["adam"]["lr"], 1e-3, "{run}");
        let kinds: Vec<&str> = load(&out.join("checkpoints/best.safetensors")).flow.layers().iter().map(|l| l.kind()).collect();
        for (k, n) in [("actnorm", 4), (kind, 4), ("affine-coupling", 4), ("split", 1), ("squeeze", 2)] {
            assert_eq!(kinds.iter().filter(|x| **x == k).count(), n, "{mixing}: {k} in {kinds:?}");
        }
        let eval = ok(&["eval", &out.display().to_string(), "--split", "valid", "--json"]);
        let v: serde_json::Value = serde_json::from_str(eval.trim()).unwrap();
        assert!(v["nll_nats"].as_f64().is_some_and(|n| n.is_finite() && n > 0.0), "{eval}");
        assert!(out.join("samples.png").is_file(), "{mixing}: no samples");
    }
    // CIFAR-10 (generated files in its binary format): a small 3-level Glow, SNF vs exact
    // 1x1, bits/dim and a colour sample grid
    let cifar = root.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    common::files::write_cifar(&cifar, 12, 10);
    for (mixing, fit) in [("snf1x1", "penalty"), ("snf1x1", "projection"), ("exact1x1", "")] {
        let out = root.join(format!("cifar-{mixing}-{fit}"));
        let fit_flag: &[&str] = if fit.is_empty() { &[] } else { &["--inverse-fit", fit] };
        let o = Command::new(BIN)
            .args(["train", "--model", "glow", "--mixing", mixing, "--levels", "3", "--steps", "1", "--width", "8", "--dataset", "cifar10"])
            .args(fit_flag)
            .args(["--data", &cifar.display().to_string(), "--valid-size", "10", "--epochs", "1", "--batch", "10", "--samples", "4", "--quiet", "--out"])
            .arg(&out)
            .env_remove("SNF_FAULT")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "cifar {mixing}: {stderr}");
        assert!(stdout.contains("bits/dim"), "{stdout}");
        let png = std::fs::read(out.join("samples.png")).unwrap();
        assert_eq!(png[25], 2, "colour type RGB in the PNG header");
        // A.3 on CIFAR-10 for the paper's penalised layers: lambda 1000, and the gradient
        // norm clipped at 10 000; the projection fit (and exact mixing) is not clipped
        let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        let penalty = fit == "penalty";
        if penalty {
            assert_eq!(run["config"]["lambda"]["Fixed"], 1000.0, "{run}");
        }
        assert_eq!(run["config"]["clip_norm"].as_f64(), penalty.then_some(10_000.0), "{run}");
    }
    let resumed = ok(&["train", "--resume", "--out", &root.join("snf1x1").display().to_string(), "--epochs", "2", "--samples", "0", "--quiet"]);
    assert!(resumed.contains("test NLL"), "{resumed}");
    let d = root.join("bad").display().to_string();
    for (args, want) in [
        (vec!["--mixing", "snf1x1"], "--model glow"),
        (vec!["--model", "conv", "--levels", "3"], "Glow's"),
        (vec!["--model", "glow", "--mixing", "snf1x1", "--grad", "exact"], "--grad exact"),
        (vec!["--model", "glow", "--mixing", "emerging"], "--model conv"),
        (vec!["--model", "glow", "--levels", "3"], "divisible by 2^3"),
        (vec!["--model", "glow", "--width", "0"], "positive"),
    ] {
        let mut a = vec!["train"];
        a.extend(args);
        a.extend(["--out", &d, "--force"]);
        let e = fails(&a);
        assert!(e.contains(want), "{a:?}: {e}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
