//! Progress bars on stderr, shown only to people: hidden when stderr is not a terminal, so
//! scripts and pipes see nothing of them.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Inputs smaller than this are verified without a progress bar: it would only flicker.
pub const LARGE_INPUT_BYTES: u64 = 32 << 20;

fn stderr_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A bar over `total` bytes, visible only for large inputs on a terminal.
pub fn bytes_bar(total: u64) -> ProgressBar {
    let target = if total >= LARGE_INPUT_BYTES {
        stderr_target()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A bar over `total` items (`what`: "instances"), visible on a terminal.
pub fn count_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), stderr_target());
    if let Ok(style) =
        ProgressStyle::with_template(&format!("{{msg}} [{{wide_bar}}] {{pos}}/{{len}} {what}"))
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
