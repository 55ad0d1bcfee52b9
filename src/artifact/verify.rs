//! `verify`: integrity (every file's size and sha256, nothing missing or
//! extra), fit on the target, and the accuracy gate against the target's
//! budget. Each check says what failed and by how much.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::accuracy::{self, Gate};
use super::consistency::Derived;
use super::graph::{GraphFormat, GraphPayload};
use super::manifest::Manifest;
use super::{hash_file, ArtifactError, MANIFEST};
use crate::engine::Engine;
use crate::model::Model;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `integrity`, `fit` or `accuracy`.
    pub kind: &'static str,
    /// What was checked (a file, the budget, a metric).
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub artifact: PathBuf,
    pub id: String,
    pub name: String,
    pub version: String,
    pub target: String,
    pub passed: bool,
    pub checks: Vec<Check>,
}

impl Verification {
    /// Each failed check as `kind name: detail`.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{} {}: {}", c.kind, c.name, c.detail))
            .collect()
    }
}

/// Reads an artifact's manifest; a missing or unreadable one is an input error.
pub fn read_manifest(dir: &Path) -> Result<(Manifest, String), ArtifactError> {
    let path = dir.join(MANIFEST);
    let bytes = crate::guard::read_bytes(&path, crate::guard::Cap::JSON)
        .map_err(|e| ArtifactError::at(&path, e.message))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| ArtifactError::at(&path, format!("not an edgeforge manifest: {e}")))?;
    if manifest.schema != super::manifest::SCHEMA {
        return Err(ArtifactError::at(
            &path,
            format!(
                "unknown schema `{}` (this edgeforge reads {})",
                manifest.schema,
                super::manifest::SCHEMA
            ),
        ));
    }
    Ok((manifest, hex::encode(Sha256::digest(&bytes))))
}

/// Runs every check. `reference` re-measures accuracy; without it the
/// recorded figures are gated against the budget.
pub fn verify(
    dir: &Path,
    reference: Option<&Path>,
    eval: &[String],
    targets_dir: Option<&Path>,
) -> Result<Verification, ArtifactError> {
    let (manifest, id) = read_manifest(dir)?;
    let mut checks = integrity(dir, &manifest);
    checks.extend(super::consistency::structure(dir, &manifest));
    let intact = checks.iter().all(|c| c.passed);
    let target = crate::target::load(&manifest.target.name, targets_dir)
        .map_err(|e| ArtifactError::at(&dir.join(MANIFEST), e.to_string()))?;
    if intact {
        let payload = Payload::open(dir, &manifest)?;
        let derived = match &payload {
            Payload::Model(m) => Derived::of_model(m, &target),
            Payload::Graph(g) => Derived::of_graph(g, &target),
        };
        checks.extend(super::consistency::derived(&manifest, &derived, &target));
        let f = &derived.footprint;
        let drift = if target.sha256 == manifest.target.sha256 {
            String::new()
        } else {
            " (the target profile changed since packaging)".into()
        };
        checks.push(Check {
            kind: "manifest",
            name: "target".into(),
            passed: target.sha256 == manifest.target.sha256,
            detail: if target.sha256 == manifest.target.sha256 {
                format!("{} is the profile it was packaged for", target.name())
            } else {
                format!(
                    "{}'s profile has sha256 {}, the manifest recorded {} (pass --allow-target-drift to accept)",
                    target.name(),
                    target.sha256,
                    manifest.target.sha256
                )
            },
        });
        checks.push(Check {
            kind: "fit",
            name: target.name().into(),
            passed: f.fits(),
            detail: if f.fits() {
                format!(
                    "{} of {} at {} tokens{drift}",
                    crate::units::human_bytes(f.total_bytes),
                    crate::units::human_bytes(f.budget_bytes),
                    f.context_tokens
                )
            } else {
                format!(
                    "misses the budget by {:.1} MiB ({} of {}){drift}",
                    f.shortfall_mib(),
                    crate::units::human_bytes(f.total_bytes),
                    crate::units::human_bytes(f.budget_bytes)
                )
            },
        });
        let (acc, source) = match reference {
            Some(r) => {
                let reference = Model::open(r)?;
                if manifest.metrics.accuracy.is_some() {
                    // Recorded figures were measured against the recorded source.
                    checks.push(super::consistency::source_matches(&manifest, &reference));
                }
                let measured = match &payload {
                    Payload::Model(model) => {
                        let (a, b) = (Engine::load(model)?, Engine::load(&reference)?);
                        accuracy::measure(&a, &b, eval)?
                    }
                    Payload::Graph(g) => g.accuracy(&reference, eval)?,
                };
                (Some(measured), "measured against the reference")
            }
            None => (
                manifest.metrics.accuracy.clone(),
                "recorded at packaging; pass --reference to re-measure",
            ),
        };
        match acc {
            Some(acc) => checks.extend(
                acc.gates(&target.spec.accuracy)
                    .into_iter()
                    .map(|g| gate_check(g, source)),
            ),
            None => checks.push(Check {
                kind: "accuracy",
                name: "accuracy".into(),
                passed: true,
                detail: "not checked: no figures recorded and no --reference".into(),
            }),
        }
    }
    Ok(Verification {
        artifact: dir.to_path_buf(),
        id,
        name: manifest.name,
        version: manifest.version,
        target: manifest.target.name,
        passed: checks.iter().all(|c| c.passed),
        checks,
    })
}

fn gate_check(g: Gate, source: &str) -> Check {
    let relation = if g.kind == "max" { "<=" } else { ">=" };
    let detail = if g.passed {
        format!("{:.6} {relation} {} ({source})", g.value, g.limit)
    } else {
        format!(
            "{:.6} is not {relation} {}: off by {:.6} ({source})",
            g.value,
            g.limit,
            (g.value - g.limit).abs()
        )
    };
    Check {
        kind: "accuracy",
        name: g.metric.into(),
        passed: g.passed,
        detail,
    }
}

/// What an artifact carries: a model the engine runs, or an accelerator graph.
enum Payload {
    Model(Model),
    Graph(GraphPayload),
}

impl Payload {
    fn open(dir: &Path, m: &Manifest) -> Result<Self, ArtifactError> {
        let graph = GraphFormat::parse(&m.quantization.format)
            .map(|f| (dir.join(f.file_name()), f))
            .filter(|(p, _)| m.files.iter().any(|e| dir.join(&e.path) == *p));
        Ok(match graph {
            Some((file, format)) => Self::Graph(GraphPayload::open(&file, format)?),
            None => Self::Model(Model::open(&payload_path(dir, m))?),
        })
    }
}

/// The model inside: the single weights file, else the folder.
fn payload_path(dir: &Path, m: &Manifest) -> PathBuf {
    let weights: Vec<&str> = m
        .files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| p.ends_with(".gguf") || p.ends_with(".safetensors"))
        .collect();
    match weights.as_slice() {
        [one] if one.ends_with(".gguf") => dir.join(one),
        [one] if !dir.join("config.json").exists() => dir.join(one),
        _ => dir.to_path_buf(),
    }
}

/// Every listed file present with its size and sha256; nothing unlisted.
pub fn integrity(dir: &Path, m: &Manifest) -> Vec<Check> {
    let mut checks = Vec::new();
    for f in &m.files {
        let path = dir.join(&f.path);
        let (passed, detail) = match hash_file(&path) {
            Err(_) if !path.exists() => (false, "missing".to_string()),
            Err(e) => (false, e.to_string()),
            Ok((size, _)) if size != f.size => (
                false,
                format!(
                    "size {size} bytes, manifest says {} (truncated or replaced)",
                    f.size
                ),
            ),
            Ok((_, sha)) if sha != f.sha256 => (
                false,
                format!("sha256 {sha}, manifest says {} (modified)", f.sha256),
            ),
            Ok(_) => (true, "size and sha256 match".to_string()),
        };
        checks.push(Check {
            kind: "integrity",
            name: f.path.clone(),
            passed,
            detail,
        });
    }
    let listed: std::collections::BTreeSet<&str> =
        m.files.iter().map(|f| f.path.as_str()).collect();
    for empty in empty_dirs(dir, dir) {
        checks.push(Check {
            kind: "integrity",
            name: empty,
            passed: false,
            detail: "a folder with no listed file in it (extra folder)".into(),
        });
    }
    for extra in walk(dir, dir) {
        if extra != MANIFEST && !listed.contains(extra.as_str()) {
            checks.push(Check {
                kind: "integrity",
                name: extra,
                passed: false,
                detail: "not listed in the manifest (extra file)".into(),
            });
        }
    }
    checks
}

/// Folders under `dir` that hold no file at any depth.
fn empty_dirs(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs_err::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if walk(root, &path).is_empty() {
                if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            } else {
                out.extend(empty_dirs(root, &path));
            }
        }
    }
    out.sort();
    out
}

/// Relative paths of every file under `dir`, sorted.
fn walk(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs_err::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Not followed: a symlinked folder could loop or lead anywhere.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(root, &path));
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// A JUnit XML report (one test case per check) for CI systems.
pub fn junit(v: &Verification) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failures = v.checks.iter().filter(|c| !c.passed).count();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"edgeforge verify {}\" tests=\"{}\" failures=\"{failures}\">\n",
        esc(&format!("{} {} {}", v.name, v.version, v.target)),
        v.checks.len()
    );
    for c in &v.checks {
        let name = esc(&format!("{}: {}", c.kind, c.name));
        if c.passed {
            xml.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{name}\"/>\n",
                c.kind
            ));
        } else {
            xml.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{name}\">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                c.kind,
                esc(&c.detail)
            ));
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}
