//! Shared helpers: the binary under test, real model locations, the Python
//! reference environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use assert_cmd::prelude::*;
pub use predicates::prelude::*;

/// The `edgeforge` binary with progress bars off and a clean environment.
pub fn edgeforge() -> Command {
    let mut cmd = Command::cargo_bin("edgeforge").expect("edgeforge binary is built by cargo test");
    cmd.env("EDGEFORGE_NO_PROGRESS", "1")
        .env_remove("EDGEFORGE_TARGETS")
        .env_remove("EDGEFORGE_THREADS")
        .current_dir(repo_root());
    cmd
}

/// The repository root (where `Cargo.toml`, `targets/` and `tests/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A cache folder the fetch scripts fill: `$ENV`, else `~/.cache/<default>`.
fn cache_folder(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(base.join(default))
        })
        .unwrap_or_else(|| panic!("HOME or {env} is set"))
}

/// The real-model cache of `scripts/fetch-models`. Panics with the fix
/// when a model is missing: CI must not skip real-model tests silently.
pub fn model_dir(name: &str) -> PathBuf {
    let dir = cache_folder("EDGEFORGE_MODELS", "edgeforge-models").join(name);
    assert!(
        dir.join(".ok").exists(),
        "real model `{name}` missing in {}: run scripts/fetch-models {name}",
        dir.display()
    );
    dir
}

/// The Debian fortunes corpus `scripts/fetch-corpus` writes (train.txt, eval.txt, topics/).
pub fn fortunes() -> PathBuf {
    let dir = cache_folder("EDGEFORGE_DATA", "edgeforge-data").join("fortunes");
    assert!(
        dir.join(".ok").exists(),
        "fortunes corpus missing in {}: run scripts/fetch-corpus",
        dir.display()
    );
    dir
}

/// MiniLM's model folder.
pub fn minilm() -> PathBuf {
    model_dir("minilm")
}

/// MiniLM quantized to `scheme` as `dir/minilm.<scheme>.gguf`.
pub fn minilm_gguf(dir: &Path, scheme: &str) -> PathBuf {
    let out = dir.join(format!("minilm.{scheme}.gguf"));
    edgeforge()
        .args(["-q", "quantize", "--scheme", scheme, "-o"])
        .arg(&out)
        .arg(minilm())
        .assert()
        .success();
    out
}

/// SmolLM2's Q4_1 GGUF file.
pub fn smollm2_gguf() -> PathBuf {
    model_dir("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma-3-270M in llama.cpp's Q4_K_M, or the GGUF `$EDGEFORGE_GEMMA3_GGUF`
/// names (to run the gemma3 tests on another encoding of the model).
pub fn gemma3_gguf() -> PathBuf {
    match std::env::var_os("EDGEFORGE_GEMMA3_GGUF") {
        Some(path) => PathBuf::from(path),
        None => model_dir("gemma3").join("gemma-3-270m-q4_k_m.gguf"),
    }
}

/// Reference results shipped beside the models.
pub fn refs_dir() -> PathBuf {
    repo_root().join("tests/fixtures/refs")
}

/// The Python with the reference packages (`gguf`, numpy): `$EDGEFORGE_PYTHON`,
/// else the repo's `.venv` made by `.ci/run`.
pub fn python() -> Command {
    let python = std::env::var_os("EDGEFORGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "reference Python missing at {}: run .ci/run's venv step (python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt)",
        python.display()
    );
    let mut cmd = Command::new(python);
    cmd.current_dir(repo_root());
    cmd
}

/// Runs a Python script from `tests/py/` with arguments; panics with its
/// stderr when it fails. Returns stdout.
pub fn run_py(script: &str, args: &[&Path]) -> String {
    let out = python()
        .arg(repo_root().join("tests/py").join(script))
        .args(args)
        .output()
        .expect("python starts");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// Mutations per hostile-input test: 200 by default (the figure);
/// `EDGEFORGE_FUZZ_CASES=N` runs a longer campaign locally.
pub fn fuzz_cases() -> usize {
    std::env::var("EDGEFORGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Runs `cmd`, asserts it succeeded (showing its stderr if not) and parses stdout as JSON.
pub fn json_success(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// A GGUF declaring architecture `arch` with one zero-filled F32 tensor:
/// a model edgeforge can read but not run.
pub fn foreign_gguf(path: &Path, arch: &str, tensor: &str, dims: &[u64]) {
    use edgeforge::format::atomic::Overwrite;
    use edgeforge::format::gguf::{GgmlType, GgufWriter, MetaValue};
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String(arch.into()));
    w.add_tensor_info(tensor, GgmlType::F32, dims).unwrap();
    let mut s = w.create(path, Overwrite::Deny).unwrap();
    s.write_tensor(&vec![0u8; dims.iter().product::<u64>() as usize * 4])
        .unwrap();
    s.finish().unwrap();
}

/// The row of `build --json`'s outcomes for artifact folder `folder`.
pub fn outcome<'a>(v: &'a serde_json::Value, folder: &str) -> &'a serde_json::Value {
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["target"] == folder)
        .unwrap_or_else(|| panic!("no outcome for {folder}: {v}"))
}
