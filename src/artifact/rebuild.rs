//! `verify --rebuild`: build the artifact again from its recorded inputs
//! (the build recipe and distill recipe it carries, its target, the source
//! model the caller points at, whose hashes must match the manifest) and
//! name the first file, and inside it the first tensor, that differs.

use std::path::Path;

use super::accelerated;
use super::build::{self, BuildOptions, BuildSpec};
use super::manifest::{FileEntry, Manifest};
use super::verify::{read_manifest, Check};
use super::{hash_file, ArtifactError};
use crate::model::Model;

/// Rebuilds the artifact in `dir` from `source` into a scratch folder and compares.
pub fn rebuild(
    dir: &Path,
    source: &Path,
    eval: Option<&[String]>,
    targets_dir: Option<&Path>,
) -> Result<Check, ArtifactError> {
    let (manifest, id) = read_manifest(dir)?;
    let recipe = dir.join("recipe.toml");
    let spec = recorded_spec(dir, &manifest)?;
    let eval: Vec<String> = match (eval, &spec.eval) {
        (Some(texts), _) => texts.to_vec(),
        (None, Some(file)) => {
            return Err(ArtifactError::at(
                &recipe,
                format!("the build's eval set `{file}` is not part of the artifact; pass --eval FILE with it"),
            ))
        }
        (None, None) => super::accuracy::DEFAULT_EVAL
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    if let Some(diff) = source_difference(source, &manifest.source.files)? {
        return Ok(failed(format!(
            "the source is not the recorded one: {diff}"
        )));
    }
    let target = crate::target::load(&manifest.target.name, targets_dir)
        .map_err(|e| ArtifactError::at(&recipe, e.to_string()))?;
    let scratch = tempfile::tempdir().map_err(|e| ArtifactError::at(dir, e.to_string()))?;
    let distill_recipe = dir.join("distill.toml");
    let options = BuildOptions {
        recipe: &recipe,
        targets: vec![target.name().into()],
        dist: scratch.path(),
        jobs: 1,
        targets_dir,
        distill: &|_, _| Err("a rebuild never distils: it starts from the recorded source".into()),
        on_done: &|_| {},
        cache: None,
        progress: &|_| indicatif::ProgressBar::hidden(),
        force: true,
    };
    let distill_recipe = spec.distill.is_some().then_some(distill_recipe.as_path());
    let built = match &manifest.target.runtime {
        // An accelerator variant: the same search over schemes, calibrated on
        // the lines the artifact recorded.
        Some(runtime) => {
            let unit = accelerated::plans(&target)
                .into_iter()
                .find_map(|p| match p {
                    accelerated::Plan::Build(u) if &u.runtime == runtime => Some(u),
                    _ => None,
                })
                .ok_or_else(|| {
                    ArtifactError::at(
                        &recipe,
                        format!("{} no longer has an accelerator runtime `{runtime}` edgeforge writes for", target.name()),
                    )
                })?;
            let path = dir.join(accelerated::CALIBRATION);
            let calibration = path
                .is_file()
                .then(|| crate::guard::read_text(&path, crate::guard::Cap::TEXT))
                .transpose()
                .map_err(|e| ArtifactError::at(&path, e.message))?;
            accelerated::build_graph(
                &accelerated::GraphJob {
                    options: &options,
                    spec: &spec,
                    source,
                    eval: &eval,
                    target: &target,
                    unit: &unit,
                    calibration: calibration.as_deref(),
                    distill_recipe,
                    exports: &accelerated::Exports::default(),
                },
                &indicatif::ProgressBar::hidden(),
            )?
        }
        None => build::build_target(
            &options,
            &spec,
            source,
            &eval,
            &target,
            distill_recipe,
            &indicatif::ProgressBar::hidden(),
        )?,
    };
    let rebuilt = scratch
        .path()
        .join(&spec.name)
        .join(&spec.version)
        .join(manifest.folder());
    let Ok((again, again_id)) = read_manifest(&rebuilt) else {
        return Ok(failed(format!(
            "the rebuild produced no artifact: {}",
            built.detail
        )));
    };
    let mut notes = Vec::new();
    if target.sha256 != manifest.target.sha256 {
        notes.push("the target profile changed since the build".to_string());
    }
    if again.tool.version != manifest.tool.version {
        notes.push(format!(
            "built by edgeforge {}, rebuilt by {}",
            manifest.tool.version, again.tool.version
        ));
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    };
    if again_id == id {
        return Ok(Check {
            kind: "rebuild",
            name: "rebuild".into(),
            passed: true,
            detail: format!("rebuilt byte for byte: the same id {id}"),
        });
    }
    let detail = match first_file_difference(&manifest.files, &again.files) {
        Some(file) => {
            let tensor = first_tensor_difference(&dir.join(&file), &rebuilt.join(&file))
                .map(|t| format!(", first at tensor `{t}`"))
                .unwrap_or_default();
            format!("`{file}` differs{tensor}{notes}")
        }
        None => format!(
            "every file is identical, the manifest differs at `{}`{notes}",
            first_json_difference(&manifest, &again)
        ),
    };
    Ok(failed(detail))
}

/// The build recipe the artifact carries; artifacts packaged from a ready
/// model have none and cannot be rebuilt.
fn recorded_spec(dir: &Path, manifest: &Manifest) -> Result<BuildSpec, ArtifactError> {
    let recipe = dir.join("recipe.toml");
    let is_build_recipe = fs_err::read_to_string(&recipe)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("build"));
    if manifest.recipe.is_none() || !is_build_recipe {
        return Err(ArtifactError::at(
            dir,
            "packaged from a ready model, not built from a recipe: only `edgeforge build` artifacts can be rebuilt",
        ));
    }
    Ok(build::load_spec(&recipe)?.0)
}

fn failed(detail: String) -> Check {
    Check {
        kind: "rebuild",
        name: "rebuild".into(),
        passed: false,
        detail,
    }
}

/// The first source file whose name or hash is not the recorded one.
fn source_difference(
    source: &Path,
    recorded: &[FileEntry],
) -> Result<Option<String>, ArtifactError> {
    let files = Model::open(source)?.files;
    if files.len() != recorded.len() {
        return Ok(Some(format!(
            "{} files, {} recorded",
            files.len(),
            recorded.len()
        )));
    }
    for (file, want) in files.iter().zip(recorded) {
        let (_, sha) = hash_file(file)?;
        if sha != want.sha256 {
            return Ok(Some(format!(
                "{} has sha256 {sha}, the manifest records {} for {}",
                file.display(),
                want.sha256,
                want.path
            )));
        }
    }
    Ok(None)
}

/// The first path (in the manifest's sorted order) whose size or hash differs, or that only one side has.
fn first_file_difference(a: &[FileEntry], b: &[FileEntry]) -> Option<String> {
    let mut paths: Vec<&str> = a.iter().chain(b).map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    paths.into_iter().find_map(|p| {
        let (x, y) = (
            a.iter().find(|f| f.path == p),
            b.iter().find(|f| f.path == p),
        );
        (x != y).then(|| p.to_string())
    })
}

/// The first tensor (in the original's order) whose name, type, shape or bytes differ.
fn first_tensor_difference(original: &Path, rebuilt: &Path) -> Option<String> {
    let (a, b) = (Model::open(original).ok()?, Model::open(rebuilt).ok()?);
    for t in &a.tensors {
        let Some(u) = b.tensor(&t.name) else {
            return Some(format!("{} (missing from the rebuild)", t.name));
        };
        if t.dtype != u.dtype || t.shape != u.shape || a.tensor_bytes(t) != b.tensor_bytes(u) {
            return Some(t.name.clone());
        }
    }
    b.tensors
        .iter()
        .find(|u| a.tensor(&u.name).is_none())
        .map(|u| format!("{} (only in the rebuild)", u.name))
}

/// The dotted path of the first differing value between two manifests.
fn first_json_difference(a: &Manifest, b: &Manifest) -> String {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    match (x.get(k), y.get(k)) {
                        (Some(v), Some(w)) => walk(v, w, path),
                        _ => Some(path),
                    }
                })
            }
            _ => (a != b).then_some(at),
        }
    }
    let (a, b) = (
        serde_json::to_value(a).expect("manifest serializes"),
        serde_json::to_value(b).expect("manifest serializes"),
    );
    walk(&a, &b, String::new()).unwrap_or_else(|| "(nothing)".into())
}
