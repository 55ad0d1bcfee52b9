//! All user-facing output goes through [`Printer`]: data (tables, JSON) on
//! stdout, messages and progress on stderr, so `--json | jq` always works.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::GlobalArgs;

/// Where and how much to print.
#[derive(Debug, Clone)]
pub struct Printer {
    /// Emit machine-readable JSON on stdout instead of human text.
    pub json: bool,
    /// Suppress informational messages on stderr.
    pub quiet: bool,
    /// Draw progress bars (stderr is a terminal, not quiet, not verbose).
    pub progress: bool,
}

impl Printer {
    /// Builds a printer from the global flags and the environment.
    pub fn from_args(global: &GlobalArgs) -> Self {
        let progress = !global.quiet
            && global.verbose == 0
            && std::env::var_os("EDGEFORGE_NO_PROGRESS").is_none()
            && std::io::stderr().is_terminal();
        Self {
            json: global.json,
            quiet: global.quiet,
            progress,
        }
    }

    /// A printer for library callers and tests: human output, no progress.
    pub fn plain() -> Self {
        Self {
            json: false,
            quiet: false,
            progress: false,
        }
    }

    /// Writes human-readable data to stdout.
    pub fn out(&self, text: &str) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            stdout.write_all(b"\n")?;
        }
        stdout.flush()
    }

    /// Writes a JSON document to stdout, pretty-printed, one trailing newline.
    pub fn json_out<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }

    /// Writes an informational message to stderr unless quiet.
    pub fn info(&self, text: &str) {
        if !self.quiet {
            stderr_line(text);
        }
    }

    /// Writes a warning to stderr (even when quiet: warnings change decisions).
    pub fn warn(&self, text: &str) {
        stderr_line(&format!("warning: {text}"));
    }

    /// A byte-counting progress bar, hidden when progress is off.
    pub fn bytes_bar(&self, total_bytes: u64, message: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static progress template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar
    }

    /// A step-counting progress bar, hidden when progress is off.
    pub fn steps_bar(&self, total: u64, message: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} eta {eta}")
                .expect("static progress template is valid")
                .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar
    }
}

/// Escapes control and bidi characters so that untrusted names from model
/// files cannot rewrite the terminal.
/// One line on stderr. A closed stderr (a pipe whose reader went away) is
/// not worth dying for: `eprintln!` would panic and exit 101.
pub fn stderr_line(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// An error line on stderr, as `error: ...`.
pub fn error_line(text: &str) {
    stderr_line(&format!("error: {text}"));
}

pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}');
        if (c.is_control() && c != '\t') || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn escapes_control_and_bidi_characters() {
        assert_eq!(sanitize("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(sanitize("x\u{202E}y"), "x\\u{202e}y");
        assert_eq!(sanitize("blk.0.attn_q"), "blk.0.attn_q");
    }
}
