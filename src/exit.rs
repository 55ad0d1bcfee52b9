//! Process entry: parse flags, set up logging and threads, run a command and
//! map its outcome to the documented exit codes.
//!
//! 0 success, 1 a check ran and failed (fit, verify), 2 usage or input error,
//! 130 stopped by Ctrl-C (after a checkpoint).

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, GlobalArgs};
use crate::printer::Printer;

/// What a command reports when it did not fail with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything ran and every check passed.
    Success,
    /// A check ran and failed (a model does not fit, verification failed).
    CheckFailed,
    /// Stopped by Ctrl-C after saving what can be resumed.
    Interrupted,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Success => ExitCode::SUCCESS,
            ExitStatus::CheckFailed => ExitCode::from(1),
            ExitStatus::Interrupted => ExitCode::from(130),
        }
    }
}

/// Exit code for usage and input errors.
pub const EXIT_ERROR: u8 = 2;

/// Runs the command line and returns the process exit code.
pub fn run() -> ExitCode {
    ignore_file_size_signal();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_ERROR } else { 0 };
            let _ = err.print();
            // Flags did not parse, so `--json` is looked for by hand: a
            // script asking for JSON gets JSON even for a usage error.
            if code != 0 && std::env::args().any(|a| a == "--json") {
                json_error("usage", &err.kind().to_string(), code);
            }
            return ExitCode::from(code);
        }
    };
    init_tracing(&cli.global);
    let json = cli.global.json;
    if let Err(err) = init_threads(cli.global.threads) {
        return report_error(&err, json);
    }
    let printer = Printer::from_args(&cli.global);
    match crate::commands::dispatch(cli.command, &cli.global, &printer) {
        Ok(status) => status.into(),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => report_error(&err, json),
    }
}

/// What kind of input an error is about, for scripts reading `--json`.
fn error_kind(err: &anyhow::Error) -> &'static str {
    for cause in err.chain() {
        if cause.is::<crate::guard::GuardError>() {
            return "input";
        }
        if cause.is::<crate::model::ModelError>() {
            return "model";
        }
        if cause.is::<crate::target::TargetError>() {
            return "target";
        }
        if cause.is::<crate::artifact::ArtifactError>() {
            return "artifact";
        }
        if cause.is::<crate::engine::EngineError>() {
            return "engine";
        }
        if cause.is::<crate::fed::FedError>() {
            return "fed";
        }
        if cause.is::<std::io::Error>() {
            return "io";
        }
    }
    "usage"
}

/// `{"error": {"kind", "message", "hint"?}, "exit_code"}` on stdout.
fn json_error(kind: &str, message: &str, code: u8) {
    use std::io::Write;
    let (message, hint) = match message.split_once(" (hint: ") {
        Some((m, h)) => (m.to_string(), Some(h.trim_end_matches(')').to_string())),
        None => (message.to_string(), None),
    };
    let mut error = serde_json::json!({ "kind": kind, "message": message });
    if let Some(h) = hint {
        error["hint"] = h.into();
    }
    let body = serde_json::json!({ "error": error, "exit_code": code });
    let _ = writeln!(std::io::stdout().lock(), "{body}");
}

/// Prints an error and its causes on one line, as `error: outer: cause: root`.
fn report_error(err: &anyhow::Error, json: bool) -> ExitCode {
    // Bounded: a cause may echo untrusted text (a misparsed key, a file's bytes).
    let line = crate::guard::bounded(&format!("{err:#}"), MAX_ERROR_CHARS);
    crate::printer::error_line(&line);
    if json {
        json_error(error_kind(err), &line, EXIT_ERROR);
    }
    ExitCode::from(EXIT_ERROR)
}

/// The longest error line we print.
const MAX_ERROR_CHARS: usize = 2000;

/// Write errors are reported, not fatal signals: under `ulimit -f` a write
/// past the limit raises SIGXFSZ, which kills the process with no message
/// and leaves its temp file. Ignored, the write fails with EFBIG instead and
/// the normal error path cleans up (as coreutils and rsync do).
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: installing SIG_IGN for one signal at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_tracing(global: &GlobalArgs) {
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("edgeforge={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "`--threads` must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("Cannot start {n} worker threads: {e}"))?;
    }
    Ok(())
}
