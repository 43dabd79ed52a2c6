//! The project's one progress-bar factory, so that every long job looks the same.
//!
//! ```
//! let bar = fer_data::progress::bar(true, 100, "preparing", fer_data::progress::Unit::Items("images"));
//! bar.inc(10);
//! bar.finish_and_clear();
//! ```

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a bar counts.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    /// Things, named in the plural (`images`, `batches`).
    Items(&'static str),
    /// Bytes, shown with binary prefixes and a rate.
    Bytes,
}

/// A bar of `total` steps labelled `label`, drawn on stderr only when it is a terminal (a log or
/// CI gets nothing from it; callers that matter there print plain lines), hidden when not
/// `enabled`. The message slot (`set_message`) follows the counts.
pub fn bar(enabled: bool, total: u64, label: impl Into<String>, unit: Unit) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let counts = match unit {
        Unit::Items(name) => format!("{{pos}}/{{len}} {name} ({{per_sec}})"),
        Unit::Bytes => "{bytes}/{total_bytes} ({bytes_per_sec})".to_string(),
    };
    let template = format!("{{prefix}} [{{bar:30}}] {counts} {{msg}} [{{elapsed}}, ETA {{eta}}]");
    let style = ProgressStyle::with_template(&template)
        .expect("the template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.into());
    bar
}
