//! `publish`, `pull`, `build --matrix/--cache`, `index merge`, against a
//! real CNCF Distribution registry (Debian `docker-registry`) and read back
//! with an independent client (`skopeo`). Faults a real registry will not
//! produce on demand (5xx mid-upload, hostile documents) come from a small
//! scripted HTTP server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

const USER: &str = "forge";
const PASSWORD: &str = "forge-test-pass";
/// bcrypt of PASSWORD (Distribution's htpasswd accepts bcrypt only).
const HTPASSWD: &str = "forge:$2b$05$aCiWAtZtcwW565zvVCIA7OcGgJDYjrSLhQbYdXv2ISva3ifTkAd1a\n";

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` not found: install it with `apt-get install docker-registry skopeo` (.ci/run does)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// A Distribution registry on 127.0.0.1 with its own storage folder.
struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Registry {
    fn start(with_auth: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if with_auth {
            std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: edgeforge-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new(tool("docker-registry"))
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(port);
        Self { child, dir, port }
    }

    fn repo(&self, name: &str) -> String {
        format!("127.0.0.1:{}/{name}", self.port)
    }

    /// The file the registry stores a blob in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Exactly one `error:` line, and it is the last (retry warnings may precede it).
fn one_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert_eq!(text.trim_end().lines().last(), Some(errors[0]), "{text}");
    errors[0].to_string()
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("EDGEFORGE_REGISTRY_RETRY_MS", "10")
        .env_remove("EDGEFORGE_REGISTRY_USERNAME")
        .env_remove("EDGEFORGE_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap()
}

fn ok_json(cmd: &mut Command) -> Value {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn recipe(dir: &Path, targets: &[&str]) -> PathBuf {
    let path = dir.join("release.toml");
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "[build]\nname = \"minilm\"\nversion = \"2.0.0+ci.1\"\nmodel = \"{}\"\nformat = \"auto\"\ntargets = [{}]\n",
            minilm().display(),
            list.join(", ")
        ),
    )
    .unwrap();
    path
}

const TARGETS: [&str; 3] = ["coral-dev-board", "rpi-zero-2w", "rpi5-8gb"];

/// One build of three MiniLM variants (int8 safetensors for the Coral's TPU,
/// GGUF for the Pis), shared by the tests: (work dir, recipe, dist).
fn built() -> &'static (PathBuf, PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let work = tempfile::tempdir().unwrap().keep();
        let recipe = recipe(&work, &TARGETS);
        let dist = work.join("dist");
        let out = edgeforge()
            .args(["-q", "build"])
            .arg(&recipe)
            .arg("--dist")
            .arg(&dist)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (work, recipe, dist)
    })
}

fn version_dir() -> PathBuf {
    built().2.join("minilm/2.0.0+ci.1")
}

fn manifest_files(artifact: &Path) -> Vec<(String, String)> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(artifact.join("manifest.json")).unwrap()).unwrap();
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().into(),
                f["sha256"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn oci_layout_is_reproducible_and_skopeo_reads_it() {
    let work = tempfile::tempdir().unwrap();
    let publish = |dir: &Path| {
        ok_json(
            edgeforge()
                .args(["--json", "publish"])
                .arg(version_dir())
                .arg("--oci-layout")
                .arg(dir),
        )
    };
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let first = publish(&a);
    publish(&b);
    assert_eq!(first["outcome"]["tag"], "2.0.0_ci.1");
    // Same release, same bytes: index.json and every blob.
    assert_eq!(
        std::fs::read(a.join("index.json")).unwrap(),
        std::fs::read(b.join("index.json")).unwrap()
    );
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&a), names(&b));
    for name in names(&a) {
        assert_eq!(
            sha256_hex(&std::fs::read(a.join("blobs/sha256").join(&name)).unwrap()),
            name
        );
    }
    // Publishing again is a no-op.
    assert_eq!(publish(&a)["outcome"]["unchanged"], true);

    // skopeo reads the version's index from the layout, byte for byte.
    let raw = Command::new(tool("skopeo"))
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:2.0.0_ci.1", a.display()))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let index_digest = first["outcome"]["index_digest"].as_str().unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&raw.stdout)), index_digest);
    let index: Value = serde_json::from_slice(&raw.stdout).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    // Each entry's annotations name its target and artifact; its manifest's
    // layers are the artifact's files with the manifest's own digests.
    for (entry, target) in entries.iter().zip(TARGETS) {
        let ann = &entry["annotations"];
        assert_eq!(ann["dev.edgeforge.target"], target);
        let artifact = version_dir().join(target);
        let id = sha256_hex(&std::fs::read(artifact.join("manifest.json")).unwrap());
        assert_eq!(ann["dev.edgeforge.artifact-id"], id.as_str());
        let digest = entry["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let m: Value =
            serde_json::from_slice(&std::fs::read(a.join("blobs/sha256").join(digest)).unwrap())
                .unwrap();
        assert_eq!(m["config"]["digest"], format!("sha256:{id}"));
        let layers: Vec<(String, String)> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["annotations"]["org.opencontainers.image.title"]
                        .as_str()
                        .unwrap()
                        .into(),
                    l["digest"]
                        .as_str()
                        .unwrap()
                        .strip_prefix("sha256:")
                        .unwrap()
                        .into(),
                )
            })
            .collect();
        assert_eq!(layers, manifest_files(&artifact));
    }
}

#[test]
fn push_pull_round_trip_read_back_by_skopeo() {
    let reg = Registry::start(false);
    let repo = reg.repo("models/minilm");
    let publish = |to: &str| {
        ok_json(
            edgeforge()
                .args(["--json", "publish"])
                .arg(version_dir())
                .args(["--plain-http", "--to", to]),
        )["outcome"]
            .clone()
    };
    let first = publish(&repo);
    assert!(first["blobs_uploaded"].as_u64().unwrap() >= 6, "{first}");
    assert_eq!(first["blobs_present"], 0);
    assert_eq!(first["reference"], format!("{repo}:2.0.0_ci.1"));
    // The same release again: nothing sent; under a second tag: no blob uploaded.
    assert_eq!(publish(&repo)["unchanged"], true);
    let again = publish(&format!("{repo}:stable"));
    assert_eq!(again["blobs_uploaded"], 0, "{again}");
    assert_eq!(again["blobs_present"], first["blobs_uploaded"]);

    // skopeo, an independent client, reads the index we pushed...
    let raw = Command::new(tool("skopeo"))
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{repo}:2.0.0_ci.1"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw.stdout)),
        first["index_digest"].as_str().unwrap()
    );
    let index: Value = serde_json::from_slice(&raw.stdout).unwrap();
    let coral = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["annotations"]["dev.edgeforge.target"] == "coral-dev-board")
        .unwrap();
    // ...and copies one variant into a local OCI layout whose blobs hash to our manifest.
    let copy = tempfile::tempdir().unwrap();
    let out = Command::new(tool("skopeo"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!(
            "docker://{repo}@{}",
            coral["digest"].as_str().unwrap()
        ))
        .arg(format!("oci:{}:coral", copy.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (_, sha) in manifest_files(&version_dir().join("coral-dev-board")) {
        let blob = std::fs::read(copy.path().join("blobs/sha256").join(&sha)).unwrap();
        assert_eq!(sha256_hex(&blob), sha);
    }

    // pull --ram-mb picks what `select` picks on the same dist, for several devices.
    let pulls = tempfile::tempdir().unwrap();
    for (ram, accel) in [(64, None), (512, None), (8192, None), (8192, Some("tpu"))] {
        let mut select = edgeforge();
        select
            .args(["--json", "select", "--index"])
            .arg(built().2.join("index.json"));
        select.args(["--ram-mb", &ram.to_string()]);
        let mut pull = edgeforge();
        pull.args([
            "--json",
            "pull",
            &format!("{repo}:2.0.0_ci.1"),
            "--plain-http",
        ]);
        pull.args(["--ram-mb", &ram.to_string()]);
        if let Some(a) = accel {
            select.args(["--accelerator", a]);
            pull.args(["--accelerator", a]);
        }
        let dir = pulls.path().join(format!("{ram}-{accel:?}"));
        pull.arg("--out").arg(&dir);
        let chosen = run(&mut select);
        let pulled = run(&mut pull);
        assert_eq!(
            chosen.status.code(),
            pulled.status.code(),
            "{}",
            String::from_utf8_lossy(&pulled.stderr)
        );
        if !chosen.status.success() {
            assert!(!dir.exists());
            continue;
        }
        let chosen: Value = serde_json::from_slice(&chosen.stdout).unwrap();
        let pulled: Value = serde_json::from_slice(&pulled.stdout).unwrap();
        assert_eq!(
            pulled["outcome"]["variant"]["target"],
            chosen["selected"]["target"]
        );
        assert_eq!(pulled["outcome"]["variant"]["id"], chosen["selected"]["id"]);
        // The pulled folder is the artifact: verify passes on it.
        let verify = run(edgeforge().args(["--json", "verify"]).arg(&dir));
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    // --target, and a second pull into the same folder is a no-op.
    let dir = pulls.path().join("pi");
    let pull = || {
        ok_json(
            edgeforge()
                .args([
                    "--json",
                    "pull",
                    &format!("{repo}:stable"),
                    "--plain-http",
                    "--target",
                    "rpi-zero-2w",
                    "--out",
                ])
                .arg(&dir),
        )
    };
    assert_eq!(pull()["outcome"]["unchanged"], false);
    assert_eq!(pull()["outcome"]["unchanged"], true);

    // A blob corrupted in the registry's storage: pull fails and leaves nothing.
    let (_, sha) = manifest_files(&version_dir().join("rpi5-8gb"))
        .into_iter()
        .find(|(p, _)| p.ends_with(".gguf"))
        .unwrap();
    let blob = reg.blob_file(&format!("sha256:{sha}"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    let target_dir = pulls.path().join("tampered");
    let out = run(edgeforge()
        .args([
            "pull",
            &format!("{repo}:2.0.0_ci.1"),
            "--plain-http",
            "--target",
            "rpi5-8gb",
            "--out",
        ])
        .arg(&target_dir));
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(err.contains("tampered"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("retrying"),
        "a tampered blob is not retried"
    );
    assert!(!target_dir.exists());
    let leftovers: Vec<_> = std::fs::read_dir(pulls.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn registry_with_basic_auth_needs_credentials_and_tags_are_not_moved_silently() {
    let reg = Registry::start(true);
    let repo = reg.repo("fleet/minilm");
    let publish = |creds: bool, extra: &[&str]| {
        let mut cmd = edgeforge();
        cmd.args(["--json", "publish"])
            .arg(version_dir())
            .args(["--plain-http", "--to", &repo]);
        cmd.args(extra);
        let mut out = cmd;
        out.env("EDGEFORGE_REGISTRY_RETRY_MS", "10")
            .env("DOCKER_CONFIG", "/nonexistent");
        if creds {
            out.env("EDGEFORGE_REGISTRY_USERNAME", USER)
                .env("EDGEFORGE_REGISTRY_PASSWORD", PASSWORD);
        } else {
            out.env_remove("EDGEFORGE_REGISTRY_USERNAME")
                .env_remove("EDGEFORGE_REGISTRY_PASSWORD");
        }
        out.output().unwrap()
    };
    let denied = publish(false, &[]);
    assert_eq!(denied.status.code(), Some(2));
    let err = one_error_line(&denied.stderr);
    assert!(err.contains("401"), "{err}");
    let ok = publish(true, &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Credentials from a Docker config.json, as `docker login` writes them.
    let docker = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            "{{\"auths\":{{\"127.0.0.1:{}\":{{\"auth\":\"{auth}\"}}}}}}",
            reg.port
        ),
    )
    .unwrap();
    let pulled = tempfile::tempdir().unwrap();
    let out = edgeforge()
        .args([
            "--json",
            "pull",
            &format!("{repo}:2.0.0_ci.1"),
            "--plain-http",
            "--target",
            "coral-dev-board",
            "--out",
        ])
        .arg(pulled.path().join("coral"))
        .env("DOCKER_CONFIG", docker.path())
        .env_remove("EDGEFORGE_REGISTRY_USERNAME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another release under the same tag is refused, then moved with --force.
    let other = tempfile::tempdir().unwrap();
    let version = other.path().join("minilm/2.0.0+ci.1");
    std::fs::create_dir_all(&version).unwrap();
    copy_dir(
        &version_dir().join("coral-dev-board"),
        &version.join("coral-dev-board"),
    );
    let publish_other = |force: bool| {
        let mut cmd = edgeforge();
        cmd.args(["--json", "publish"])
            .arg(&version)
            .args(["--plain-http", "--to", &repo]);
        if force {
            cmd.arg("--force");
        }
        cmd.env("EDGEFORGE_REGISTRY_USERNAME", USER)
            .env("EDGEFORGE_REGISTRY_PASSWORD", PASSWORD)
            .env("DOCKER_CONFIG", "/nonexistent")
            .output()
            .unwrap()
    };
    let refused = publish_other(false);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    let moved = publish_other(true);
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A scripted HTTP/1.1 server: `respond` answers each request
/// (method, path) with (status, headers, body).
type Respond = dyn Fn(&str, &str) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync;

struct Scripted {
    port: u16,
}

impl Scripted {
    fn start(respond: Arc<Respond>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let respond = respond.clone();
                std::thread::spawn(move || serve(stream, &*respond));
            }
        });
        Self { port }
    }
}

fn serve(stream: TcpStream, respond: &Respond) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        // Drain the body: Content-Length or chunked.
        if let Some(n) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut body = vec![0; n];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
            }
        }
        let (status, extra, body) = respond(&method, &path);
        // `X-Cut: n` announces the whole body, sends n bytes and hangs up.
        let cut = extra
            .iter()
            .find(|(k, _)| k == "X-Cut")
            .map(|(_, v)| v.parse::<usize>().unwrap());
        let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in extra.iter().filter(|(k, _)| k != "X-Cut") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method == "HEAD" {
            continue;
        }
        if let Some(n) = cut {
            let _ = writer.write_all(&body[..n]);
            return;
        }
        if writer.write_all(&body).is_err() {
            return;
        }
    }
}

/// A registry that takes everything but answers blob uploads with 503 the
/// first `failures` times.
fn flaky_registry(failures: usize, puts: Arc<AtomicUsize>) -> Scripted {
    Scripted::start(Arc::new(move |method, path| {
        let path = path.split('?').next().unwrap_or("");
        match method {
            "GET" if path == "/v2/" => (200, vec![], b"{}".to_vec()),
            "HEAD" | "GET" => (404, vec![], Vec::new()),
            "POST" => (
                202,
                vec![("Location".into(), "/v2/m/blobs/uploads/u1".into())],
                Vec::new(),
            ),
            "PUT" if path.contains("/blobs/uploads/") => {
                if puts.fetch_add(1, Ordering::SeqCst) < failures {
                    (503, vec![], b"busy".to_vec())
                } else {
                    (
                        201,
                        vec![("Location".into(), "/v2/m/blobs/x".into())],
                        Vec::new(),
                    )
                }
            }
            "PUT" => (201, vec![("Location".into(), path.to_string())], Vec::new()),
            _ => (405, vec![], Vec::new()),
        }
    }))
}

#[test]
fn server_errors_are_retried_with_backoff_then_reported_in_one_line() {
    let publish = |port: u16| {
        run(edgeforge()
            .args(["--json", "publish"])
            .arg(version_dir())
            .args(["--plain-http", "--to", &format!("127.0.0.1:{port}/m:v1")]))
    };
    // Two 503s mid-upload: retried, the push completes.
    let puts = Arc::new(AtomicUsize::new(0));
    let flaky = flaky_registry(2, puts.clone());
    let out = publish(flaky.port);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uploaded = serde_json::from_slice::<Value>(&out.stdout).unwrap()["outcome"]
        ["blobs_uploaded"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(puts.load(Ordering::SeqCst), uploaded + 2);
    // Always 503: four attempts, then exit 2 with one line.
    let puts = Arc::new(AtomicUsize::new(0));
    let down = flaky_registry(usize::MAX, puts.clone());
    let out = publish(down.port);
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(
        err.contains("503") && err.contains("after 4 attempts"),
        "{err}"
    );
    assert_eq!(puts.load(Ordering::SeqCst), 4);
    // Nobody listening.
    let out = publish(free_port());
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn hostile_or_missing_documents_leave_nothing() {
    let big = vec![b' '; 5 << 20];
    let escape = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.edgeforge.artifact.v1","config":{"mediaType":"application/vnd.edgeforge.artifact.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1,"annotations":{"org.opencontainers.image.title":"../../escape"}}],"annotations":{}}"#.to_vec();
    let server = Scripted::start(Arc::new(move |_method, path| {
        let ct = |t: &str| vec![("Content-Type".to_string(), t.to_string())];
        if path == "/v2/" {
            (200, vec![], b"{}".to_vec())
        } else if path.ends_with("/manifests/huge") {
            (
                200,
                ct("application/vnd.oci.image.index.v1+json"),
                big.clone(),
            )
        } else if path.ends_with("/manifests/escape") {
            (
                200,
                ct("application/vnd.oci.image.manifest.v1+json"),
                escape.clone(),
            )
        } else if path.ends_with("/manifests/garbage") {
            (
                200,
                ct("application/vnd.oci.image.index.v1+json"),
                b"{\"schemaVersion\":2,".to_vec(),
            )
        } else {
            (404, vec![], Vec::new())
        }
    }));
    let work = tempfile::tempdir().unwrap();
    for (tag, expect) in [
        ("huge", "more than 4194304 bytes"),
        ("escape", "not a safe relative file path"),
        ("garbage", "malformed"),
        ("missing", "not found"),
    ] {
        let out_dir = work.path().join(tag);
        let out = run(edgeforge()
            .args([
                "pull",
                &format!("127.0.0.1:{}/m:{tag}", server.port),
                "--plain-http",
                "--target",
                "x",
                "--out",
            ])
            .arg(&out_dir));
        assert_eq!(out.status.code(), Some(2), "{tag}");
        let err = one_error_line(&out.stderr);
        assert!(err.contains(expect), "{tag}: {err}");
        assert!(!out_dir.exists());
    }
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[test]
fn matrix_jobs_merge_into_the_index_of_one_build_and_the_registry_is_a_cache() {
    let (_, recipe, dist) = built();
    let out = run(edgeforge().arg("build").arg(recipe).arg("--matrix"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim().lines().count(),
        1,
        "one line for a CI step output"
    );
    let matrix: Value = serde_json::from_str(&text).unwrap();
    let jobs = matrix["include"].as_array().unwrap();
    let targets: Vec<&str> = jobs.iter().map(|j| j["target"].as_str().unwrap()).collect();
    assert_eq!(targets, TARGETS);
    let gitlab: Value = serde_json::from_slice(
        &run(edgeforge()
            .arg("build")
            .arg(recipe)
            .args(["--matrix", "gitlab"]))
        .stdout,
    )
    .unwrap();
    assert_eq!(gitlab["parallel"]["matrix"][0]["TARGET"], TARGETS[0]);
    assert_eq!(gitlab["parallel"]["matrix"][0]["INPUTS"], jobs[0]["inputs"]);

    // Each job builds its target into its own dist; merging in any order
    // gives the index of the one build.
    let work = tempfile::tempdir().unwrap();
    let mut parts = Vec::new();
    for job in jobs.iter().rev() {
        let job_dist = work.path().join(job["target"].as_str().unwrap());
        let out = run(edgeforge()
            .args(["-q", "build"])
            .arg(recipe)
            .args(["--targets", job["target"].as_str().unwrap(), "--dist"])
            .arg(&job_dist));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parts.push(job_dist.join("index.json"));
    }
    let merged = work.path().join("index.json");
    let out = run(edgeforge()
        .args(["-q", "index", "merge"])
        .args(&parts)
        .arg("--out")
        .arg(&merged));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(dist.join("index.json")).unwrap()
    );

    // The registry as a shared cache: after one publish, a fresh build with
    // --cache builds nothing and ends with the same artifacts.
    let reg = Registry::start(false);
    let repo = reg.repo("cache/minilm");
    let pushed = ok_json(
        edgeforge()
            .args(["--json", "publish"])
            .arg(version_dir())
            .args(["--plain-http", "--to", &repo]),
    );
    assert!(pushed["outcome"]["blobs_uploaded"].as_u64().unwrap() > 0);
    let fresh = work.path().join("fresh");
    let v = ok_json(
        edgeforge()
            .args(["--json", "build"])
            .arg(recipe)
            .args(["--plain-http", "--cache", &repo, "--dist"])
            .arg(&fresh),
    );
    // The Coral's Edge TPU variant needs int8 calibration this recipe does
    // not give: listed as unsupported, never built.
    for o in v["outcomes"].as_array().unwrap() {
        let expected = if o["target"] == "coral-dev-board.tflite-edgetpu" {
            "unsupported"
        } else {
            "cached"
        };
        assert_eq!(o["status"], expected, "{o}");
    }
    assert_eq!(
        std::fs::read(fresh.join("index.json")).unwrap(),
        std::fs::read(dist.join("index.json")).unwrap()
    );
    // The matrix's inputs hash is what the published variant records.
    let raw = Command::new(tool("skopeo"))
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!(
            "docker://{repo}:inputs-{}",
            jobs[0]["inputs"].as_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let m: Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(m["annotations"]["dev.edgeforge.target"], TARGETS[0]);
}

/// A read-only registry serving an OCI image layout; GETs of the blob
/// `cut_digest` are cut short the first `cuts` times.
fn layout_registry(layout: PathBuf, cut_digest: String, cuts: usize) -> Scripted {
    let served = AtomicUsize::new(0);
    Scripted::start(Arc::new(move |_method, path| {
        let blob = |digest: &str| {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            std::fs::read(layout.join("blobs/sha256").join(hex)).ok()
        };
        let found = |body: Vec<u8>, extra: Vec<(String, String)>| (200, extra, body);
        if path == "/v2/" {
            return (200, vec![], b"{}".to_vec());
        }
        if let Some(reference) = path.split("/manifests/").nth(1) {
            let digest =
                if reference.starts_with("sha256:") {
                    reference.to_string()
                } else {
                    let top: Value =
                        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap())
                            .unwrap();
                    match top["manifests"].as_array().unwrap().iter().find(|d| {
                        d["annotations"]["org.opencontainers.image.ref.name"] == reference
                    }) {
                        Some(d) => d["digest"].as_str().unwrap().to_string(),
                        None => return (404, vec![], Vec::new()),
                    }
                };
            let body = blob(&digest).unwrap();
            let media = serde_json::from_slice::<Value>(&body).unwrap()["mediaType"]
                .as_str()
                .unwrap()
                .to_string();
            return found(
                body,
                vec![
                    ("Content-Type".into(), media),
                    ("Docker-Content-Digest".into(), digest),
                ],
            );
        }
        if let Some(digest) = path.split("/blobs/").nth(1) {
            let Some(body) = blob(digest) else {
                return (404, vec![], Vec::new());
            };
            if digest == cut_digest && served.fetch_add(1, Ordering::SeqCst) < cuts {
                let half = (body.len() / 2).to_string();
                return found(body, vec![("X-Cut".into(), half)]);
            }
            return found(body, vec![]);
        }
        (404, vec![], Vec::new())
    }))
}

#[test]
fn interrupted_downloads_are_retried_and_never_leave_half_an_artifact() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    ok_json(
        edgeforge()
            .args(["--json", "publish"])
            .arg(version_dir())
            .arg("--oci-layout")
            .arg(&layout),
    );
    let (_, sha) = manifest_files(&version_dir().join("rpi5-8gb"))
        .into_iter()
        .find(|(p, _)| p.ends_with(".gguf"))
        .unwrap();
    let pull = |server: &Scripted, out: &Path| {
        run(edgeforge()
            .args([
                "--json",
                "pull",
                &format!("127.0.0.1:{}/m:2.0.0_ci.1", server.port),
                "--plain-http",
                "--target",
                "rpi5-8gb",
                "--out",
            ])
            .arg(out))
    };
    // Cut once: the retry completes the pull.
    let once = layout_registry(layout.clone(), format!("sha256:{sha}"), 1);
    let out_dir = work.path().join("once");
    let out = pull(&once, &out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("retrying"));
    assert_eq!(
        manifest_files(&out_dir),
        manifest_files(&version_dir().join("rpi5-8gb"))
    );
    // Cut every time: exit 2 after the retries, and no folder, no temp folder.
    let always = layout_registry(layout.clone(), format!("sha256:{sha}"), usize::MAX);
    let out_dir = work.path().join("always");
    let out = pull(&always, &out_dir);
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(err.contains("after 4 attempts"), "{err}");
    assert!(!out_dir.exists());
    let mut left: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["oci", "once"]);
}
