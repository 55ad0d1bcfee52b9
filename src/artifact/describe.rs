//! What `package` records about a payload, by kind: a GGUF or safetensors
//! model (the engine runs it) or an ONNX/TFLite graph (a runtime on the
//! target's accelerator runs it; edgeforge evaluates the file itself).

use std::path::PathBuf;

use super::accuracy::{self, Accuracy};
use super::graph::GraphPayload;
use super::manifest::{Compatibility, FileEntry, Quantization, Source};
use super::{
    compatibility_of, file_name, footprint_for, footprint_on, format_name, hash_file, main_scheme,
    quantization_of, ArtifactError, PackageInput,
};
use crate::engine::Engine;
use crate::memory::Footprint;
use crate::model::Model;
use crate::profile::project::Projection;

pub(super) struct Described {
    /// The payload's files, copied into the artifact under their names.
    pub files: Vec<PathBuf>,
    pub source: Source,
    pub quantization: Quantization,
    pub accuracy: Option<Accuracy>,
    pub footprint: Footprint,
    pub projection: Projection,
    pub compatibility: Compatibility,
    pub runtime: Option<String>,
}

pub(super) fn source_of(model: &Model) -> Result<Source, ArtifactError> {
    Ok(Source {
        architecture: model.architecture.name().to_string(),
        files: model
            .files
            .iter()
            .map(|f| {
                hash_file(f).map(|(size, sha256)| FileEntry {
                    path: file_name(f),
                    size,
                    sha256,
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

pub(super) fn model(
    model: &Model,
    reference: Option<&Model>,
    input: &PackageInput,
) -> Result<Described, ArtifactError> {
    if let Some(r) = input.runtime {
        return Err(ArtifactError::at(
            input.model,
            format!(
                "--runtime {r} applies to ONNX/TFLite payloads; this is a {} model",
                model.architecture.name()
            ),
        ));
    }
    let quantization = quantization_of(model);
    let accuracy = match reference {
        Some(r) => {
            let (a, b) = (Engine::load(model)?, Engine::load(r)?);
            Some(accuracy::measure(&a, &b, &input.eval)?)
        }
        None => None,
    };
    // Projected on an accelerator only if one of its runtimes loads this
    // format (llama.cpp-cuda on a Jetson reads GGUF; no NPU reads edgeforge's
    // safetensors): otherwise the file runs on the CPU.
    let scheme = main_scheme(model, &quantization);
    let target = input.target;
    let format = format_name(model);
    let reaches_accelerator = target.spec.accelerators.iter().any(|a| {
        target
            .spec
            .runtimes
            .iter()
            .any(|r| a.runtimes.contains(&r.name) && r.format == format)
    });
    let accelerated = reaches_accelerator.then_some(scheme.as_str());
    let projection = crate::profile::project::for_artifact(
        model,
        input.target,
        accelerated,
        quantization.weight_bytes,
    );
    Ok(Described {
        files: model.files.clone(),
        source: source_of(reference.unwrap_or(model))?,
        accuracy,
        footprint: footprint_on(model, input.target, quantization.weight_bytes),
        projection,
        compatibility: compatibility_of(model),
        quantization,
        runtime: None,
    })
}

/// A graph's accuracy is measured against the model it was exported from,
/// which is also what its lineage names: the reference is required.
pub(super) fn graph(
    g: &GraphPayload,
    reference: Option<&Model>,
    input: &PackageInput,
) -> Result<Described, ArtifactError> {
    let Some(reference) = reference else {
        return Err(ArtifactError::at(
            &g.file,
            format!(
                "packaging a {} file needs --reference: the model it was exported from (its lineage and the accuracy reference)",
                g.format.name()
            ),
        ));
    };
    let target = input.target;
    let runtime = match input.runtime {
        Some(name) => target
            .spec
            .runtimes
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| {
                ArtifactError::at(
                    &g.file,
                    format!("{} has no runtime `{name}`", target.name()),
                )
            })?,
        None => target.runtime_for(g.format.name()).ok_or_else(|| {
            ArtifactError::at(
                &g.file,
                format!(
                    "{} has no runtime that loads {} (its runtimes: {})",
                    target.name(),
                    g.format.name(),
                    target
                        .spec
                        .runtimes
                        .iter()
                        .map(|r| format!("{} ({})", r.name, r.format))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
    };
    if runtime.format != g.format.name() {
        return Err(ArtifactError::at(
            &g.file,
            format!(
                "runtime {} of {} loads {}, not {}",
                runtime.name,
                target.name(),
                runtime.format,
                g.format.name()
            ),
        ));
    }
    crate::guard::path_component(&runtime.name, "runtime name")
        .map_err(|m| ArtifactError::at(&g.file, m))?;
    // What verify would then fail is not shipped.
    if let Some(problem) =
        super::graph::runtime_refuses(runtime, Some(g.main_scheme()), &g.compatibility.requires)
    {
        return Err(ArtifactError::at(
            &g.file,
            format!("{problem} (on {})", target.name()),
        ));
    }
    let accuracy = g.accuracy(reference, &input.eval)?;
    let weight_bytes = g.quantization.weight_bytes;
    let projection = crate::profile::project::for_artifact(
        reference,
        target,
        Some(g.main_scheme()),
        weight_bytes,
    );
    Ok(Described {
        files: g.files.clone(),
        source: source_of(reference)?,
        quantization: g.quantization.clone(),
        accuracy: Some(accuracy),
        footprint: footprint_for(&g.architecture, target, weight_bytes),
        projection,
        compatibility: g.compatibility.clone(),
        runtime: Some(runtime.name.clone()),
    })
}
