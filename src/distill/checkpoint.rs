//! Checkpoints: `<out>/checkpoints/step-NNNNNNN/` holds the student as a
//! loadable model folder (`model.safetensors` + `config.json`), AdamW's
//! state (`optimizer.bpk`, burn's record format) and `state.json`.
//! `latest.json` names the newest; each is written into a temp folder and
//! renamed, and `latest.json` is replaced atomically, so a kill at any
//! moment leaves the previous checkpoint intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};

use super::recipe::LoadedRecipe;
use super::student::{load_student, save_safetensors};
use super::DistillError;
use crate::engine::weights::Weights;
use crate::engine::BertEncoder;
use crate::format::atomic::{write_atomic, Overwrite};
use crate::model::{BertConfig, Model};

/// Progress that must survive a restart for the resumed run to be identical.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// sha256 of the recipe file and of the teacher/data cache key: a resume
    /// with different inputs is refused.
    pub recipe_sha256: String,
    pub inputs_key: String,
    /// Loss of every completed step.
    pub losses: Vec<f32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    step: usize,
    dir: String,
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Writes a checkpoint and points `latest.json` at it; older ones are removed.
pub fn save(
    out: &Path,
    student: &BertEncoder,
    config_json: &str,
    optimizer: &ModuleOptimizer,
    state: &TrainState,
) -> Result<PathBuf, DistillError> {
    let root = checkpoints_dir(out);
    fs_err::create_dir_all(&root).map_err(|e| DistillError::at(&root, e.to_string()))?;
    let name = format!("step-{:07}", state.step);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(&root)
        .map_err(|e| DistillError::at(&root, e.to_string()))?;
    save_safetensors(
        student,
        &tmp.path().join("model.safetensors"),
        &BTreeMap::new(),
    )?;
    write_file(&tmp.path().join("config.json"), config_json.as_bytes())?;
    let optim_bytes = optimizer.into_bytes().map_err(|e| {
        DistillError::at(&root, format!("cannot serialize the optimizer state: {e}"))
    })?;
    write_file(&tmp.path().join("optimizer.bpk"), &optim_bytes)?;
    let state_json = serde_json::to_vec_pretty(state).expect("state serializes");
    write_file(&tmp.path().join("state.json"), &state_json)?;
    let dir = root.join(&name);
    if dir.exists() {
        fs_err::remove_dir_all(&dir).map_err(|e| DistillError::at(&dir, e.to_string()))?;
    }
    let kept = tmp.keep();
    fs_err::rename(&kept, &dir).map_err(|e| DistillError::at(&dir, e.to_string()))?;
    let latest = serde_json::to_vec_pretty(&Latest {
        step: state.step,
        dir: name.clone(),
    })
    .expect("latest serializes");
    write_file(&root.join("latest.json"), &latest)?;
    remove_others(&root, &name);
    Ok(dir)
}

/// Whether `out` holds a checkpoint.
pub fn exists(out: &Path) -> bool {
    checkpoints_dir(out).join("latest.json").exists()
}

/// Loads the newest checkpoint: the student (with stable parameter ids), the
/// optimizer state loaded into `optimizer`, and the training state.
pub fn load(
    out: &Path,
    recipe: &LoadedRecipe,
    config: &BertConfig,
    optimizer: ModuleOptimizer,
    device: &Device,
) -> Result<(BertEncoder, ModuleOptimizer, TrainState), DistillError> {
    let root = checkpoints_dir(out);
    let latest_path = root.join("latest.json");
    let latest: Latest = read_json(&latest_path)?;
    let dir = root.join(&latest.dir);
    let state: TrainState = read_json(&dir.join("state.json"))?;
    let model = Model::open(&dir)?;
    let weights = Weights::new(&model);
    let student = load_student(
        recipe,
        config,
        &|name, shape| weights.get(name, shape),
        device,
    )?;
    let optim_path = dir.join("optimizer.bpk");
    let bytes =
        fs_err::read(&optim_path).map_err(|e| DistillError::at(&optim_path, e.to_string()))?;
    let optimizer = optimizer
        .from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| DistillError::at(&optim_path, format!("not an optimizer record: {e}")))?;
    Ok((student, optimizer, state))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DistillError> {
    let text = fs_err::read_to_string(path).map_err(|e| DistillError::at(path, e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| DistillError::at(path, format!("corrupt checkpoint: {e}")))
}

pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DistillError> {
    write_atomic(path, bytes, Overwrite::Allow)
        .map_err(|e| DistillError::at(path, e.to_string()))?;
    Ok(())
}

/// Removes every checkpoint folder but `keep` (and leftovers of killed writes).
fn remove_others(root: &Path, keep: &str) {
    let Ok(entries) = fs_err::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = (name.starts_with("step-") || name.starts_with(".step-")) && name != keep;
        if stale && entry.path().is_dir() {
            let _ = fs_err::remove_dir_all(entry.path());
        }
    }
}
