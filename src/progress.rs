//! Progress bars for long stages, drawn on stderr only when it is a terminal (indicatif hides
//! them otherwise), so logs and tests stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items; `len` 0 gives a spinner for work of unknown size.
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = if len == 0 {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(len)
    };
    let template = if len == 0 {
        "{spinner} {msg} {pos} [{elapsed_precise}]"
    } else {
        "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
