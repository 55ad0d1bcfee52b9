use crate::cli::{GlobalArgs, QuantizeArgs};
use crate::exit::ExitStatus;
use crate::printer::Printer;

/// `edgeforge quantize MODEL --out FILE`
pub fn quantize(
    _args: &QuantizeArgs,
    _global: &GlobalArgs,
    _printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("quantize: work in progress")
}
