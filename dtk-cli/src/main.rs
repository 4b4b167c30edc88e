//! `dkt`: the Datakit command-line tool. A thin consumer of the `dtk` library.
// Doc comments here are `--help` text (clap), not rustdoc: brackets are literal.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]

mod cli;
mod commands;
mod man;
mod output;
mod progress;
mod remote;
mod serve;
mod sharing;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// Exit codes, as documented in the README.
mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A failure outside the user's control (network, disk, a failed run).
    pub const FAILURE: u8 = 1;
    /// Bad usage or bad input.
    pub const USAGE: u8 = 2;
    /// Interrupted by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let color = cli::ColorWhen::from_args(&raw);
    let matches = cli::Cli::command()
        .color(color.for_clap())
        .get_matches_from(raw);
    let args = match cli::Cli::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    output::init_tracing(args.verbose, args.color);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dkt: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(&e),
    }
}

fn report(e: &anyhow::Error) -> ExitCode {
    // A closed pipe (`dkt source log x | head`) is not an error worth a word.
    // JSON output fails through serde_json, which wraps the I/O error.
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    }) {
        return ExitCode::from(exit::OK);
    }
    let mut msg = format!("dkt: error: {e}");
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(&format!("\n  caused by: {c}"));
        }
    }
    eprintln!("{msg}");
    let user = e
        .chain()
        .find_map(|c| c.downcast_ref::<dtk::Error>())
        .is_some_and(dtk::Error::is_user_error)
        || e.chain()
            .any(|c| c.downcast_ref::<commands::UsageError>().is_some());
    ExitCode::from(if user { exit::USAGE } else { exit::FAILURE })
}
