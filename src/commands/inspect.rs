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
    if let Some((file, format)) = crate::artifact::graph::find(&args.path) {
        return inspect_graph(&file, format, printer);
    }
    let model = Model::open(&args.path).context("Cannot inspect")?;
    let summary = ModelSummary::of(&model, args.tensors);
    if printer.json {
        printer.json_out(&summary)?;
    } else {
        printer.out(&render(&summary))?;
    }
    Ok(ExitStatus::Success)
}

/// An ONNX or TFLite file (or an accelerator artifact's folder): what it
/// needs from a runtime and what its weights are.
fn inspect_graph(
    file: &std::path::Path,
    format: crate::artifact::graph::GraphFormat,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let (q, compatibility) =
        crate::artifact::graph::describe(file, format).context("Cannot inspect")?;
    let size = fs_err::metadata(file).context("Cannot inspect")?.len();
    if printer.json {
        printer.json_out(&serde_json::json!({
            "path": file,
            "format": format.name(),
            "size_bytes": size,
            "parameters": q.parameters,
            "weight_bytes": q.weight_bytes,
            "bits_per_weight": q.bits_per_weight,
            "tensor_types": q.tensor_types,
            "requires": compatibility.requires,
        }))?;
        return Ok(ExitStatus::Success);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  ({}, {})",
        file.display(),
        format.name(),
        human_bytes(size)
    );
    let _ = writeln!(
        out,
        "parameters    {}  ({:.2} bits/weight, {} of weights)",
        group_digits(q.parameters),
        q.bits_per_weight,
        human_bytes(q.weight_bytes)
    );
    let types: Vec<String> = q
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    let _ = writeln!(out, "weights       {}", types.join(", "));
    let _ = writeln!(
        out,
        "requires      {}",
        sanitize(&compatibility.requires.join(", "))
    );
    printer.out(&out)?;
    Ok(ExitStatus::Success)
}

fn render(s: &ModelSummary) -> String {
    let mut out = String::new();
    let files: u64 = s.files.iter().map(|f| f.size_bytes).sum();
    let _ = writeln!(
        out,
        "{}  ({}, {} file{}, {} on disk, {} of tensors)",
        s.path.display(),
        match s.format {
            crate::model::ModelFormat::Gguf => "gguf",
            crate::model::ModelFormat::Safetensors => "safetensors",
        },
        s.files.len(),
        if s.files.len() == 1 { "" } else { "s" },
        human_bytes(files),
        human_bytes(s.tensor_bytes)
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
