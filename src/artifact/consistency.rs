//! What a manifest says about its own payload, re-derived: a manifest edited
//! by hand (or a consistent forgery of one field) must not pass `verify`
//! just because every file's sha256 still matches.

use std::collections::BTreeSet;
use std::path::Path;

use super::graph::GraphPayload;
use super::manifest::{Compatibility, Manifest, Quantization};
use super::verify::Check;
use super::{compatibility_of, footprint_for, footprint_on, quantization_of};
use crate::memory::Footprint;
use crate::model::Model;
use crate::target::Target;

/// What the payload itself says, whatever its kind.
pub struct Derived {
    pub quantization: Quantization,
    pub compatibility: Compatibility,
    pub footprint: Footprint,
    /// A graph's lowest-precision weights (what its runtime must run).
    pub graph_scheme: Option<&'static str>,
}

impl Derived {
    pub fn of_model(model: &Model, target: &Target) -> Self {
        let quantization = quantization_of(model);
        Self {
            footprint: footprint_on(model, target, quantization.weight_bytes),
            compatibility: compatibility_of(model),
            quantization,
            graph_scheme: None,
        }
    }

    pub fn of_graph(g: &GraphPayload, target: &Target) -> Self {
        Self {
            footprint: footprint_for(&g.architecture, target, g.quantization.weight_bytes),
            compatibility: g.compatibility.clone(),
            quantization: g.quantization.clone(),
            graph_scheme: Some(g.main_scheme()),
        }
    }
}

fn check(name: &str, passed: bool, detail: impl Into<String>) -> Check {
    Check {
        kind: "manifest",
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

/// Structure that needs no payload: file entries unique and inside the
/// folder, the folder's place in `dist/` agreeing with name and version.
pub fn structure(dir: &Path, m: &Manifest) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &m.files {
        if !seen.insert(f.path.as_str()) {
            checks.push(check(&f.path, false, "listed twice in the manifest"));
        }
        if crate::guard::confined(dir, Path::new(&f.path)).is_err() {
            checks.push(check(
                &f.path,
                false,
                "names a path outside the artifact folder",
            ));
        }
    }
    // `dist/<name>/<version>/<target>/`: a folder named for its target,
    // inside a version folder, must sit under its own version and name (an
    // artifact unpacked or pulled elsewhere is only named for its target).
    let names = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
    };
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let in_version_folder = names(abs.parent()).is_some_and(|v| crate::guard::semver(&v).is_ok());
    if in_version_folder && names(Some(&abs)).as_deref() == Some(m.folder().as_str()) {
        let version = names(abs.parent());
        let name = names(abs.parent().and_then(Path::parent));
        if version.as_deref() != Some(m.version.as_str())
            || name.as_deref() != Some(m.name.as_str())
        {
            checks.push(check(
                "layout",
                false,
                format!(
                    "the manifest says {} {}, the folder is {}/{}",
                    m.name,
                    m.version,
                    name.unwrap_or_default(),
                    version.unwrap_or_default()
                ),
            ));
        }
    }
    checks
}

/// Figures derived from the payload and the target, compared with the
/// recorded ones.
pub fn derived(m: &Manifest, d: &Derived, target: &Target) -> Vec<Check> {
    let mut checks = Vec::new();
    let q = &d.quantization;
    let differs = |what: &str, recorded: String, actual: String| {
        check(
            what,
            false,
            format!("manifest says {recorded}, the payload gives {actual}"),
        )
    };
    if q.plan != m.quantization.plan {
        let first = q
            .plan
            .iter()
            .find(|(k, v)| m.quantization.plan.get(*k) != Some(v))
            .map(|(k, v)| format!("`{k}` is {v}"))
            .or_else(|| {
                m.quantization
                    .plan
                    .keys()
                    .find(|k| !q.plan.contains_key(*k))
                    .map(|k| format!("`{k}` is not in the payload"))
            })
            .unwrap_or_default();
        checks.push(check(
            "quantization.plan",
            false,
            format!("does not match the payload's tensors: {first}"),
        ));
    }
    if q.tensor_types != m.quantization.tensor_types {
        checks.push(differs(
            "quantization.tensor_types",
            format!("{:?}", m.quantization.tensor_types),
            format!("{:?}", q.tensor_types),
        ));
    }
    for (what, recorded, actual) in [
        (
            "quantization.parameters",
            m.quantization.parameters,
            q.parameters,
        ),
        (
            "quantization.weight_bytes",
            m.quantization.weight_bytes,
            q.weight_bytes,
        ),
        (
            "metrics.size_bytes",
            m.metrics.size_bytes,
            m.files.iter().map(|f| f.size).sum(),
        ),
    ] {
        if recorded != actual {
            checks.push(differs(what, recorded.to_string(), actual.to_string()));
        }
    }
    if q.format != m.quantization.format {
        checks.push(differs(
            "quantization.format",
            m.quantization.format.clone(),
            q.format.clone(),
        ));
    }
    if !d.compatibility.requirements_eq(&m.compatibility) {
        checks.push(check(
            "compatibility",
            false,
            "does not match what the payload's format requires",
        ));
    }
    // The fit figures hold for the profile they were computed on; a changed
    // profile is reported by the fit check itself.
    if target.sha256 == m.target.sha256 {
        let f = &d.footprint;
        for (what, recorded, actual) in [
            (
                "metrics.budget_bytes",
                m.metrics.budget_bytes,
                f.budget_bytes,
            ),
            ("metrics.total_bytes", m.metrics.total_bytes, f.total_bytes),
            (
                "metrics.context_tokens",
                m.metrics.context_tokens,
                f.context_tokens,
            ),
        ] {
            if recorded != actual {
                checks.push(differs(what, recorded.to_string(), actual.to_string()));
            }
        }
        if m.metrics.fits != f.fits() {
            checks.push(differs(
                "metrics.fits",
                m.metrics.fits.to_string(),
                f.fits().to_string(),
            ));
        }
    }
    if m.target.class != target.spec.class && target.sha256 == m.target.sha256 {
        checks.push(differs(
            "target.class",
            m.target.class.clone(),
            target.spec.class.clone(),
        ));
    }
    checks.extend(runtime_check(m, d, target));
    if checks.is_empty() {
        checks.push(check(
            "figures",
            true,
            "plan, sizes, parameters and fit re-derived from the payload",
        ));
    }
    checks
}

/// A graph artifact names the runtime it is for: the target must have it,
/// loading this format and scheme (or the file is for nothing on the device).
fn runtime_check(m: &Manifest, d: &Derived, target: &Target) -> Option<Check> {
    let format = &d.quantization.format;
    let Some(name) = &m.target.runtime else {
        return d.graph_scheme.map(|_| {
            check(
                "target.runtime",
                false,
                format!("a {format} artifact must name the runtime it is for"),
            )
        });
    };
    let problem = match target.spec.runtimes.iter().find(|r| &r.name == name) {
        None => format!("{} has no runtime `{name}`", target.name()),
        Some(r) if &r.format != format => {
            format!("runtime {name} loads {}, the payload is {format}", r.format)
        }
        Some(r) => super::graph::runtime_refuses(r, d.graph_scheme, &d.compatibility.requires)?,
    };
    Some(check("target.runtime", false, problem))
}

/// With a reference: the recorded source is that reference, file for file.
pub fn source_matches(m: &Manifest, reference: &Model) -> Check {
    let actual: Result<Vec<(String, String)>, _> = reference
        .files
        .iter()
        .map(|f| {
            super::hash_file(f).map(|(_, sha)| {
                (
                    f.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    sha,
                )
            })
        })
        .collect();
    let recorded: Vec<(String, String)> = m
        .source
        .files
        .iter()
        .map(|f| (f.path.clone(), f.sha256.clone()))
        .collect();
    match actual {
        Ok(a) if a == recorded => check("source", true, "the reference is the recorded source"),
        Ok(_) => check(
            "source",
            false,
            "the reference's files are not the recorded source's (sha256 differ)",
        ),
        Err(e) => check("source", false, e.to_string()),
    }
}
