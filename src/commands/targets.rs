use crate::cli::{GlobalArgs, TargetsCommand};
use crate::exit::ExitStatus;
use crate::printer::Printer;

/// `edgeforge targets ...`
pub fn targets(
    _cmd: &TargetsCommand,
    _global: &GlobalArgs,
    _printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("targets: work in progress")
}
