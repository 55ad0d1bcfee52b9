use crate::cli::InspectArgs;
use crate::exit::ExitStatus;
use crate::printer::Printer;

/// `edgeforge inspect PATH`
pub fn inspect(_args: &InspectArgs, _printer: &Printer) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("inspect: work in progress")
}
