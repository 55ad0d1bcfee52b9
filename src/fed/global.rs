//! A global version: `DIR/model/` (the model folder, weights in
//! `model.safetensors`), `DIR/recipe.toml` (the federation's recipe) and
//! `DIR/lineage.json` (canonical JSON: version, parent, every earlier id,
//! every file's sha256, and the round that made it). The version's id is
//! the sha256 of `lineage.json`, so it pins every byte of the version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::FedError;
use crate::artifact::hash_file;
use crate::artifact::manifest::{canonical_json, FileEntry};
use crate::format::atomic::{write_atomic, Overwrite};

pub const LINEAGE: &str = "lineage.json";
pub const SCHEMA: &str = "edgeforge.fed.global/v1";
pub const MODEL_DIR: &str = "model";
pub const WEIGHTS: &str = "model/model.safetensors";
pub const RECIPE: &str = "recipe.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    pub schema: String,
    pub version: u64,
    pub parent: Option<String>,
    /// The ids of every earlier version, oldest (v0) first.
    pub ancestors: Vec<String>,
    pub tokenizer_sha256: String,
    pub recipe_sha256: String,
    pub tool: String,
    /// Every file of the version but `lineage.json`, sorted by path.
    pub files: Vec<FileEntry>,
    /// The round that made this version (none for v0).
    pub round: Option<Round>,
    /// One line per earlier round, oldest first, for `fed log`.
    pub history: Vec<RoundSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round {
    pub strategy: String,
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub accepted: Vec<Accepted>,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    pub sha256: String,
    pub client: String,
    pub target: String,
    pub examples: u64,
    /// Its share of the aggregate (FedAvg weight, staleness included), or
    /// whether Krum kept it (1 or 0); median and trimmed mean weigh all alike.
    pub weight: f64,
    /// Versions between its base and the parent (0: trained on the parent).
    pub staleness: u64,
    /// L2 norm of its deltas, and the factor clipping scaled them by.
    pub norm: f64,
    pub clip_factor: f64,
    pub tensors: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    /// File name as given (sha256 when the file could be read).
    pub update: String,
    pub sha256: Option<String>,
    pub client: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundSummary {
    pub version: u64,
    pub id: String,
    pub strategy: Option<String>,
    pub accepted: usize,
    pub rejected: usize,
    pub examples: u64,
}

/// An opened global version.
#[derive(Debug, Clone)]
pub struct Global {
    pub dir: PathBuf,
    pub lineage: Lineage,
    pub id: String,
}

impl Global {
    pub fn open(dir: &Path) -> Result<Self, FedError> {
        let path = dir.join(LINEAGE);
        let bytes = crate::guard::read_bytes(&path, crate::guard::Cap::JSON)
            .map_err(|e| FedError::at(&path, e.message))?;
        let lineage: Lineage = serde_json::from_slice(&bytes)
            .map_err(|e| FedError::at(&path, format!("not a global version's lineage: {e}")))?;
        if lineage.schema != SCHEMA {
            return Err(FedError::at(
                &path,
                format!("schema `{}`, this edgeforge reads {SCHEMA}", lineage.schema),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            id: hex::encode(Sha256::digest(&bytes)),
            lineage,
        })
    }

    pub fn weights(&self) -> PathBuf {
        self.dir.join(WEIGHTS)
    }

    /// Versions between `base` and this one, if `base` is this version or
    /// an ancestor.
    pub fn staleness_of(&self, base: &str) -> Option<u64> {
        if base == self.id {
            return Some(0);
        }
        let a = &self.lineage.ancestors;
        a.iter()
            .rposition(|id| id == base)
            .map(|i| (a.len() - i) as u64)
    }

    /// Every file's size and sha256 against the lineage.
    pub fn check_files(&self) -> Result<(), FedError> {
        for f in &self.lineage.files {
            let path = self.dir.join(&f.path);
            let (size, sha) = hash_file(&path).map_err(|e| FedError::at(&path, e.to_string()))?;
            if size != f.size || sha != f.sha256 {
                return Err(FedError::at(
                    &path,
                    format!(
                        "does not match lineage.json (sha256 {sha}, recorded {})",
                        f.sha256
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The global version whose `model/` folder `model` is, if it is one and
/// its files still match the lineage (a changed copy claims nothing).
pub fn containing(model: &Path) -> Option<crate::artifact::manifest::GlobalRef> {
    let model = model.canonicalize().ok()?;
    let dir = model.parent()?;
    if model.file_name()? != MODEL_DIR || !dir.join(LINEAGE).exists() {
        return None;
    }
    let g = Global::open(dir).ok()?;
    g.check_files().ok()?;
    Some(crate::artifact::manifest::GlobalRef {
        version: g.lineage.version,
        id: g.id,
    })
}

/// Whether an artifact's source files are this version's model files and
/// the version is the one it claims; the reason when not.
pub fn leads_to(
    claimed: Option<&crate::artifact::manifest::GlobalRef>,
    source: &[FileEntry],
    g: &Global,
) -> Result<String, String> {
    let claimed = claimed.ok_or("the artifact names no global version (not built from one)")?;
    if claimed.id != g.id {
        return Err(format!(
            "the artifact claims global v{} {}, this folder is v{} {}",
            claimed.version,
            &claimed.id[..12.min(claimed.id.len())],
            g.lineage.version,
            &g.id[..12]
        ));
    }
    g.check_files().map_err(|e| e.to_string())?;
    for f in source {
        let path = format!("{MODEL_DIR}/{}", f.path);
        match g.lineage.files.iter().find(|e| e.path == path) {
            Some(e) if e.sha256 == f.sha256 => {}
            Some(_) => {
                return Err(format!(
                    "source file {} differs from the global's {path}",
                    f.path
                ))
            }
            None => {
                return Err(format!(
                    "source file {} is not in the global version",
                    f.path
                ))
            }
        }
    }
    Ok(format!(
        "built from global v{} {} ({} source files match its lineage)",
        g.lineage.version,
        &g.id[..12],
        source.len()
    ))
}

/// The file entries of a version folder (all but lineage.json), sorted.
pub fn file_entries(dir: &Path) -> Result<Vec<FileEntry>, FedError> {
    let mut out = Vec::new();
    collect(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), FedError> {
    for entry in fs_err::read_dir(dir).map_err(|e| FedError::at(dir, e.to_string()))? {
        let path = entry.map_err(|e| FedError::at(dir, e.to_string()))?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .replace('\\', "/");
        if rel == LINEAGE {
            continue;
        }
        let (size, sha256) = hash_file(&path).map_err(|e| FedError::at(&path, e.to_string()))?;
        out.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    Ok(())
}

/// sha256 of the tokenizer of a model folder (`none` when it has none).
pub fn tokenizer_sha256(model_dir: &Path) -> Result<String, FedError> {
    let path = model_dir.join("tokenizer.json");
    if !path.exists() {
        return Ok("none".into());
    }
    hash_file(&path)
        .map(|h| h.1)
        .map_err(|e| FedError::at(&path, e.to_string()))
}

/// Writes `lineage` into the staged folder `dir` and returns the id.
pub fn seal(dir: &Path, lineage: &mut Lineage) -> Result<String, FedError> {
    lineage.files = file_entries(dir)?;
    let bytes = canonical_json(lineage);
    let path = dir.join(LINEAGE);
    write_atomic(&path, &bytes, Overwrite::Allow)
        .map_err(|e| FedError::at(&path, e.to_string()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Copies a folder's files (not recursive into hidden folders).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), FedError> {
    fs_err::create_dir_all(to).map_err(|e| FedError::at(to, e.to_string()))?;
    for entry in fs_err::read_dir(from).map_err(|e| FedError::at(from, e.to_string()))? {
        let path = entry.map_err(|e| FedError::at(from, e.to_string()))?.path();
        let name = path.file_name().expect("entries have names");
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &to.join(name))?;
        } else {
            fs_err::copy(&path, to.join(name)).map_err(|e| FedError::at(&path, e.to_string()))?;
        }
    }
    Ok(())
}

/// Moves a staged folder into place; refuses to replace an existing one.
pub fn commit(staged: tempfile::TempDir, out: &Path) -> Result<(), FedError> {
    if out.exists() {
        return Err(FedError::at(
            out,
            "already exists: a version is never overwritten",
        ));
    }
    let path = staged.keep();
    std::fs::rename(&path, out).map_err(|e| {
        let _ = fs_err::remove_dir_all(&path);
        FedError::at(out, format!("cannot move into place: {e}"))
    })
}

/// A staging folder beside `out`.
pub fn stage(out: &Path) -> Result<tempfile::TempDir, FedError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs_err::create_dir_all(parent).map_err(|e| FedError::at(parent, e.to_string()))?;
    let name = out
        .file_name()
        .map_or("global".into(), |n| n.to_string_lossy().into_owned());
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(parent)
        .map_err(|e| FedError::at(parent, e.to_string()))
}

/// `fed init`: version 0 from a model folder and the federation's recipe.
pub fn init(model: &Path, recipe: &Path, out: &Path) -> Result<Global, FedError> {
    let weights = model.join("model.safetensors");
    if !weights.exists() {
        return Err(FedError::at(
            model,
            "a global model is a folder with one model.safetensors (sharded checkpoints are not supported)",
        ));
    }
    crate::format::safetensors::SafetensorsFile::open(&weights)
        .map_err(|e| FedError::at(&weights, e.message))?;
    let staged = stage(out)?;
    copy_tree(model, &staged.path().join(MODEL_DIR))?;
    fs_err::copy(recipe, staged.path().join(RECIPE))
        .map_err(|e| FedError::at(recipe, e.to_string()))?;
    let mut lineage = Lineage {
        schema: SCHEMA.into(),
        version: 0,
        parent: None,
        ancestors: Vec::new(),
        tokenizer_sha256: tokenizer_sha256(model)?,
        recipe_sha256: hash_file(recipe)
            .map_err(|e| FedError::at(recipe, e.to_string()))?
            .1,
        tool: env!("CARGO_PKG_VERSION").into(),
        files: Vec::new(),
        round: None,
        history: Vec::new(),
    };
    seal(staged.path(), &mut lineage)?;
    commit(staged, out)?;
    Global::open(out)
}
