//! Versioned, content-addressed artifacts: `dist/<name>/<version>/<target>/`
//! holds the model file(s), an optional recipe copy and `manifest.json`
//! (lineage, plan, metrics, compatibility, every file's sha256). The
//! artifact id is the sha256 of the canonical manifest. `verify` re-checks
//! integrity, fit and accuracy.

pub mod accelerated;
pub mod accuracy;
mod archive;
pub mod build;
mod consistency;
mod describe;
pub mod graph;
pub mod inputs;
pub mod manifest;
pub mod rebuild;
pub mod verify;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::format::gguf::GgufFile;
use crate::memory::Footprint;
use crate::model::{Model, ModelFormat, TensorRole};
use crate::target::Target;
use manifest::{
    canonical_json, Compatibility, FileEntry, Manifest, Metrics, Quantization, TargetRef, Tool,
};

pub use archive::write_tar;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{}: {message}", path.display())]
    At { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The model misses its target's accuracy budget: nothing was written.
    #[error("{model}: misses the accuracy budget of {target}: {failed}")]
    Gate {
        model: PathBuf,
        target: String,
        failed: String,
    },
}

impl ArtifactError {
    pub fn at(path: &Path, message: impl Into<String>) -> Self {
        Self::At {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// What `package` needs.
pub struct PackageInput<'a> {
    /// The model to ship (what `quantize` wrote, or any model).
    pub model: &'a Path,
    /// The model it was made from: lineage and the accuracy reference.
    pub reference: Option<&'a Path>,
    pub target: &'a Target,
    pub name: &'a str,
    pub version: &'a str,
    pub recipe: Option<&'a Path>,
    /// The distill recipe a build recipe names, copied as `distill.toml`.
    pub distill_recipe: Option<&'a Path>,
    /// Eval texts for the accuracy figures (default: the built-in set).
    pub eval: Vec<String>,
    /// The `dist/` root.
    pub out: &'a Path,
    pub force: bool,
    /// Refuse (nothing written) a model whose measured accuracy misses the
    /// target's budget, as `verify` would fail it.
    pub gate: bool,
    /// The target runtime an ONNX/TFLite payload is for (default: the one an
    /// accelerator of the target loads it with).
    pub runtime: Option<&'a str>,
}

/// A packaged artifact.
pub struct Packaged {
    pub dir: PathBuf,
    pub id: String,
    pub manifest: Manifest,
    /// An identical artifact was already there.
    pub unchanged: bool,
}

/// Writes `out/<name>/<version>/<target>/` through a temp folder and a rename.
pub fn package(input: &PackageInput) -> Result<Packaged, ArtifactError> {
    check_identity(input.name, input.version)?;
    let reference = input.reference.map(Model::open).transpose()?;
    let target = input.target;
    let d = match graph::find(input.model) {
        Some((file, format)) => describe::graph(
            &graph::GraphPayload::open(&file, format)?,
            reference.as_ref(),
            input,
        )?,
        None => describe::model(&Model::open(input.model)?, reference.as_ref(), input)?,
    };
    let folder = match &d.runtime {
        Some(r) => format!("{}.{r}", target.name()),
        None => target.name().to_string(),
    };
    let rel = Path::new(input.name).join(input.version).join(&folder);
    let dir =
        crate::guard::confined(input.out, &rel).map_err(|m| ArtifactError::at(input.out, m))?;
    let parent = dir.parent().expect("artifact folder has a parent");
    fs_err::create_dir_all(parent).map_err(|e| ArtifactError::at(parent, e.to_string()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{folder}."))
        .tempdir_in(parent)
        .map_err(|e| ArtifactError::at(parent, e.to_string()))?;

    let mut files = Vec::new();
    for file in &d.files {
        let name = file_name(file);
        files.push(copy_hashed(file, &tmp.path().join(&name), &name)?);
    }
    let recipe = match input.recipe {
        Some(r) => {
            let entry = copy_hashed(r, &tmp.path().join("recipe.toml"), "recipe.toml")?;
            files.push(entry.clone());
            Some(entry)
        }
        None => None,
    };
    if let Some(d) = input.distill_recipe {
        files.push(copy_hashed(
            d,
            &tmp.path().join("distill.toml"),
            "distill.toml",
        )?);
    }
    files.sort();
    if let (true, Some(acc)) = (input.gate, &d.accuracy) {
        let failed: Vec<String> = acc
            .gates(&target.spec.accuracy)
            .iter()
            .filter(|g| !g.passed)
            .map(|g| {
                let rel = if g.kind == "max" { "<=" } else { ">=" };
                format!("{} {:.6} is not {rel} {}", g.metric, g.value, g.limit)
            })
            .collect();
        if !failed.is_empty() {
            return Err(ArtifactError::Gate {
                model: input.model.to_path_buf(),
                target: target.name().into(),
                failed: failed.join("; "),
            });
        }
    }
    let footprint = d.footprint;
    let manifest = Manifest {
        schema: manifest::SCHEMA.into(),
        name: input.name.into(),
        version: input.version.into(),
        target: TargetRef {
            name: target.name().into(),
            class: target.spec.class.to_string(),
            sha256: target.sha256.clone(),
            runtime: d.runtime.clone(),
        },
        source: d.source,
        recipe,
        tool: Tool {
            name: "edgeforge".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        metrics: Metrics {
            size_bytes: files.iter().map(|f| f.size).sum(),
            bits_per_weight: d.quantization.bits_per_weight,
            context_tokens: footprint.context_tokens,
            total_bytes: footprint.total_bytes,
            budget_bytes: footprint.budget_bytes,
            fits: footprint.fits(),
            accuracy: d.accuracy,
            projection: Some(d.projection),
        },
        compatibility: d.compatibility,
        quantization: d.quantization,
        global: crate::fed::global::containing(input.reference.unwrap_or(input.model)),
        files,
        created: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok()),
    };
    let bytes = canonical_json(&manifest);
    let id = hex::encode(Sha256::digest(&bytes));
    write_all(&tmp.path().join(MANIFEST), &bytes)?;

    let existing = dir.join(MANIFEST);
    if existing.exists() {
        let old =
            fs_err::read(&existing).map_err(|e| ArtifactError::at(&existing, e.to_string()))?;
        if old == bytes && verify::integrity(&dir, &manifest).iter().all(|c| c.passed) {
            return Ok(Packaged {
                dir,
                id,
                manifest,
                unchanged: true,
            });
        }
        if !input.force {
            return Err(ArtifactError::at(
                &dir,
                format!(
                    "an artifact with different contents is already here (id {}); pass --force to replace it",
                    hex::encode(Sha256::digest(&old))
                ),
            ));
        }
    }
    if dir.exists() {
        // Move the old one aside first so the swap never leaves no artifact and a half one.
        let old = parent.join(format!(".{folder}.old"));
        let _ = fs_err::remove_dir_all(&old);
        fs_err::rename(&dir, &old).map_err(|e| ArtifactError::at(&dir, e.to_string()))?;
        fs_err::rename(tmp.keep(), &dir).map_err(|e| ArtifactError::at(&dir, e.to_string()))?;
        let _ = fs_err::remove_dir_all(&old);
    } else {
        fs_err::rename(tmp.keep(), &dir).map_err(|e| ArtifactError::at(&dir, e.to_string()))?;
    }
    Ok(Packaged {
        dir,
        id,
        manifest,
        unchanged: false,
    })
}

/// Weights + KV cache + activations + overhead of `model` on `target` at its context.
pub fn footprint_on(model: &Model, target: &Target, weight_bytes: u64) -> Footprint {
    footprint_for(&model.architecture, target, weight_bytes)
}

/// Weights + KV cache + activations + overhead of `architecture` on `target`.
pub fn footprint_for(
    architecture: &crate::model::config::Architecture,
    target: &Target,
    weight_bytes: u64,
) -> Footprint {
    let mut context = target.spec.workload.context_tokens;
    if let Some(max) = crate::memory::max_context(architecture) {
        context = context.min(max);
    }
    Footprint::new(
        architecture,
        weight_bytes,
        context,
        target.runtime_overhead_bytes(),
        target.model_budget_bytes(),
    )
}

pub(super) fn quantization_of(model: &Model) -> Quantization {
    let schemes: BTreeMap<String, String> = model
        .metadata()
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("edgeforge.scheme.")?.to_string(), v)))
        .collect();
    let mut tensor_types = BTreeMap::new();
    let mut plan = BTreeMap::new();
    let (mut parameters, mut bytes) = (0u64, 0u64);
    for t in &model.tensors {
        let side = t.name.ends_with(".scale") || t.name.ends_with(".zero");
        // Integer tensors are index buffers unless a scheme says they are quantized weights.
        let buffer = t.role == TensorRole::Buffer && !schemes.contains_key(&t.name);
        if side {
            // Scales and zero points are part of what the weights cost.
            bytes += t.n_bytes;
        }
        if side || buffer {
            continue;
        }
        let ty = schemes
            .get(&t.name)
            .cloned()
            .unwrap_or_else(|| t.dtype.name());
        // Packed int4 stores two values per element.
        parameters += if ty.starts_with("int4") {
            2 * t.n_elems
        } else {
            t.n_elems
        };
        *tensor_types.entry(ty.clone()).or_insert(0) += 1;
        plan.insert(t.name.clone(), ty);
        bytes += t.n_bytes;
    }
    Quantization {
        format: format_name(model).into(),
        parameters,
        weight_bytes: bytes,
        bits_per_weight: ((bytes as f64 * 8.0 / parameters.max(1) as f64) * 1e4).round() / 1e4,
        tensor_types,
        plan,
    }
}

/// The scheme most weights are stored in: it decides whether an accelerator runs them.
fn main_scheme(model: &Model, q: &Quantization) -> String {
    let mut elems: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &model.tensors {
        if let Some(scheme) = q.plan.get(&t.name) {
            *elems.entry(scheme).or_default() += t.n_elems;
        }
    }
    elems
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(s, _)| s.to_string())
        .unwrap_or_default()
}

fn format_name(model: &Model) -> &'static str {
    match model.format {
        ModelFormat::Gguf => "gguf",
        ModelFormat::Safetensors => "safetensors",
    }
}

pub(super) fn compatibility_of(model: &Model) -> Compatibility {
    let mut requires: Vec<String> = Vec::new();
    let gguf_version = model.gguf().map(GgufFile::version);
    match model.format {
        ModelFormat::Gguf => {
            requires.push(format!("gguf v{}", gguf_version.unwrap_or(3)));
            requires.push(format!(
                "llama.cpp architecture `{}`",
                model.architecture.name()
            ));
            let mut types: Vec<String> = model.tensors.iter().map(|t| t.dtype.name()).collect();
            types.sort();
            types.dedup();
            requires.extend(types.into_iter().map(|t| format!("ggml type {t}")));
        }
        ModelFormat::Safetensors => {
            requires.push("safetensors".into());
            let mut schemes: Vec<String> = model
                .metadata()
                .into_iter()
                .filter(|(k, _)| k.starts_with("edgeforge.scheme."))
                .map(|(_, v)| format!("edgeforge scheme {v} (docs/formats.md)"))
                .collect();
            schemes.sort();
            schemes.dedup();
            requires.extend(schemes);
        }
    }
    Compatibility {
        format: format_name(model).into(),
        gguf_version,
        requires,
        checked_with: Vec::new(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies `from` to `to`, hashing the bytes as they pass.
fn copy_hashed(from: &Path, to: &Path, rel: &str) -> Result<FileEntry, ArtifactError> {
    crate::guard::regular_file(from).map_err(|e| ArtifactError::at(from, e.message))?;
    let mut reader =
        fs_err::File::open(from).map_err(|e| ArtifactError::at(from, e.to_string()))?;
    let mut writer = std::io::BufWriter::new(
        fs_err::File::create(to).map_err(|e| ArtifactError::at(to, e.to_string()))?,
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ArtifactError::at(from, e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .map_err(|e| ArtifactError::at(to, format!("cannot write: {e}")))?;
        size += n as u64;
    }
    let file = writer
        .into_inner()
        .map_err(|e| ArtifactError::at(to, e.to_string()))?;
    file.sync_all()
        .map_err(|e| ArtifactError::at(to, e.to_string()))?;
    Ok(FileEntry {
        path: rel.into(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Size and sha256 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String), ArtifactError> {
    crate::guard::regular_file(path).map_err(|e| ArtifactError::at(path, e.message))?;
    let mut reader =
        fs_err::File::open(path).map_err(|e| ArtifactError::at(path, e.to_string()))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut reader, &mut hasher)
        .map_err(|e| ArtifactError::at(path, e.to_string()))?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn write_all(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    fs_err::write(path, bytes).map_err(|e| ArtifactError::at(path, format!("cannot write: {e}")))
}

/// The name and version an artifact folder is made of, checked before any
/// work: each must be one safe path component (`guard`).
pub fn check_identity(name: &str, version: &str) -> Result<(), ArtifactError> {
    crate::guard::artifact_name(name).map_err(|m| ArtifactError::at(Path::new("name"), m))?;
    crate::guard::semver(version).map_err(|m| ArtifactError::at(Path::new("version"), m))
}
