//! `edgeforge targets`: the bundled profiles, strict validation exits.

use serde_json::Value;

use crate::common::*;

#[test]
fn list_json_has_at_least_ten_targets_that_all_validate() {
    let out = edgeforge()
        .args(["targets", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(all.len() >= 10, "{}", all.len());
    for t in &all {
        assert!(t["memory"]["ram_mb"].as_u64().unwrap() > 0);
        assert_eq!(t["sha256"].as_str().unwrap().len(), 64);
    }
    let out = edgeforge()
        .args(["targets", "validate", "targets", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), all.len());
    assert!(results.iter().all(|r| r["ok"] == true));
}

#[test]
fn builtin_targets_work_outside_the_repo() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgeforge()
        .current_dir(dir.path())
        .args(["targets", "show", "rpi5-8gb", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["memory"]["ram_mb"], 8192);
    assert_eq!(
        t["runtimes"][0]["format"], "gguf",
        "inherited from base/llama-cpp-cpu.toml"
    );
    assert!(t["source"].as_str().unwrap().starts_with("builtin:"));
}

fn bad_profile(replace: &str, with: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("targets/coral-dev-board.toml")).unwrap();
    assert!(text.contains(replace));
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text.replacen(replace, with, 1)).unwrap();
    (dir, path)
}

#[test]
fn unknown_key_exits_2_naming_file_key_and_line() {
    let (_dir, path) = bad_profile("storage_mb = 8192", "storage_mb = 8192\nram_gb = 1");
    let out = edgeforge()
        .args(["targets", "validate"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("bad.toml:12: memory.ram_gb: Unknown field `ram_gb`"),
        "{stdout}"
    );
}

#[test]
fn zero_ram_exits_2_naming_the_key() {
    let (_dir, path) = bad_profile("ram_mb = 1024", "ram_mb = 0");
    edgeforge()
        .args(["targets", "show"])
        .arg(&path)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "bad.toml:9: memory.ram_mb: Must be between 1 and 16777216, got 0",
        ));
}

#[test]
fn schemes_a_runtime_or_accelerator_cannot_run_exit_2_naming_them() {
    // TFLite has no int4 weights: an Edge TPU runtime claiming them is wrong.
    let (_dir, path) = bad_profile(
        "format = \"tflite\"\nweight_schemes = [\"int8_pc\"]",
        "format = \"tflite\"\nweight_schemes = [\"int8_pc\", \"int4_g32_sym\"]",
    );
    edgeforge()
        .args(["targets", "validate"])
        .arg(&path)
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "runtime `tflite-edgetpu` loads tflite, which cannot hold `int4_g32_sym` weights",
        ));
    // An int4-only Edge TPU: none of its runtimes could ever feed it.
    let (_dir, path) = bad_profile(
        "weight_schemes = [\"int8_pc\"]\nactivation_dtypes",
        "weight_schemes = [\"int4_g32_sym\"]\nactivation_dtypes",
    );
    edgeforge()
        .args(["targets", "validate"])
        .arg(&path)
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "the Edge TPU runs int4_g32_sym, which none of its runtimes (tflite-edgetpu) loads",
        ));
}

#[test]
fn unknown_target_name_lists_the_known_ones() {
    edgeforge()
        .args(["targets", "show", "gameboy"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "Unknown target `gameboy` (known: apple-a17pro-phone",
        ));
}

#[test]
fn targets_dir_flag_replaces_the_default_set() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("targets/esp32-s3-8mb.toml")).unwrap();
    std::fs::write(
        dir.path().join("mine.toml"),
        text.replace("name = \"esp32-s3-8mb\"", "name = \"my-board\""),
    )
    .unwrap();
    let out = edgeforge()
        .args(["targets", "list", "--json", "--targets-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["name"], "my-board");
}
