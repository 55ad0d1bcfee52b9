//! `edgeforge distill`: a short real run (MiniLM teacher, fortunes text),
//! exact resume, Ctrl-C, and recipes rejected before training.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::common::*;

/// A small recipe on the real teacher and the first lines of the real corpus.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let corpus = fortunes();
        for (name, n) in [("train.txt", 96), ("eval.txt", 32)] {
            let text = std::fs::read_to_string(corpus.join(name)).unwrap();
            let lines: Vec<&str> = text.lines().take(n).collect();
            std::fs::write(dir.path().join(name), lines.join("\n") + "\n").unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `recipe.toml` from the base recipe with `student` and `train` tables replaced.
    fn recipe(&self, student: &str, train: &str) -> PathBuf {
        let text = format!(
            "[teacher]\nmodel = \"{}\"\n\n[student]\n{student}\n\n[data]\ntrain = \"train.txt\"\neval = \"eval.txt\"\nmax_length = 48\n\n[train]\n{train}\n",
            minilm().display()
        );
        let path = self.path("recipe.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn distill(&self, recipe: &Path, out: &str) -> std::process::Command {
        let mut cmd = edgeforge();
        cmd.env("EDGEFORGE_CACHE", self.path("cache"))
            .arg("distill")
            .arg(recipe)
            .arg("--out")
            .arg(self.path(out));
        cmd
    }
}

const TRAIN: &str =
    "lr = 5e-4\nwarmup_steps = 2\nbatch_size = 16\nsteps = 12\nseed = 7\ncheckpoint_every = 5";

#[test]
fn short_run_learns_and_the_student_is_a_model_every_command_loads() {
    let s = Setup::new();
    let recipe = s.recipe("layers = [0, 5]", TRAIN);
    let m = json_success(s.distill(&recipe, "a").arg("--json"));
    let (start, end) = (
        m["loss_start"].as_f64().unwrap(),
        m["loss_end"].as_f64().unwrap(),
    );
    assert!(end < start * 0.9, "loss did not fall: {start} -> {end}");
    let (init, after) = (
        m["eval_cosine_init"].as_f64().unwrap(),
        m["eval_cosine"].as_f64().unwrap(),
    );
    assert!(after > init + 0.02, "held-out cosine {init} -> {after}");
    assert_eq!(m["layers"], 2);
    assert_eq!(m["losses"].as_array().unwrap().len(), 12);
    assert_eq!(m["teacher_cache_hit"], false);
    let model = s.path("a/model");
    let written: Value =
        serde_json::from_slice(&std::fs::read(s.path("a/metrics.json")).unwrap()).unwrap();
    assert_eq!(written["eval_cosine"], m["eval_cosine"]);

    let info = json_success(edgeforge().args(["inspect", "--json"]).arg(&model));
    assert_eq!(info["architecture"]["num_hidden_layers"], 2);
    let emb = json_success(
        edgeforge()
            .args([
                "run",
                "embed",
                "--json",
                "--text",
                "A rolling disk gathers no MOS.",
            ])
            .arg(&model),
    );
    assert_eq!(emb["dimensions"], 384);
    let q8 = s.path("student.Q8_0.gguf");
    edgeforge()
        .args(["quantize", "--scheme", "Q8_0", "-o"])
        .arg(&q8)
        .arg(&model)
        .assert()
        .success();
    let prof = json_success(
        edgeforge()
            .args(["profile", "--json", "--no-measure", "--target", "rpi5-8gb"])
            .arg(&model),
    );
    assert!(prof.to_string().contains("rpi5-8gb"));

    // Same recipe again: teacher outputs come from the cache and the student is byte-identical.
    let again = json_success(s.distill(&recipe, "b").arg("--json"));
    assert_eq!(again["teacher_cache_hit"], true);
    assert_eq!(
        std::fs::read(s.path("a/model/model.safetensors")).unwrap(),
        std::fs::read(s.path("b/model/model.safetensors")).unwrap()
    );
    // An existing run is not overwritten silently.
    s.distill(&recipe, "a")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--resume").and(predicate::str::contains("--force")));
}

#[test]
fn resume_ends_with_the_same_weights_as_an_unbroken_run() {
    let s = Setup::new();
    let recipe = s.recipe("layers = [1, 4]", TRAIN);
    json_success(s.distill(&recipe, "whole").arg("--json"));
    let paused = json_success(
        s.distill(&recipe, "split")
            .args(["--json", "--until-step", "7"]),
    );
    assert_eq!(paused["paused_at_step"], 7);
    assert!(s.path("split/checkpoints/latest.json").exists());
    assert!(!s.path("split/model").exists());
    let resumed = json_success(s.distill(&recipe, "split").args(["--json", "--resume"]));
    assert_eq!(
        std::fs::read(s.path("whole/model/model.safetensors")).unwrap(),
        std::fs::read(s.path("split/model/model.safetensors")).unwrap(),
        "resumed weights differ from the unbroken run"
    );
    let whole: Value =
        serde_json::from_slice(&std::fs::read(s.path("whole/metrics.json")).unwrap()).unwrap();
    assert_eq!(whole["losses"], resumed["losses"]);
}

#[test]
fn ctrl_c_writes_a_checkpoint_that_resumes() {
    let s = Setup::new();
    let train = "lr = 5e-4\nbatch_size = 8\nsteps = 400\nseed = 1";
    let recipe = s.recipe("layers = [0, 5]", train);
    let mut child = s
        .distill(&recipe, "run")
        .arg("-v")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("training steps") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted at step")),
        "{rest:?}"
    );
    let latest: Value =
        serde_json::from_slice(&std::fs::read(s.path("run/checkpoints/latest.json")).unwrap())
            .unwrap();
    let step = latest["step"].as_u64().unwrap();
    assert!(step > 0 && step < 400, "checkpoint at step {step}");
    let resumed = s
        .distill(&recipe, "run")
        .args(["--json", "--resume", "--until-step"])
        .arg((step + 2).to_string())
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let v: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(v["paused_at_step"].as_u64(), Some(step + 2));
}

/// Runs a bad recipe: exit 2, one line naming the file and the problem, no output folder.
fn rejected(s: &Setup, recipe: &Path, file: &str, problem: &str) {
    let out = s.distill(recipe, "never").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(file) && stderr.contains(problem),
        "{stderr}"
    );
    assert!(
        !s.path("never").exists(),
        "output written before the recipe was checked"
    );
}

#[test]
fn bad_recipes_fail_before_training() {
    let s = Setup::new();
    let train = "lr = 1e-4\nbatch_size = 4\nsteps = 2";
    let recipe = s.recipe("layers = [0, 9]", train);
    rejected(&s, &recipe, "recipe.toml", "layer 9 is out of range");
    let recipe = s.recipe("layers = 8", train);
    rejected(&s, &recipe, "recipe.toml", "not smaller than the teacher");
    let recipe = s.recipe("layers = [0]\nwidth = 3", train);
    rejected(&s, &recipe, "recipe.toml", "unknown field `width`");
    let recipe = s.recipe("layers = [0]", "lr = 1e-4\nbatch_size = 4");
    rejected(&s, &recipe, "recipe.toml", "train.steps or train.epochs");

    std::fs::write(s.path("train.txt"), "\n  \n").unwrap();
    let recipe = s.recipe("layers = [0]", train);
    rejected(&s, &recipe, "train.txt", "no examples");
    std::fs::remove_file(s.path("train.txt")).unwrap();
    rejected(&s, &recipe, "train.txt", "no such file");

    let s = Setup::new();
    let mut tok: Value =
        serde_json::from_slice(&std::fs::read(minilm().join("tokenizer.json")).unwrap()).unwrap();
    tok["model"]["vocab"]["edgeforgeword"] = 30522.into();
    std::fs::write(s.path("tokenizer.json"), tok.to_string()).unwrap();
    let recipe = s.recipe("layers = [0]\ntokenizer = \"tokenizer.json\"", train);
    rejected(&s, &recipe, "tokenizer.json", "tokenizer mismatch");

    let decoder = s.path("recipe-decoder.toml");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace(
            &minilm().display().to_string(),
            &model_dir("smollm2").display().to_string(),
        )
        .replace("tokenizer = \"tokenizer.json\"", "");
    std::fs::write(&decoder, text).unwrap();
    rejected(&s, &decoder, "smollm2", "decoder distillation");
}
