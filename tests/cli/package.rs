//! `package` and `verify`: reproducible content-addressed artifacts, and a
//! verify that fails, naming the file or the metric, when something is off.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

struct Dist {
    dir: tempfile::TempDir,
}

impl Dist {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A targets folder holding rpi5-8gb renamed `name` with an `[accuracy]`
    /// budget of its own (rpi5 inherits its budget from base/).
    fn board_with_budget(&self, name: &str, accuracy: &str) -> PathBuf {
        let targets = self.path("targets");
        std::fs::create_dir_all(&targets).unwrap();
        let root = repo_root();
        let profile = std::fs::read_to_string(root.join("targets/rpi5-8gb.toml"))
            .unwrap()
            .replace("name = \"rpi5-8gb\"", &format!("name = \"{name}\""))
            .replace(
                "extends = \"base/",
                &format!("extends = \"{}/targets/base/", root.display()),
            )
            + &format!("\n[accuracy]\n{accuracy}\n");
        std::fs::write(targets.join(format!("{name}.toml")), profile).unwrap();
        targets
    }

    /// MiniLM quantized to `scheme` as GGUF.
    fn quantized(&self, scheme: &str) -> PathBuf {
        minilm_gguf(self.dir.path(), scheme)
    }

    fn package(&self, model: &Path, target: &str, out: &str, threads: &str) -> Value {
        json_success(
            edgeforge()
                .args(["--json", "--threads", threads, "package"])
                .arg(model)
                .args([
                    "--target",
                    target,
                    "--name",
                    "minilm",
                    "--version",
                    "1.2.0",
                    "--reference",
                ])
                .arg(minilm())
                .arg("--recipe")
                .arg(repo_root().join("recipes/minilm-l3-fortunes.toml"))
                .arg("--out")
                .arg(self.path(out)),
        )
    }

    fn verify(&self, artifact: &Path) -> std::process::Output {
        edgeforge()
            .args(["--json", "verify"])
            .arg(artifact)
            .output()
            .unwrap()
    }
}

fn tree_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_same_inputs_give_byte_identical_artifacts_at_any_thread_count() {
    let d = Dist::new();
    let model = d.quantized("Q8_0");
    let a = d.package(&model, "rpi5-8gb", "dist-a", "1");
    let b = d.package(&model, "rpi5-8gb", "dist-b", "2");
    assert_eq!(a["id"], b["id"]);
    let (da, db) = (
        d.path("dist-a/minilm/1.2.0/rpi5-8gb"),
        d.path("dist-b/minilm/1.2.0/rpi5-8gb"),
    );
    assert_eq!(tree_bytes(&da), tree_bytes(&db));
    // The id is the sha256 of the manifest's bytes, and the manifest lists every other file.
    let manifest = std::fs::read(da.join("manifest.json")).unwrap();
    let sha = python()
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(da.join("manifest.json"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sha.stdout).trim(),
        a["id"].as_str().unwrap()
    );
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let listed: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["minilm.Q8_0.gguf", "recipe.toml"]);
    assert_eq!(m["target"]["name"], "rpi5-8gb");
    assert!(m["quantization"]["tensor_types"]["Q8_0"].as_u64().unwrap() > 30);
    let cos = m["metrics"]["accuracy"]["cosine_mean"].as_f64().unwrap();
    assert!(cos > 0.999 && cos < 1.0, "Q8_0 cosine {cos}");
    // Packaging again is a no-op; different contents are not overwritten silently.
    assert_eq!(
        d.package(&model, "rpi5-8gb", "dist-a", "2")["unchanged"],
        true
    );
    let other = d.quantized("Q4_0");
    std::fs::rename(&other, &model).unwrap();
    let out = edgeforge()
        .args(["package"])
        .arg(&model)
        .args([
            "--target",
            "rpi5-8gb",
            "--name",
            "minilm",
            "--version",
            "1.2.0",
            "--out",
        ])
        .arg(d.path("dist-a"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(tree_bytes(&da), tree_bytes(&db));
}

#[test]
fn verify_passes_a_good_artifact_and_names_what_is_wrong_with_a_bad_one() {
    let d = Dist::new();
    let model = d.quantized("Q4_K_M");
    d.package(&model, "rpi5-8gb", "dist", "2");
    let art = d.path("dist/minilm/1.2.0/rpi5-8gb");
    let ok = d.verify(&art);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
    let kinds: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"integrity") && kinds.contains(&"fit") && kinds.contains(&"accuracy"));

    // Re-measured against the reference: Q4_K_M MiniLM stays within rpi5's cosine budget.
    let re = json_success(
        edgeforge()
            .args(["--json", "verify"])
            .arg(&art)
            .arg("--reference")
            .arg(minilm()),
    );
    let gate = re["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cosine_drop")
        .unwrap();
    assert!(gate["detail"]
        .as_str()
        .unwrap()
        .contains("measured against the reference"));

    // Truncate the weights: exit 1, the file named, JUnit written.
    let gguf = art.join("minilm.Q4_K_M.gguf");
    let bytes = std::fs::read(&gguf).unwrap();
    std::fs::write(&gguf, &bytes[..bytes.len() - 100]).unwrap();
    let junit = d.path("verify.xml");
    let bad = edgeforge()
        .args(["--json", "verify"])
        .arg(&art)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    let failed: Vec<&Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["name"], "minilm.Q4_K_M.gguf");
    assert!(failed[0]["detail"].as_str().unwrap().contains("truncated"));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("failures=\"1\"") && xml.contains("<failure message=\"size"));

    // Same size, one byte flipped: the sha256 catches it.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    std::fs::write(&gguf, &flipped).unwrap();
    let out = d.verify(&art);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("modified"));

    // No manifest at all: an input error, exit 2, one line.
    let empty = d.path("empty");
    std::fs::create_dir(&empty).unwrap();
    edgeforge()
        .arg("verify")
        .arg(&empty)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("manifest.json"));
}

#[test]
fn verify_fails_an_artifact_that_breaks_its_targets_budget() {
    let d = Dist::new();
    let targets = d.board_with_budget(
        "strict-board",
        "max_cosine_drop = 0.00001\nmax_perplexity_increase_pct = 1.0\nmin_top1_agreement = 0.99",
    );
    let model = d.quantized("Q2_K");
    json_success(
        edgeforge()
            .arg("--targets-dir")
            .arg(&targets)
            .args(["--json", "package"])
            .arg(&model)
            .args([
                "--target",
                "strict-board",
                "--name",
                "minilm",
                "--version",
                "0.1.0",
                "--no-gate",
                "--reference",
            ])
            .arg(minilm())
            .arg("--out")
            .arg(d.path("dist")),
    );
    let out = edgeforge()
        .arg("--targets-dir")
        .arg(&targets)
        .arg("verify")
        .arg(d.path("dist/minilm/0.1.0/strict-board"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  accuracy   cosine_drop") && stdout.contains("off by"),
        "{stdout}"
    );
}

#[test]
fn verify_gates_a_decoder_on_its_targets_mean_kl_divergence() {
    let d = Dist::new();
    // Loose on perplexity and top-1, strict on KL divergence: only that gate can fail.
    let targets = d.board_with_budget(
        "kld-board",
        "max_cosine_drop = 1.0\nmax_perplexity_increase_pct = 1000.0\nmin_top1_agreement = 0.0\nmax_mean_kld = 0.01",
    );
    let model = d.path("smollm2.Q2_K.gguf");
    edgeforge()
        .args([
            "-q",
            "quantize",
            "--scheme",
            "Q2_K",
            "--allow-requant",
            "-o",
        ])
        .arg(&model)
        .arg(smollm2_gguf())
        .assert()
        .success();
    json_success(
        edgeforge()
            .arg("--targets-dir")
            .arg(&targets)
            .args(["--json", "package"])
            .arg(&model)
            .args([
                "--target",
                "kld-board",
                "--name",
                "smollm2",
                "--version",
                "0.1.0",
                "--no-gate",
                "--reference",
            ])
            .arg(smollm2_gguf())
            .arg("--out")
            .arg(d.path("dist")),
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(d.path("dist/smollm2/0.1.0/kld-board/manifest.json")).unwrap(),
    )
    .unwrap();
    let accuracy = &manifest["metrics"]["accuracy"];
    assert!(
        accuracy["mean_kld"].as_f64().is_some_and(|k| k > 0.01),
        "{accuracy}"
    );
    let out = edgeforge()
        .arg("--targets-dir")
        .arg(&targets)
        .arg("verify")
        .arg(d.path("dist/smollm2/0.1.0/kld-board"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  accuracy   mean_kld"), "{stdout}");
    assert!(!stdout.contains("FAIL  accuracy   perplexity"), "{stdout}");
}

#[test]
fn build_makes_every_variant_skips_unchanged_ones_and_select_picks_by_ram() {
    let d = Dist::new();
    let recipe = d.path("release.toml");
    std::fs::write(
        &recipe,
        format!(
            "[build]\nname = \"minilm\"\nversion = \"2.0.0\"\nmodel = \"{}\"\nformat = \"safetensors\"\ntargets = [\"rpi5-8gb\", \"coral-dev-board\", \"esp32-s3-8mb\"]\n",
            minilm().display()
        ),
    )
    .unwrap();
    let dist = d.path("dist");
    let build = |jobs: &str| {
        edgeforge()
            .args(["--json", "build"])
            .arg(&recipe)
            .args(["--jobs", jobs, "--dist"])
            .arg(&dist)
            .output()
            .unwrap()
    };
    let first = build("2");
    // The ESP32-S3 cannot hold MiniLM at any scheme it runs: the build says so and exits 1.
    assert_eq!(
        first.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let v: Value = serde_json::from_slice(&first.stdout).unwrap();
    let status = |v: &Value, t: &str| {
        v["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["target"] == t)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status(&v, "rpi5-8gb"), "built");
    assert_eq!(status(&v, "coral-dev-board"), "built");
    assert_eq!(status(&v, "esp32-s3-8mb"), "failed");
    let index: Value =
        serde_json::from_slice(&std::fs::read(dist.join("index.json")).unwrap()).unwrap();
    let variants = index["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for variant in variants {
        let art = dist.join(variant["artifact"].as_str().unwrap());
        edgeforge().arg("verify").arg(&art).assert().success();
    }
    let coral = variants
        .iter()
        .find(|v| v["target"] == "coral-dev-board")
        .unwrap();
    assert!(
        coral["bits_per_weight"].as_f64().unwrap() < 9.0,
        "coral runs int8: {coral}"
    );
    // Projected latency: no Coral runtime loads edgeforge's safetensors, so
    // it is projected on the Coral's four A53 cores, slower than the Pi 5's
    // four A76 cores, and never on the Edge TPU (its TFLite variant is).
    let latency = |v: &Value| v["latency_ms"].as_f64().unwrap();
    let rpi5 = variants.iter().find(|v| v["target"] == "rpi5-8gb").unwrap();
    assert!(
        latency(rpi5) > 0.0 && latency(coral) > latency(rpi5),
        "{variants:?}"
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            dist.join(coral["artifact"].as_str().unwrap())
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let engine = manifest["metrics"]["projection"]["engine"]
        .as_str()
        .unwrap();
    assert!(!engine.contains("tpu"), "{engine}");

    // Nothing changed: every built target is skipped and the artifacts keep their ids.
    let second: Value = serde_json::from_slice(&build("1").stdout).unwrap();
    assert_eq!(status(&second, "rpi5-8gb"), "skipped");
    assert_eq!(second["index"], index);
    // The human output is a table with one row per variant.
    let human = edgeforge()
        .arg("build")
        .arg(&recipe)
        .arg("--dist")
        .arg(&dist)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&human.stdout);
    for variant in variants {
        let id = &variant["id"].as_str().unwrap()[..12];
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(variant["target"].as_str().unwrap())
                    && l.contains(id)
                    && l.contains(" ms")),
            "{table}"
        );
    }

    // select: the most bits that fit the device's RAM; the TPU asks for coral's variant.
    let pick = |args: &[&str]| {
        let out = edgeforge()
            .args(["--json", "select", "--index"])
            .arg(dist.join("index.json"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
        )
    };
    let (code, big) = pick(&["--ram-mb", "4000"]);
    assert_eq!(code, Some(0));
    assert_eq!(big["selected"]["target"], "rpi5-8gb");
    // No TPU runs what this recipe builds (the Coral's is an edgeforge
    // safetensors file, the Pixel's a GGUF): select says so instead of
    // handing out a file the accelerator cannot load.
    let (code, tpu) = pick(&["--ram-mb", "4000", "--accelerator", "tpu"]);
    assert_eq!((code, &tpu["selected"]), (Some(1), &Value::Null));
    let (code, _) = pick(&["--ram-mb", "8"]);
    assert_eq!(code, Some(1));
}

#[test]
fn tar_is_deterministic_and_unpacks_to_a_verifiable_artifact() {
    let d = Dist::new();
    let model = d.quantized("Q4_0");
    let tar = |out: &str| {
        let v = json_success(
            edgeforge()
                .args(["--json", "package"])
                .arg(&model)
                .args([
                    "--target",
                    "pixel-8",
                    "--name",
                    "minilm",
                    "--version",
                    "1.0.0",
                    "--tar",
                    "--out",
                ])
                .arg(d.path(out)),
        );
        PathBuf::from(v["tar"].as_str().unwrap())
    };
    let (a, b) = (tar("one"), tar("two"));
    assert_eq!(a.file_name().unwrap(), "minilm-1.0.0-pixel-8.tar");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let unpacked = d.path("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "pixel-8/manifest.json\npixel-8/minilm.Q4_0.gguf\n"
    );
    assert!(std::process::Command::new("tar")
        .arg("-xf")
        .arg(&a)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap()
        .success());
    edgeforge()
        .arg("verify")
        .arg(unpacked.join("pixel-8"))
        .assert()
        .success();
}

#[test]
fn concurrent_and_killed_builds_leave_dist_consistent() {
    let d = Dist::new();
    let recipe = d.path("release.toml");
    std::fs::write(
        &recipe,
        format!(
            "[build]\nname = \"minilm\"\nversion = \"1.0.0\"\nmodel = \"{}\"\ntargets = [\"rpi5-8gb\"]\n",
            minilm().display()
        ),
    )
    .unwrap();
    let dist = d.path("dist");
    let start = || {
        edgeforge()
            .args(["--json", "build"])
            .arg(&recipe)
            .arg("--dist")
            .arg(&dist)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Killed part-way: no artifact half-written, and the next build completes.
    let mut doomed = start();
    std::thread::sleep(std::time::Duration::from_millis(700));
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let art = dist.join("minilm/1.0.0/rpi5-8gb");
    if art.exists() {
        edgeforge().arg("verify").arg(&art).assert().success();
    }
    // Two builds at once: the lock serialises them; one builds, the other finds it unchanged.
    let (a, b) = (start(), start());
    let statuses: Vec<String> = [a, b]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v["outcomes"][0]["status"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(statuses.contains(&"skipped".to_string()), "{statuses:?}");
    edgeforge().arg("verify").arg(&art).assert().success();
    let leftovers: Vec<_> = std::fs::read_dir(dist.join("minilm/1.0.0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["rpi5-8gb"]);
}

#[test]
fn build_distills_first_when_the_recipe_asks_and_reuses_the_student() {
    let d = Dist::new();
    let corpus = fortunes();
    for (name, n) in [("train.txt", 40), ("eval.txt", 16)] {
        let text = std::fs::read_to_string(corpus.join(name)).unwrap();
        std::fs::write(
            d.path(name),
            text.lines().take(n).collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
    }
    std::fs::write(
        d.path("small.toml"),
        format!(
            "[teacher]\nmodel = \"{}\"\n[student]\nlayers = [0, 5]\n[data]\ntrain = \"train.txt\"\neval = \"eval.txt\"\nmax_length = 32\n[train]\nlr = 5e-4\nbatch_size = 8\nsteps = 3\n",
            minilm().display()
        ),
    )
    .unwrap();
    let recipe = d.path("release.toml");
    std::fs::write(
        &recipe,
        "[build]\nname = \"minilm-l2\"\nversion = \"0.1.0\"\ndistill = \"small.toml\"\ntargets = [\"rpi5-8gb\"]\n",
    )
    .unwrap();
    let build = || {
        json_success(
            edgeforge()
                .env("EDGEFORGE_CACHE", d.path("cache"))
                .args(["--json", "build"])
                .arg(&recipe)
                .arg("--dist")
                .arg(d.path("dist")),
        )
    };
    let first = build();
    assert_eq!(first["outcomes"][0]["status"], "built");
    let art = d.path("dist/minilm-l2/0.1.0/rpi5-8gb");
    let m: Value =
        serde_json::from_slice(&std::fs::read(art.join("manifest.json")).unwrap()).unwrap();
    // The source is the 2-layer student, not the teacher.
    let student = d.path("dist/.build/minilm-l2/distill/model/model.safetensors");
    let sha = python()
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(&student)
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_string();
    assert!(m["source"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["sha256"] == sha.as_str()));
    // Both recipes travel with the artifact.
    assert_eq!(
        std::fs::read(art.join("distill.toml")).unwrap(),
        std::fs::read(d.path("small.toml")).unwrap()
    );
    assert_eq!(
        std::fs::read(art.join("recipe.toml")).unwrap(),
        std::fs::read(&recipe).unwrap()
    );
    assert_eq!(build()["outcomes"][0]["status"], "skipped");
}

#[test]
fn verify_rebuild_reproduces_a_build_and_names_the_first_differing_tensor() {
    let d = Dist::new();
    let recipe = d.path("release.toml");
    std::fs::write(
        &recipe,
        format!(
            "[build]\nname = \"minilm\"\nversion = \"3.0.0\"\nmodel = \"{}\"\nformat = \"safetensors\"\ntargets = [\"coral-dev-board\"]\n",
            minilm().display()
        ),
    )
    .unwrap();
    json_success(
        edgeforge()
            .args(["--json", "build"])
            .arg(&recipe)
            .arg("--dist")
            .arg(d.path("dist")),
    );
    let art = d.path("dist/minilm/3.0.0/coral-dev-board");
    let rebuild = |source: &Path| {
        let out = edgeforge()
            .args(["--json", "verify", "--rebuild", "--reference"])
            .arg(source)
            .arg(&art)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let check = v["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["kind"] == "rebuild").cloned())
            .unwrap_or(Value::Null);
        (out.status.code(), check)
    };
    let (code, check) = rebuild(&minilm());
    assert_eq!(code, Some(0), "{check}");
    assert_eq!(check["passed"], true);

    // Another source (one weight changed) is refused before rebuilding.
    let other = d.path("other");
    std::fs::create_dir(&other).unwrap();
    for entry in std::fs::read_dir(minilm()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, other.join(p.file_name().unwrap())).unwrap();
        }
    }
    let weights = other.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();
    let (code, check) = rebuild(&other);
    assert_eq!(code, Some(1));
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("not the recorded one"),
        "{check}"
    );

    // An artifact whose weights were altered and re-hashed passes integrity,
    // but the rebuild names the file and the tensor.
    let script = r#"
import hashlib, json, struct, sys
art = sys.argv[1]
path = art + "/model.safetensors"
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
name, info = max(((k, v) for k, v in header.items() if k != "__metadata__"),
                 key=lambda kv: kv[1]["data_offsets"][0])
data[8 + n + info["data_offsets"][0]] ^= 0x01
open(path, "wb").write(data)
m = json.load(open(art + "/manifest.json"))
for f in m["files"]:
    if f["path"] == "model.safetensors":
        f["sha256"] = hashlib.sha256(data).hexdigest()
json.dump(m, open(art + "/manifest.json", "w"))
print(name)
"#;
    let altered = python().args(["-c", script]).arg(&art).output().unwrap();
    assert!(
        altered.status.success(),
        "{}",
        String::from_utf8_lossy(&altered.stderr)
    );
    let altered = String::from_utf8(altered.stdout).unwrap();
    edgeforge().arg("verify").arg(&art).assert().success();
    let (code, check) = rebuild(&minilm());
    assert_eq!(code, Some(1));
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("`model.safetensors` differs")
            && detail.contains(&format!("tensor `{}`", altered.trim())),
        "{detail}"
    );

    // A packaged (not built) artifact has nothing to rebuild from: exit 2.
    let packaged = d.package(&d.quantized("Q8_0"), "rpi5-8gb", "pkg", "1");
    let out = edgeforge()
        .args(["verify", "--rebuild", "--reference"])
        .arg(minilm())
        .arg(packaged["artifact"].as_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only `edgeforge build` artifacts"));
}

#[test]
fn one_dist_holds_several_models_and_versions_and_select_asks_which() {
    let d = Dist::new();
    let dist = d.path("dist");
    let build = |name: &str, version: &str| {
        let recipe = d.path(&format!("{name}-{version}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "[build]\nname = \"{name}\"\nversion = \"{version}\"\nmodel = \"{}\"\nformat = \"safetensors\"\ntargets = [\"rpi5-8gb\"]\n",
                minilm().display()
            ),
        )
        .unwrap();
        edgeforge()
            .args(["-q", "build"])
            .arg(&recipe)
            .arg("--dist")
            .arg(&dist)
            .assert()
            .success();
    };
    build("minilm", "1.9.0");
    build("minilm", "1.10.0");
    build("encoder", "0.1.0");
    let index_path = dist.join("index.json");
    let index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let rows: Vec<(String, String)> = index["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        rows,
        pairs(&[
            ("encoder", "0.1.0"),
            ("minilm", "1.9.0"),
            ("minilm", "1.10.0")
        ])
    );

    let select = |args: &[&str]| {
        edgeforge()
            .args(["--json", "select", "--ram-mb", "4000", "--index"])
            .arg(&index_path)
            .args(args)
            .output()
            .unwrap()
    };
    // Which model is not guessed.
    let out = select(&[]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("encoder, minilm") && message.contains("--model"),
        "{message}"
    );
    let picked = |args: &[&str]| {
        let out = select(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["selected"]["artifact"].as_str().unwrap().to_string()
    };
    assert_eq!(picked(&["--model", "minilm"]), "minilm/1.10.0/rpi5-8gb");
    assert_eq!(
        picked(&["--model", "minilm", "--version", "1.9.0"]),
        "minilm/1.9.0/rpi5-8gb"
    );
    assert_eq!(select(&["--model", "bert"]).status.code(), Some(2));

    // merge joins indexes of different models into the one a shared dist has.
    let split = d.path("split");
    std::fs::create_dir_all(&split).unwrap();
    let mut parts = Vec::new();
    for name in ["minilm", "encoder"] {
        let mut part = index.clone();
        part["variants"]
            .as_array_mut()
            .unwrap()
            .retain(|v| v["name"] == name);
        let path = split.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&part).unwrap()).unwrap();
        parts.push(path);
    }
    let merged = split.join("index.json");
    edgeforge()
        .args(["-q", "index", "merge"])
        .args(&parts)
        .arg("--out")
        .arg(&merged)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&index_path).unwrap()
    );

    // A version whose folder is gone leaves the index at the next build.
    std::fs::remove_dir_all(dist.join("minilm/1.9.0")).unwrap();
    build("encoder", "0.1.0");
    let index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    assert_eq!(index["variants"].as_array().unwrap().len(), 2);
}
