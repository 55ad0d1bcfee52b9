//! Hostile input (issue 20): recipes, names, model metadata, profiles and
//! special files made by someone else. Each case exits 2 (or 1 where a check
//! ran) with one bounded line, writes nothing outside its output root and
//! leaves no temp file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs `cmd`, killing it after `limit` (a hang is a failure, not a stuck CI).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("hung for more than {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Exit 2 and one error line, short enough to read.
fn refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].len() < 2100,
        "unbounded error line: {} chars",
        lines[0].len()
    );
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn release_recipe(dir: &Path, name: &str, version: &str) -> PathBuf {
    let recipe = dir.join("release.toml");
    std::fs::write(
        &recipe,
        format!(
            "[build]\nname = {name:?}\nversion = {version:?}\nmodel = {:?}\ntargets = [\"rpi5-8gb\"]\n",
            minilm()
        ),
    )
    .unwrap();
    recipe
}

#[test]
fn names_and_versions_cannot_leave_dist_and_are_refused_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("a/b/c/d/e");
    std::fs::create_dir_all(&work).unwrap();
    // The victim two folders above the dist: must stay as it is.
    let victim = work.join("../../victim.rpi5-8gb.gguf");
    std::fs::write(&victim, b"precious").unwrap();
    for (name, version, needle) in [
        (
            "minilm",
            "1.0.0+x/../../../../../VESC",
            "is not a semantic version",
        ),
        ("minilm", "1.0.0+a/b", "is not a semantic version"),
        ("../../victim", "1.0.0", "is not a valid artifact name"),
    ] {
        let recipe = release_recipe(&work, name, version);
        let dist = work.join("dist");
        let out = run_bounded(
            edgeforge()
                .arg("build")
                .arg(&recipe)
                .arg("--dist")
                .arg(&dist),
            Duration::from_secs(60),
        );
        refused(&out, needle);
        assert!(
            !dist.join(".build").exists(),
            "work started before the check"
        );
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let everything = tree(root.path());
    assert!(
        !everything
            .iter()
            .any(|p| p.to_string_lossy().contains("ESC")),
        "{everything:?}"
    );
    // `package` with the same version.
    let out = run_bounded(
        edgeforge()
            .arg("package")
            .arg(minilm())
            .args(["--target", "rpi5-8gb", "--name", "minilm", "--version"])
            .arg("1.0.0+x/../../../../PKGESC")
            .arg("--out")
            .arg(work.join("dist")),
        Duration::from_secs(60),
    );
    refused(&out, "is not a semantic version");
    assert!(!tree(root.path())
        .iter()
        .any(|p| p.to_string_lossy().contains("PKGESC")));
}

/// A MiniLM folder whose config.json is `edit` of the real one (weights and
/// tokenizer linked, not copied).
fn minilm_with_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(minilm().join(f), model.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(minilm().join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    model
}

#[test]
fn impossible_hyperparameters_are_refused_at_load_not_a_panic() {
    for (value, needle) in [
        (serde_json::json!(0), "num_attention_heads = 0"),
        (
            serde_json::json!(1u64 << 31),
            "num_attention_heads = 2147483648",
        ),
        (
            serde_json::json!(7),
            "num_attention_heads = 7 does not divide hidden_size = 384",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let model = minilm_with_config(dir.path(), |c| c["num_attention_heads"] = value.clone());
        let out = run_bounded(
            edgeforge()
                .args(["run", "embed"])
                .arg(&model)
                .args(["--text", "hello"]),
            Duration::from_secs(60),
        );
        refused(&out, needle);
        assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
    }
    // A vocabulary smaller than the tokenizer's ids: an index past the table.
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_with_config(dir.path(), |c| c["vocab_size"] = serde_json::json!(1000));
    let out = run_bounded(
        edgeforge()
            .args(["run", "embed"])
            .arg(&model)
            .args(["--text", "hello"]),
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

fn profile_with(dir: &Path, edit: &str, from: &str) -> PathBuf {
    let base = std::fs::read_to_string(repo_root().join("targets/rpi5-8gb.toml")).unwrap();
    let text = match from {
        "" => format!("{base}\n{edit}\n"),
        line => base
            .lines()
            .map(|l| {
                if l.starts_with(line) {
                    edit.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    // Beside a copy of the shipped parents, so `extends` resolves.
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for e in std::fs::read_dir(repo_root().join("targets/base"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), base.join(e.file_name())).unwrap();
    }
    let path = dir.join("hostile.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn absurd_profile_numbers_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (edit, line, key) in [
        (
            "runtime_overhead_mb = 9223372036854775807",
            "runtime_overhead_mb",
            "memory.runtime_overhead_mb",
        ),
        (
            "runtime_overhead_mb = 17592186044416",
            "runtime_overhead_mb",
            "memory.runtime_overhead_mb",
        ),
        (
            "model_budget_share = 1e-300",
            "model_budget_share",
            "memory.model_budget_share",
        ),
        (
            "[accuracy]\nmax_perplexity_increase_pct = inf",
            "",
            "accuracy.max_perplexity_increase_pct",
        ),
        (
            "mem_bandwidth_gbs = 5e-324",
            "mem_bandwidth_gbs",
            "cpu.mem_bandwidth_gbs",
        ),
        ("ram_mb = 17592186044416", "ram_mb", "memory.ram_mb"),
        (
            "",
            "model_budget_share",
            "Give model_budget_share or model_budget_mb",
        ),
        (
            "[accuracy]\nmax_cosine_drop = nan",
            "",
            "accuracy.max_cosine_drop",
        ),
    ] {
        let path = profile_with(dir.path(), edit, line);
        let out = edgeforge()
            .args(["targets", "validate"])
            .arg(&path)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{edit}");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains(key), "{edit}: {said}");
    }
    let out = edgeforge()
        .args(["select", "--ram-mb", "17592186044416"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ram-mb"));
}

#[test]
fn huge_toml_files_are_refused_before_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    // 1 GiB, sparse: costs no disk, would cost 7 GB of parsing.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let out = run_bounded(
        edgeforge().args(["targets", "validate"]).arg(&big),
        Duration::from_secs(20),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("more than a TOML file may hold"));
    let out = run_bounded(
        edgeforge()
            .arg("build")
            .arg(&big)
            .arg("--dist")
            .arg(dir.path().join("dist")),
        Duration::from_secs(20),
    );
    refused(&out, "more than a TOML file may hold");
    let out = run_bounded(
        edgeforge().arg("distill").arg(&big).arg("--check"),
        Duration::from_secs(20),
    );
    refused(&out, "more than a TOML file may hold");
}

#[test]
fn special_files_are_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let zero = dir.path().join("zero.safetensors");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for input in [&fifo, &zero] {
        let out = run_bounded(
            edgeforge().arg("inspect").arg(input),
            Duration::from_secs(20),
        );
        refused(&out, "is not a regular file");
    }
    // A recipe naming /dev/zero as its distill recipe.
    let recipe = dir.path().join("release.toml");
    std::fs::write(
        &recipe,
        "[build]\nname = \"x\"\nversion = \"1.0.0\"\ndistill = \"/dev/zero\"\ntargets = [\"rpi5-8gb\"]\n",
    )
    .unwrap();
    let out = run_bounded(
        edgeforge()
            .arg("build")
            .arg(&recipe)
            .arg("--dist")
            .arg(dir.path().join("dist")),
        Duration::from_secs(30),
    );
    refused(&out, "is not a regular file");
}

#[test]
fn verify_refuses_special_files_and_manifest_only_edits() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = minilm_gguf(dir.path(), "Q8_0");
    let dist = dir.path().join("dist");
    edgeforge()
        .args(["-q", "package"])
        .arg(&gguf)
        .args([
            "--target",
            "rpi5-8gb",
            "--name",
            "minilm",
            "--version",
            "1.0.0",
            "--reference",
        ])
        .arg(minilm())
        .arg("--out")
        .arg(&dist)
        .assert()
        .success();
    let art = dist.join("minilm/1.0.0/rpi5-8gb");
    let pristine = std::fs::read(art.join("manifest.json")).unwrap();
    let verify = |art: &Path| {
        run_bounded(
            edgeforge().args(["--json", "verify"]).arg(art),
            Duration::from_secs(60),
        )
    };
    assert!(verify(&art).status.success());
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut m: serde_json::Value = serde_json::from_slice(&pristine).unwrap();
        f(&mut m);
        std::fs::write(
            art.join("manifest.json"),
            serde_json::to_vec_pretty(&m).unwrap(),
        )
        .unwrap();
    };
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "plan",
            Box::new(|m| {
                let plan = m["quantization"]["plan"].as_object_mut().unwrap();
                let first = plan.keys().next().unwrap().clone();
                let other = if plan[&first] == "F32" { "Q8_0" } else { "F32" };
                plan[&first] = other.into();
            }),
        ),
        (
            "budget",
            Box::new(|m| {
                let b = m["metrics"]["budget_bytes"].as_u64().unwrap();
                m["metrics"]["budget_bytes"] = (b * 100).into();
            }),
        ),
        ("fits", Box::new(|m| m["metrics"]["fits"] = false.into())),
        (
            "parameters",
            Box::new(|m| {
                let p = m["quantization"]["parameters"].as_u64().unwrap();
                m["quantization"]["parameters"] = (p + 1).into();
            }),
        ),
        (
            "duplicate file",
            Box::new(|m| {
                let files = m["files"].as_array_mut().unwrap();
                let first = files[0].clone();
                files.push(first);
            }),
        ),
        ("version", Box::new(|m| m["version"] = "1.0.9".into())),
    ];
    for (what, f) in &cases {
        edit(f.as_ref());
        let out = verify(&art);
        assert_eq!(out.status.code(), Some(1), "{what} edit passed verify");
    }
    std::fs::write(art.join("manifest.json"), &pristine).unwrap();
    std::fs::create_dir(art.join("empty")).unwrap();
    assert_eq!(
        verify(&art).status.code(),
        Some(1),
        "an extra empty folder passed"
    );
    std::fs::remove_dir(art.join("empty")).unwrap();
    // The payload replaced by a FIFO, then by a link to /dev/zero: no hang.
    let payload = art.join("minilm.Q8_0.gguf");
    std::fs::remove_file(&payload).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&payload)
        .status()
        .unwrap()
        .success());
    let out = verify(&art);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a regular file"));
    std::fs::remove_file(&payload).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &payload).unwrap();
    assert_eq!(verify(&art).status.code(), Some(1));
}

#[test]
fn a_file_size_limit_is_an_error_message_not_a_silent_death() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.gguf");
    let bin = assert_cmd::cargo::cargo_bin("edgeforge");
    // 1 MiB limit (ulimit -f counts 1024-byte blocks); MiniLM F16 is 45 MB.
    let out = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -f 1024; exec {:?} -q quantize --scheme F16 -o {:?} {:?}",
                bin,
                out_file,
                minilm()
            ))
            .env("EDGEFORGE_NO_PROGRESS", "1"),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error:"), "{err}");
    assert!(
        tree(dir.path()).is_empty(),
        "left behind: {:?}",
        tree(dir.path())
    );
}

#[test]
fn a_misparsed_huge_key_gives_a_bounded_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.toml");
    std::fs::write(&path, format!("{} = 1\n", "k".repeat(848_000))).unwrap();
    let out = edgeforge().arg("build").arg(&path).output().unwrap();
    refused(&out, "more characters");
}
