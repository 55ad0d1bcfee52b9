//! Nothing edgeforge reports may mislead (issue 22): package refuses what
//! verify would fail, verify pins ids and target profiles, select refuses
//! what it cannot honour, and every failure speaks JSON under --json.

use serde_json::Value;

use crate::common::*;

#[test]
fn package_refuses_what_verify_would_fail_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    // MiniLM Q4_0: cosine drop ~0.03 against the Pi's budget of 0.01.
    let model = minilm_gguf(dir.path(), "Q4_0");
    let dist = dir.path().join("dist");
    let package = |extra: &[&str]| {
        edgeforge()
            .args(["--json", "package"])
            .arg(&model)
            .args([
                "--target",
                "rpi5-8gb",
                "--name",
                "minilm",
                "--version",
                "1.0.0",
            ])
            .args(extra)
            .arg("--reference")
            .arg(minilm())
            .arg("--out")
            .arg(&dist)
            .output()
            .unwrap()
    };
    let out = package(&[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("misses the accuracy budget of rpi5-8gb") && err.contains("cosine_drop"),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["packaged"], false);
    assert!(
        !dist.join("minilm/1.0.0/rpi5-8gb").exists(),
        "nothing shipped"
    );
    assert!(package(&["--no-gate"]).status.success());
    let art = dist.join("minilm/1.0.0/rpi5-8gb");
    assert_eq!(
        edgeforge()
            .arg("verify")
            .arg(&art)
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn verify_pins_the_id_and_the_target_profile() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_gguf(dir.path(), "Q8_0");
    let targets = dir.path().join("targets");
    std::fs::create_dir(&targets).unwrap();
    let profile = std::fs::read_to_string(repo_root().join("targets/rpi5-8gb.toml"))
        .unwrap()
        .replace("name = \"rpi5-8gb\"", "name = \"my-board\"")
        .replace(
            "extends = \"base/",
            &format!("extends = \"{}/targets/base/", repo_root().display()),
        );
    std::fs::write(targets.join("my-board.toml"), &profile).unwrap();
    let v = json_success(
        edgeforge()
            .arg("--targets-dir")
            .arg(&targets)
            .args(["--json", "package"])
            .arg(&model)
            .args([
                "--target",
                "my-board",
                "--name",
                "minilm",
                "--version",
                "1.0.0",
                "--out",
            ])
            .arg(dir.path().join("dist")),
    );
    let id = v["id"].as_str().unwrap().to_string();
    let art = dir.path().join("dist/minilm/1.0.0/my-board");
    let verify = |extra: &[&str]| {
        edgeforge()
            .arg("--targets-dir")
            .arg(&targets)
            .arg("verify")
            .arg(&art)
            .args(extra)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(verify(&["--expect-id", &id]), Some(0));
    assert_eq!(verify(&["--expect-id", &"0".repeat(64)]), Some(1));
    // The profile changes under the artifact: its fit figures no longer hold.
    std::fs::write(
        targets.join("my-board.toml"),
        profile.replace("ram_mb = 8192", "ram_mb = 4096"),
    )
    .unwrap();
    let drift = edgeforge()
        .arg("--targets-dir")
        .arg(&targets)
        .arg("verify")
        .arg(&art)
        .output()
        .unwrap();
    assert_eq!(drift.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&drift.stdout).contains("--allow-target-drift"));
    assert_eq!(verify(&["--allow-target-drift"]), Some(0));
}

#[test]
fn failures_speak_json_and_nonsense_flags_are_refused() {
    let out = edgeforge()
        .args(["--json", "inspect", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["error"]["kind"], "model");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/model.gguf"));
    // A usage error, before flags are even parsed.
    let out = edgeforge()
        .args(["--json", "quantize", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["error"]["kind"], "usage");
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index.json");
    std::fs::write(&index, r#"{"name":"m","version":"1.0.0","variants":[]}"#).unwrap();
    let out = edgeforge()
        .args([
            "select",
            "--ram-mb",
            "512",
            "--accelerator",
            "quantum",
            "--index",
        ])
        .arg(&index)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: npu, gpu, tpu, dsp"));
    for args in [
        vec!["run", "embed", "MODEL", "--text", ""],
        vec![
            "quantize",
            "MODEL",
            "--context",
            "0",
            "--scheme",
            "Q8_0",
            "-o",
            "x.gguf",
        ],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == "MODEL" {
                    minilm().display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let out = edgeforge().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn build_does_not_silently_replace_an_artifact_package_made() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_gguf(dir.path(), "Q8_0");
    let dist = dir.path().join("dist");
    edgeforge()
        .args(["-q", "package"])
        .arg(&model)
        .args([
            "--target",
            "rpi5-8gb",
            "--name",
            "minilm",
            "--version",
            "1.0.0",
            "--out",
        ])
        .arg(&dist)
        .assert()
        .success();
    let art = dist.join("minilm/1.0.0/rpi5-8gb");
    let before = std::fs::read(art.join("manifest.json")).unwrap();
    let recipe = dir.path().join("release.toml");
    std::fs::write(
        &recipe,
        format!(
            "[build]\nname = \"minilm\"\nversion = \"1.0.0\"\nmodel = {:?}\ntargets = [\"rpi5-8gb\"]\n",
            minilm()
        ),
    )
    .unwrap();
    let build = |extra: &[&str]| {
        edgeforge()
            .args(["--json", "build"])
            .arg(&recipe)
            .arg("--dist")
            .arg(&dist)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = build(&[]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcomes"][0]["status"], "failed");
    assert!(v["outcomes"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("pass --force"));
    assert_eq!(std::fs::read(art.join("manifest.json")).unwrap(), before);
    assert!(build(&["--force"]).status.success());
    assert_ne!(std::fs::read(art.join("manifest.json")).unwrap(), before);
}
