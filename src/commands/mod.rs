//! One file per subcommand. Commands resolve settings, call the library and
//! render human or JSON output; they never parse bytes or do math.

mod build;
mod distill;
mod eval;
mod fed;
mod imatrix;
mod inspect;
mod package;
mod profile;
mod profile_graph;
mod publish;
mod quantize;
mod quantize_auto;
mod quantize_genai;
mod quantize_onnx;
mod run;
mod shell;
mod targets;
mod tflite;

pub use build::{build, index_merge, select};
pub use distill::distill;
pub use eval::eval;
pub use fed::fed;
pub use imatrix::imatrix;
pub use inspect::inspect;
pub use package::{package, verify};
pub use profile::profile;
pub use publish::{publish, pull};
pub use quantize::quantize;
pub use run::run;
pub use targets::targets;

use crate::cli::Command;
use crate::exit::ExitStatus;
use crate::printer::Printer;

/// Runs one parsed subcommand.
pub fn dispatch(
    command: Command,
    global: &crate::cli::GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    match command {
        Command::Targets(cmd) => targets(&cmd, global, printer),
        Command::Inspect(args) => inspect(&args, printer),
        Command::Quantize(args) => quantize(&args, global, printer),
        Command::Run(cmd) => run(&cmd, printer),
        Command::Profile(args) => profile(&args, global, printer),
        Command::Distill(args) => distill(&args, printer),
        Command::Package(args) => package(&args, global, printer),
        Command::Verify(args) => verify(&args, global, printer),
        Command::Eval(args) => eval(&args, printer),
        Command::Imatrix(args) => imatrix(&args, printer),
        Command::Build(args) => build(&args, global, printer),
        Command::Select(args) => select(&args, printer),
        Command::Publish(args) => publish(&args, global, printer),
        Command::Pull(args) => pull(&args, printer),
        Command::Index(crate::cli::IndexCommand::Merge(args)) => index_merge(&args, printer),
        Command::Fed(cmd) => fed(&cmd, global, printer),
        Command::Completions(args) => shell::completions(&args),
        Command::Man => shell::man(),
    }
}
