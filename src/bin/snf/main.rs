//! `snf`: train, evaluate, sample from and plot self-normalizing flows on MNIST, and time
//! the self-normalizing step against the exact one (Fig. 4). Run `snf --help`.

mod bench;
mod error;
mod eval;
mod grid;
mod plot;
mod run;
mod sample;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Self-normalizing flows (Keller et al., ICML 2021): train on MNIST without ever
/// differentiating a determinant, evaluate exact likelihoods, sample, plot, benchmark.
#[derive(Parser)]
#[command(name = "snf", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; writes metrics (CSV, JSON lines), checkpoints, plots and samples
    /// into the run folder.
    Train(Box<train::Args>),
    /// Exact NLL (nats and bits/dim) of a checkpoint on the test or validation split.
    Eval(eval::Args),
    /// A PNG grid of samples through the learned and/or the exact inverse (Fig. 2).
    Sample(sample::Args),
    /// PNG plots of validation NLL vs epoch and vs time (Fig. 5) and of the gradient
    /// angles (Fig. 3) for one or more runs.
    Plot(plot::Args),
    /// Time one training step of a linear flow layer, self-normalizing vs exact, over a
    /// range of dimensions (Fig. 4).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    // A closed output pipe (`snf eval RUN | head -1`) ends the process quietly, as it does
    // for other command-line tools, instead of a panic in `println!`: restore the default
    // SIGPIPE action that the Rust runtime replaces with "ignore".
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The library does not panic on user input; should anything else, report it in one
    // line like every other error rather than with a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal error: {msg}");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return ExitCode::SUCCESS;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::from(2);
                }
                _ => {}
            }
            // one line: clap's own first line ("error: ...") and where to look; a first
            // line ending in ':' continues on the next (the missing arguments' names)
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("error: invalid arguments").to_string();
            if first.ends_with(':') {
                if let Some(next) = lines.next() {
                    first = format!("{first} {next}");
                }
            }
            eprintln!("{first} (see snf --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
