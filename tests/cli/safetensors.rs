//! safetensors on the real MiniLM checkpoint: hostile mutations of it never
//! panic, and the CLI turns them into one-line errors with exit code 2.

use std::path::Path;

use edgeforge::format::safetensors::SafetensorsFile;

use crate::common::*;

/// A small deterministic generator (xorshift64*): no dependency, same cases
/// on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Runs `parse` under catch_unwind and names the case that panicked.
pub fn must_not_panic<T>(case: &str, parse: impl FnOnce() -> T + std::panic::UnwindSafe) {
    if std::panic::catch_unwind(parse).is_err() {
        panic!("parser panicked on {case}");
    }
}

#[test]
fn minilm_cut_at_200_points_and_200_flipped_bytes_never_panics() {
    let path = minilm().join("model.safetensors");
    let original = std::fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let name = Path::new("model.safetensors");
    let mut rng = Rng(0x5AFE_7E45);

    // Cuts: half inside the header (where parsing decisions are), half anywhere.
    let mut cuts: Vec<usize> = (0..fuzz_cases())
        .map(|i| {
            if i % 2 == 0 {
                rng.below(header_end + 16)
            } else {
                rng.below(original.len())
            }
        })
        .collect();
    cuts.sort_unstable_by(|a, b| b.cmp(a));
    let mut buf = original.clone();
    let mut errors = 0;
    for cut in cuts {
        buf.truncate(cut);
        let view = buf.as_slice();
        must_not_panic(&format!("cut at {cut}"), || {
            let result = SafetensorsFile::validate(name, view);
            assert!(result.is_err(), "a cut file at {cut} must not validate");
        });
        errors += 1;
    }
    assert_eq!(errors, fuzz_cases());

    // Flips: in the length prefix and the JSON header, where bytes mean structure.
    let mut buf = original;
    for _ in 0..fuzz_cases() {
        let at = rng.below(header_end);
        let old = buf[at];
        buf[at] ^= 1 << rng.below(8);
        let view = buf.as_slice();
        must_not_panic(&format!("flip at {at}"), || {
            let _ = SafetensorsFile::validate(name, view);
        });
        buf[at] = old;
    }
}

#[test]
fn truncated_checkpoint_is_a_one_line_error_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(minilm().join("model.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &src[..src.len() / 2]).unwrap();
    let out = edgeforge().arg("inspect").arg(&cut).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cut.safetensors") && stderr.contains("truncated or trailing bytes"),
        "{stderr}"
    );
}

#[test]
fn header_length_beyond_the_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("huge.safetensors");
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&bad, bytes).unwrap();
    edgeforge()
        .arg("inspect")
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
        "huge.safetensors: Header length 18446744073709551615 is larger than the 2 bytes after it",
    ));
}

#[test]
fn sharded_checkpoint_inspects_as_one_model() {
    use edgeforge::format::atomic::Overwrite;
    use edgeforge::format::safetensors::{Dtype, SafetensorsStream, TensorSpec};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let shard = |file: &str, name: &str, rows: usize| {
        let spec = TensorSpec {
            name: name.into(),
            dtype: Dtype::BF16,
            shape: vec![rows, 8],
        };
        let mut w = SafetensorsStream::create(
            &dir.path().join(file),
            &[spec],
            &BTreeMap::new(),
            Overwrite::Deny,
        )
        .unwrap();
        w.write_tensor(&vec![0u8; rows * 8 * 2]).unwrap();
        w.finish().unwrap();
    };
    shard(
        "model-00001-of-00002.safetensors",
        "model.embed_tokens.weight",
        16,
    );
    shard(
        "model-00002-of-00002.safetensors",
        "model.layers.0.mlp.up_proj.weight",
        4,
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"model.embed_tokens.weight":"model-00001-of-00002.safetensors",
            "model.layers.0.mlp.up_proj.weight":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let out = edgeforge()
        .arg("inspect")
        .arg(dir.path())
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["parameters"], 160);
    assert_eq!(v["by_dtype"]["BF16"]["tensors"], 2);
    assert_eq!(v["by_role"]["embedding"]["elements"], 128);

    // An index naming a tensor its shard does not hold is an input error.
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map":{"ghost.weight":"model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    edgeforge()
        .arg("inspect")
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("maps tensor `ghost.weight` to shard `model-00001-of-00002.safetensors`, which does not hold it"));
}
