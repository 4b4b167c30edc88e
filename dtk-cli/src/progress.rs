//! Progress of long transfers on a terminal: one bar per download or upload, drawn on
//! stderr only when it is a terminal (never in pipes, logs or `--json` consumers).

use std::io::IsTerminal;
use std::sync::Arc;

use dtk::{NoProgress, Progress, Transfer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars on stderr.
#[derive(Debug)]
struct Bars {
    multi: MultiProgress,
}

struct Bar(ProgressBar);

impl Transfer for Bar {
    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn Transfer> {
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{msg:30!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta:>4}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg:30!} {spinner} {bytes:>10} {bytes_per_sec:>12}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        let bar = self.multi.add(bar);
        bar.set_message(what.to_owned());
        Box::new(Bar(bar))
    }
}

/// Bars on stderr when it is a terminal; nothing otherwise.
pub(crate) fn for_terminal() -> Arc<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(NoProgress);
    }
    Arc::new(Bars {
        multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
    })
}
