use std::fmt::Write;

use anyhow::Context;

use crate::cli::InspectArgs;
use crate::exit::ExitStatus;
use crate::model::summary::ModelSummary;
use crate::model::Model;
use crate::printer::{sanitize, Printer};
use crate::units::{group_digits, human_bytes};

/// `edgeforge inspect PATH`: architecture, parameters, dtypes, metadata, tensors.
pub fn inspect(args: &InspectArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let model = Model::open(&args.path).context("Cannot inspect")?;
    let summary = ModelSummary::of(&model, args.tensors);
    if printer.json {
        printer.json_out(&summary)?;
    } else {
        printer.out(&render(&summary))?;
    }
    Ok(ExitStatus::Success)
}

fn render(s: &ModelSummary) -> String {
    let mut out = String::new();
    let files: u64 = s.files.iter().map(|f| f.size_bytes).sum();
    let _ = writeln!(
        out,
        "{}  ({}, {} file{}, {})",
        s.path.display(),
        match s.format {
            crate::model::ModelFormat::Gguf => "gguf",
            crate::model::ModelFormat::Safetensors => "safetensors",
        },
        s.files.len(),
        if s.files.len() == 1 { "" } else { "s" },
        human_bytes(files)
    );
    let _ = writeln!(out, "architecture  {}", sanitize(&s.architecture.summary()));
    let _ = write!(
        out,
        "parameters    {}  ({:.2} bits/weight)",
        group_digits(s.parameters),
        s.bits_per_weight
    );
    if !s.buffers.is_empty() {
        let names: Vec<String> = s
            .buffers
            .iter()
            .map(|b| {
                format!(
                    "{} {} {}",
                    sanitize(&b.name),
                    b.dtype.name(),
                    group_digits(b.n_elems)
                )
            })
            .collect();
        let _ = write!(out, "; buffers apart: {}", names.join(", "));
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "\n{:<10} {:>8} {:>14} {:>12}",
        "dtype", "tensors", "elements", "bytes"
    );
    for (dtype, c) in &s.by_dtype {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>14} {:>12}",
            dtype,
            c.tensors,
            group_digits(c.elements),
            human_bytes(c.bytes)
        );
    }
    let _ = writeln!(
        out,
        "\n{:<10} {:>8} {:>14} {:>12}",
        "role", "tensors", "elements", "bytes"
    );
    for (role, c) in &s.by_role {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>14} {:>12}",
            role.name(),
            c.tensors,
            group_digits(c.elements),
            human_bytes(c.bytes)
        );
    }
    if !s.metadata.is_empty() {
        out.push_str("\nmetadata\n");
        for (k, v) in &s.metadata {
            let _ = writeln!(out, "  {} = {}", sanitize(k), sanitize(v));
        }
    }
    if let Some(tensors) = &s.tensors {
        let _ = writeln!(
            out,
            "\n{:<48} {:>6} {:>18} {:>12} {:<9}",
            "tensor", "dtype", "shape", "bytes", "role"
        );
        for t in tensors {
            let shape = format!("{:?}", t.shape);
            let _ = writeln!(
                out,
                "{:<48} {:>6} {:>18} {:>12} {:<9}",
                sanitize(&t.name),
                t.dtype.name(),
                shape,
                group_digits(t.n_bytes),
                t.role.name()
            );
        }
    }
    out
}
