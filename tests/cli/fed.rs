//! `fed init`, `fed aggregate`, `fed log`: aggregates equal Flower's own
//! functions (the `flwr` package) on the same clients; order and threads do
//! not change a byte; drifted and forged updates are turned away with their
//! reason while the round completes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

/// f32 tolerance against Flower: it sums in float32, we in f64; elements
/// are O(1) and at most 8 clients, so the float32 sums differ by < 1e-5.
const FLOWER_TOLERANCE: f32 = 2e-5;

struct Fed {
    dir: tempfile::TempDir,
}

impl Fed {
    /// A synthetic model with odd shapes, made version 0.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        run_py(
            "fed_ref.py",
            &[Path::new("model"), &dir.path().join("model")],
        );
        std::fs::write(dir.path().join("fed.toml"), "[fed]\nname = \"test\"\n").unwrap();
        let v: Value = json_success(
            edgeforge()
                .args(["--json", "fed", "init"])
                .arg(dir.path().join("model"))
                .arg("--recipe")
                .arg(dir.path().join("fed.toml"))
                .arg("--out")
                .arg(dir.path().join("v0")),
        );
        assert_eq!(v["version"], 0);
        Self { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    deltas(path)
}

fn assert_close(ours: &Path, flower: &Path, what: &str) {
    let (a, b) = (tensors(ours), tensors(flower));
    assert_eq!(a.len(), b.len(), "{what}");
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            assert!(
                (x - y).abs() <= FLOWER_TOLERANCE * (1.0 + y.abs()),
                "{what}: {na}: ours {x}, Flower {y}"
            );
        }
    }
}

fn aggregate(fed: &Fed, updates: &[PathBuf], out: &str, extra: &[&str]) -> std::process::Output {
    edgeforge()
        .args(["--json", "fed", "aggregate", "--global"])
        .arg(fed.path("v0"))
        .args(updates)
        .arg("--out")
        .arg(fed.path(out))
        .args(extra)
        .output()
        .unwrap()
}

fn updates(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| dir.join(format!("u{i}.safetensors")))
        .collect()
}

#[test]
fn aggregates_equal_flowers_and_do_not_depend_on_order_or_threads() {
    let fed = Fed::new();
    let ups = fed.path("updates");
    run_py(
        "fed_ref.py",
        &[
            Path::new("updates"),
            &fed.path("v0"),
            &ups,
            Path::new("7"),
            Path::new("3"),
        ],
    );
    let clients = updates(&ups, 7);
    for (strategy, args) in [
        ("fedavg", vec!["--strategy", "fedavg"]),
        ("median", vec!["--strategy", "median"]),
        (
            "trimmed-mean",
            vec!["--strategy", "trimmed-mean", "--trim", "0.2"],
        ),
        ("krum", vec!["--strategy", "krum", "--krum-malicious", "1"]),
        (
            "multikrum",
            vec![
                "--strategy",
                "krum",
                "--krum-malicious",
                "1",
                "--krum-keep",
                "3",
            ],
        ),
    ] {
        let out = aggregate(&fed, &clients, strategy, &args);
        assert!(
            out.status.success(),
            "{strategy}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["accepted"].as_array().unwrap().len(), 7);
        assert_close(
            &fed.path(strategy).join("model/model.safetensors"),
            &ups.join(format!("expected_{strategy}.safetensors")),
            strategy,
        );
    }
    // A client that trained only some tensors counts only for those.
    let mut with_partial = clients.clone();
    with_partial.push(ups.join("partial.safetensors"));
    let out = aggregate(&fed, &with_partial, "partial", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_close(
        &fed.path("partial/model/model.safetensors"),
        &ups.join("expected_partial.safetensors"),
        "partial",
    );

    // The same updates reversed, with one thread: the same bytes.
    let mut reversed = clients.clone();
    reversed.reverse();
    let out = edgeforge()
        .args(["--json", "--threads", "1", "fed", "aggregate", "--global"])
        .arg(fed.path("v0"))
        .args(&reversed)
        .arg("--out")
        .arg(fed.path("fedavg-again"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["lineage.json", "model/model.safetensors"] {
        assert_eq!(
            std::fs::read(fed.path("fedavg").join(file)).unwrap(),
            std::fs::read(fed.path("fedavg-again").join(file)).unwrap(),
            "{file}"
        );
    }

    // Versions chain: v1 names v0 as parent, a round on v1 makes v2, `fed log` shows the chain.
    let v0: Value =
        serde_json::from_slice(&std::fs::read(fed.path("v0/lineage.json")).unwrap()).unwrap();
    let v1: Value =
        serde_json::from_slice(&std::fs::read(fed.path("fedavg/lineage.json")).unwrap()).unwrap();
    assert!(v0["parent"].is_null());
    let v0_id = sha256_hex(&std::fs::read(fed.path("v0/lineage.json")).unwrap());
    assert_eq!(v1["parent"], v0_id.as_str());
    assert_eq!(v1["round"]["strategy"], "fedavg");
    let weights: f64 = v1["round"]["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["weight"].as_f64().unwrap())
        .sum();
    assert!((weights - 1.0).abs() < 1e-5);
    // Updates trained on v0 are one version stale against v1: refused, then
    // accepted with --max-staleness 1 and down-weighted.
    let on_v1 = |extra: &[&str], out: &str| {
        edgeforge()
            .args(["--json", "fed", "aggregate", "--global"])
            .arg(fed.path("fedavg"))
            .args(&clients[..3])
            .arg("--out")
            .arg(fed.path(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let stale = on_v1(&["--min-clients", "1"], "v2-strict");
    assert_eq!(stale.status.code(), Some(1));
    assert!(!fed.path("v2-strict").exists());
    let out = on_v1(&["--max-staleness", "1"], "v2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v2["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["staleness"] == 1));
    let log = edgeforge()
        .args(["fed", "log"])
        .arg(fed.path("v2"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(log.status.success());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].starts_with("v0") && lines[1].contains(&v0_id[..12]),
        "{text}"
    );
    assert!(
        lines[2].starts_with("v1") && lines[2].contains("fedavg"),
        "{text}"
    );
    assert!(lines[3].starts_with("v2"), "{text}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn drifted_and_forged_updates_are_rejected_with_their_reason_and_the_round_goes_on() {
    let fed = Fed::new();
    let ups = fed.path("updates");
    run_py(
        "fed_ref.py",
        &[
            Path::new("updates"),
            &fed.path("v0"),
            &ups,
            Path::new("3"),
            Path::new("5"),
        ],
    );
    let bad = fed.path("bad");
    run_py("fed_ref.py", &[Path::new("bad"), &fed.path("v0"), &bad]);
    let cases = [
        ("other-base", "version drift"),
        ("other-tokenizer", "tokenizer"),
        ("other-recipe", "recipe"),
        ("unknown-tensor", "`z.extra` is not in the global model"),
        ("other-shape", "shape [5, 7]"),
        ("huge-norm", "above --max-norm"),
        ("dup-1", "client `c-dup` sent 2 updates"),
        ("dup-2", "client `c-dup` sent 2 updates"),
        ("nan", "NaN or Inf in tensor `b.bias`"),
        (
            "all-examples",
            "more than the 4294967296 one client may claim",
        ),
        ("empty-client", "client id `` is not a safe name"),
        (
            "path-client",
            "client id `../../etc/passwd` is not a safe name",
        ),
        ("path-target", "target `../x` is not a safe name"),
        ("truncated", ""),
    ];
    let mut all = updates(&ups, 3);
    all.extend(
        cases
            .iter()
            .map(|(c, _)| bad.join(format!("{c}.safetensors"))),
    );
    let out = aggregate(
        &fed,
        &all,
        "v1",
        &["--max-norm", "50", "--min-clients", "3"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"].as_array().unwrap().len(), 3);
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), cases.len());
    for (case, reason) in cases {
        let r = rejected
            .iter()
            .find(|r| r["update"] == format!("{case}.safetensors"))
            .unwrap_or_else(|| panic!("{case} not rejected: {v}"));
        assert!(
            r["reason"].as_str().unwrap().contains(reason),
            "{case}: {r}"
        );
    }
    // The lineage lists them too.
    let lineage: Value =
        serde_json::from_slice(&std::fs::read(fed.path("v1/lineage.json")).unwrap()).unwrap();
    assert_eq!(lineage["round"]["rejected"], v["rejected"]);
    // Too few good updates: exit 1, no new version.
    let out = aggregate(
        &fed,
        &all,
        "v1b",
        &["--max-norm", "50", "--min-clients", "4"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--min-clients is 4"), "{stderr}");
    assert!(!fed.path("v1b").exists());
    // ... and says why each of the others was turned away, on stderr and in --json.
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["exit_code"], 1);
    assert_eq!(failed["error"]["kind"], "fed");
    assert_eq!(failed["accepted"], 3);
    assert_eq!(failed["min_clients"], 4);
    assert_eq!(failed["received"], all.len());
    assert_eq!(
        failed["rejected"], v["rejected"],
        "the same reasons as a round that lands"
    );
    for r in rejected {
        let line = format!("rejected {}", r["update"].as_str().unwrap());
        assert!(stderr.contains(&line), "{line} missing: {stderr}");
    }
    // An existing version is never overwritten.
    let out = aggregate(&fed, &all, "v1", &["--max-norm", "50"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Decoded deltas of an update (F32, or I8 × per-row `.scale`).
fn deltas(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if name.ends_with(".scale") {
            continue;
        }
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I8 => {
                let scale = st.tensor(&format!("{name}.scale")).unwrap();
                let scales: Vec<f32> = scale
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let row = view.data().len() / scales.len();
                view.data()
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| q as i8 as f32 * scales[i / row])
                    .collect()
            }
            other => panic!("{name}: {other:?}"),
        };
        out.push((name, values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn clients_train_what_their_device_affords_and_the_round_gives_a_model_the_engine_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel);
    let corpus = std::fs::read_to_string(fortunes().join("train.txt")).unwrap();
    let lines: Vec<&str> = corpus.lines().collect();
    std::fs::write(p("train.txt"), lines[..96].join("\n")).unwrap();
    std::fs::write(p("eval.txt"), lines[96..128].join("\n")).unwrap();
    std::fs::write(p("local.txt"), lines[200..264].join("\n")).unwrap();
    std::fs::write(
        p("fed.toml"),
        format!(
            "name = \"tiny\"\n[teacher]\nmodel = \"{}\"\n[student]\nlayers = [0, 2, 5]\n[data]\ntrain = \"{}\"\neval = \"{}\"\nmax_length = 64\n[train]\nlr = 1e-3\nwarmup_steps = 0\nschedule = \"constant\"\nbatch_size = 16\nsteps = 2\nseed = 1\n",
            minilm().display(),
            p("train.txt").display(),
            p("eval.txt").display()
        ),
    )
    .unwrap();
    let ok = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(edgeforge()
        .args(["-q", "distill"])
        .arg(p("fed.toml"))
        .arg("--out")
        .arg(p("run")));
    ok(edgeforge()
        .args(["fed", "init"])
        .arg(p("run/model"))
        .arg("--recipe")
        .arg(p("fed.toml"))
        .arg("--out")
        .arg(p("v0")));
    let train = |target: &str, out: &str, extra: &[&str]| {
        let client = out.trim_end_matches("-again");
        edgeforge()
            .args(["--json", "fed", "train", "--global"])
            .arg(p("v0"))
            .arg("--data")
            .arg(p("local.txt"))
            .args([
                "--target", target, "--client", client, "--steps", "3", "--out",
            ])
            .arg(p(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let parse = |o: std::process::Output| -> Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let pi5 = parse(train("rpi5-8gb", "pi5", &[]));
    let zero = parse(train("rpi-zero-2w", "zero", &[]));
    let zero8 = parse(train("rpi-zero-2w", "zero8", &["--int8"]));
    // The Pi 5 trains everything; the Pi Zero 2 W (256 MiB) cannot afford the embedding tables.
    assert_eq!(pi5["trainable"]["embeddings"], true);
    assert_eq!(zero["trainable"]["embeddings"], false);
    let names = |f: &str| {
        deltas(&p(f))
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    assert!(names("pi5").contains(&"embeddings.word_embeddings.weight".to_string()));
    assert!(!names("zero").iter().any(|n| n.contains("word_embeddings")));
    assert!(names("zero")
        .iter()
        .any(|n| n.starts_with("encoder.layer.2.")));
    assert!(zero["loss_last"].as_f64().unwrap() < zero["loss_first"].as_f64().unwrap());
    // The same training sent as int8: about 4x smaller, the same deltas within half a step.
    assert!(zero8["bytes"].as_u64().unwrap() * 3 < zero["bytes"].as_u64().unwrap());
    for ((n, a), (_, b)) in deltas(&p("zero")).iter().zip(deltas(&p("zero8"))) {
        let amax = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= amax / 127.0, "{n}: {x} vs {y}");
        }
    }
    // A microcontroller cannot train it at all: one clear line, no update.
    let esp = train("esp32-s3-8mb", "esp", &[]);
    assert_eq!(esp.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&esp.stderr).contains("cannot train this model"));
    assert!(!p("esp").exists());
    // The same client round again: the same bytes.
    parse(train("rpi-zero-2w", "zero-again", &[]));
    assert_eq!(
        std::fs::read(p("zero")).unwrap(),
        std::fs::read(p("zero-again")).unwrap()
    );
    // The round: a new version whose model the engine runs.
    ok(edgeforge()
        .args(["fed", "aggregate", "--global"])
        .arg(p("v0"))
        .args([p("pi5"), p("zero8")])
        .arg("--out")
        .arg(p("v1")));
    let embed = ok(edgeforge()
        .args(["--json", "run", "embed"])
        .arg(p("v1/model"))
        .args([
            "--text",
            "A cat sat on the mat.",
            "--text",
            "A dog lay on the rug.",
            "--similarity",
        ]));
    let v: Value = serde_json::from_slice(&embed.stdout).unwrap();
    assert_eq!(v["dimensions"], 384);
    let sim = v["similarity"][0][1].as_f64().unwrap();
    assert!(sim.is_finite() && sim.abs() < 1.0, "{v}");
    assert_ne!(
        std::fs::read(p("v0/model/model.safetensors")).unwrap(),
        std::fs::read(p("v1/model/model.safetensors")).unwrap()
    );

    // The fleet: building the new global records its version in every
    // variant and in index.json; verify --global checks the claim.
    std::fs::write(
        p("release.toml"),
        format!(
            "[build]\nname = \"fleet\"\nversion = \"1.0.0\"\nmodel = \"{}\"\nformat = \"auto\"\ntargets = [\"rpi5-8gb\", \"coral-dev-board\"]\n",
            p("v1/model").display()
        ),
    )
    .unwrap();
    ok(edgeforge()
        .args(["-q", "build"])
        .arg(p("release.toml"))
        .arg("--dist")
        .arg(p("dist")));
    let index: Value =
        serde_json::from_slice(&std::fs::read(p("dist/index.json")).unwrap()).unwrap();
    let v1_id = sha256_hex(&std::fs::read(p("v1/lineage.json")).unwrap());
    for variant in index["variants"].as_array().unwrap() {
        assert_eq!(variant["global_version"], 1, "{variant}");
        assert_eq!(variant["global_id"], v1_id.as_str());
    }
    let verify = |global: &str| {
        edgeforge()
            .args(["--json", "verify"])
            .arg(p("dist/fleet/1.0.0/rpi5-8gb"))
            .arg("--global")
            .arg(p(global))
            .output()
            .unwrap()
    };
    let good = verify("v1");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    let wrong = verify("v0");
    assert_eq!(wrong.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&wrong.stdout).unwrap();
    let lineage = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "lineage")
        .unwrap();
    assert!(
        lineage["detail"]
            .as_str()
            .unwrap()
            .contains("claims global v1"),
        "{lineage}"
    );
}

#[test]
fn with_clients_toml_only_updates_signed_by_their_listed_key_are_accepted() {
    let fed = Fed::new();
    let ups = fed.path("updates");
    run_py(
        "fed_ref.py",
        &[
            Path::new("updates"),
            &fed.path("v0"),
            &ups,
            Path::new("3"),
            Path::new("9"),
        ],
    );
    let keygen = |name: &str| -> String {
        let v = json_success(
            edgeforge()
                .args(["--json", "fed", "keygen", "--out"])
                .arg(fed.path(name)),
        );
        v["public_key"].as_str().unwrap().to_string()
    };
    let (k0, k1) = (keygen("k0"), keygen("k1"));
    keygen("k2");
    keygen("mallory");
    // A key is never overwritten.
    let again = edgeforge()
        .args(["fed", "keygen", "--out"])
        .arg(fed.path("k0"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let sign = |update: &Path, key: &str| {
        json_success(
            edgeforge()
                .args(["--json", "fed", "sign"])
                .arg(update)
                .arg("--key")
                .arg(fed.path(key)),
        );
    };
    sign(&ups.join("u0.safetensors"), "k0");
    sign(&ups.join("u1.safetensors"), "mallory"); // claims client-1, signed by another key
    sign(&ups.join("u2.safetensors"), "k2"); // client-2 is not listed
                                             // A signed update altered afterwards.
    std::fs::copy(ups.join("u0.safetensors"), fed.path("altered.safetensors")).unwrap();
    let mut bytes = std::fs::read(fed.path("altered.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(fed.path("altered.safetensors"), bytes).unwrap();
    std::fs::write(
        fed.path("clients.toml"),
        format!(
            "[[client]]\nid = \"client-0\"\npublic_key = \"{k0}\"\n[[client]]\nid = \"client-1\"\npublic_key = \"{k1}\"\n[[client]]\nid = \"client-partial\"\npublic_key = \"{k1}\"\n"
        ),
    )
    .unwrap();
    let round = |updates: &[PathBuf], out: &str| {
        edgeforge()
            .args(["--json", "fed", "aggregate", "--global"])
            .arg(fed.path("v0"))
            .args(updates)
            .arg("--clients")
            .arg(fed.path("clients.toml"))
            .arg("--out")
            .arg(fed.path(out))
            .output()
            .unwrap()
    };
    let mut all = updates(&ups, 3);
    all.push(ups.join("partial.safetensors"));
    let out = round(&all, "v1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let accepted: Vec<&str> = v["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["client"].as_str().unwrap())
        .collect();
    assert_eq!(accepted, ["client-0"]);
    let reason = |client: &str| {
        v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["client"] == client)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("client-1").contains("bad signature"));
    assert!(reason("client-2").contains("not in clients.toml"));
    assert!(reason("client-partial").contains("unsigned"));
    // The altered copy alone: rejected, so no version.
    let out = round(&[fed.path("altered.safetensors")], "v1b");
    assert_eq!(out.status.code(), Some(1));
    assert!(!fed.path("v1b").exists());
}

#[test]
fn a_simulated_federation_is_reproduced_by_rerunning_its_recipe() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped training recipe, measured on 40 held-out texts to keep the test short.
    let training = dir.path().join("training.toml");
    let shipped = std::fs::read_to_string(repo_root().join("recipes/fed-minilm-l3.toml")).unwrap();
    assert!(shipped.contains("max_eval = 300"));
    std::fs::write(
        &training,
        shipped.replace("max_eval = 300", "max_eval = 40"),
    )
    .unwrap();
    let recipe = dir.path().join("sim.toml");
    std::fs::write(
        &recipe,
        format!(
            "[simulate]\ntraining = \"{}\"\ntopics = \"{}\"\neval = \"{}\"\nclients = 3\nrounds = 2\nlocal_steps = 1\nnon_iid = 0.3\ntargets = [\"rpi5-8gb\", \"rpi-zero-2w\", \"pixel-8\"]\nmax_examples = 150\nseed = 3\n",
            training.display(),
            fortunes().join("topics").display(),
            fortunes().join("eval.txt").display()
        ),
    )
    .unwrap();
    let run = |out: &str| -> Value {
        json_success(
            edgeforge()
                .args(["--json", "fed", "simulate"])
                .arg(&recipe)
                .arg("--out")
                .arg(dir.path().join(out)),
        )
    };
    let a = run("a");
    assert_eq!(a["rounds"].as_array().unwrap().len(), 2);
    for m in a["rounds"].as_array().unwrap() {
        assert_eq!(m["accepted"], 3);
    }
    // Shards: non-empty, disjoint, none of them held out.
    let eval: std::collections::BTreeSet<String> =
        std::fs::read_to_string(fortunes().join("eval.txt"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..3 {
        let shard =
            std::fs::read_to_string(dir.path().join(format!("a/shards/client-{i}.txt"))).unwrap();
        assert!(!shard.trim().is_empty());
        for line in shard.lines() {
            assert!(!eval.contains(line), "held-out text in a shard");
            assert!(seen.insert(line.to_string()), "a text in two shards");
        }
    }
    // Three device classes, baselines measured, the plot drawn.
    let targets: std::collections::BTreeSet<&str> = a["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets.len(), 3);
    assert!(a["central_cosine"].as_f64().is_some() && a["best_alone_cosine"].as_f64().is_some());
    assert!(a["federated_cosine"].as_f64().unwrap() > a["initial_cosine"].as_f64().unwrap());
    let svg = std::fs::read_to_string(dir.path().join("a/rounds.svg")).unwrap();
    assert!(svg.contains("federated") && svg.contains("central"));
    // The same recipe again: the same table.
    let b = run("b");
    for key in [
        "rounds",
        "clients",
        "initial_cosine",
        "central_cosine",
        "best_alone_cosine",
    ] {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(rows) = v.as_array_mut() {
                for r in rows {
                    r.as_object_mut().map(|o| o.remove("seconds"));
                }
            }
            v
        };
        assert_eq!(strip(&a[key]), strip(&b[key]), "{key}");
    }
}

#[test]
fn a_round_that_would_make_a_non_finite_global_is_refused_naming_the_tensor() {
    let fed = Fed::new();
    let ups = fed.path("big");
    run_py(
        "fed_ref.py",
        &[Path::new("overflow"), &fed.path("v0"), &ups],
    );
    let out = aggregate(
        &fed,
        &[ups.join("big.safetensors")],
        "v1",
        &["--server-lr", "10"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("of the new version would hold inf"), "{err}");
    assert!(!fed.path("v1").exists());
    let leftovers: Vec<_> = std::fs::read_dir(fed.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
