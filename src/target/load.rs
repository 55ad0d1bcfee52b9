//! Finding, reading, merging (`extends`) and strictly deserializing profiles.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::schema::TargetSpec;
use super::{builtin, validate, Target};

/// A profile problem: `file:line: key: message`, on one line.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{}:{line}: {key}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("Unknown target `{name}` (known: {known})")]
    Unknown { name: String, known: String },
}

/// One profile file's text and where it came from.
#[derive(Debug, Clone)]
struct SourceFile {
    /// Display path (a real path, or `builtin:targets/<rel>`).
    path: PathBuf,
    text: String,
    /// Whether this is a compiled-in file (parents resolve inside the set).
    builtin: Option<String>,
}

impl SourceFile {
    fn read(path: &Path) -> Result<Self, TargetError> {
        let text = crate::guard::read_text(path, crate::guard::Cap::TOML).map_err(|e| {
            TargetError::File {
                file: path.to_path_buf(),
                message: format!("Cannot read: {}", e.message),
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
            builtin: None,
        })
    }

    fn builtin(rel: &str) -> Option<Self> {
        builtin::FILES
            .iter()
            .find(|(p, _)| *p == rel)
            .map(|(p, text)| Self {
                path: PathBuf::from(format!("builtin:targets/{p}")),
                text: (*text).to_string(),
                builtin: Some((*p).to_string()),
            })
    }

    fn parent(&self, extends: &str) -> Result<SourceFile, TargetError> {
        match &self.builtin {
            Some(rel) => {
                let dir = Path::new(rel).parent().unwrap_or(Path::new(""));
                let joined = normalize(&dir.join(extends));
                SourceFile::builtin(&joined).ok_or_else(|| {
                    self.invalid_at("extends", format!("No built-in profile `{joined}`"))
                })
            }
            None => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                let parent = dir.join(extends);
                if !parent.is_file() {
                    return Err(self.invalid_at(
                        "extends",
                        format!("Parent profile {} does not exist", parent.display()),
                    ));
                }
                SourceFile::read(&parent)
            }
        }
    }

    fn invalid_at(&self, key: &str, message: String) -> TargetError {
        TargetError::Invalid {
            file: self.path.clone(),
            line: locate(&self.text, key).unwrap_or(1),
            key: key.into(),
            message,
        }
    }
}

/// `a/./b/../c` -> `a/c` for built-in relative paths.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.iter().filter_map(|c| c.to_str()) {
        match c {
            "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Loads and validates one profile file (resolving `extends`).
pub fn load_file(path: &Path) -> Result<Target, TargetError> {
    resolve(SourceFile::read(path)?)
}

/// A profile from its text, `path` naming it in errors (parents named by
/// `extends` are read relative to it).
pub fn from_text(path: &Path, text: &str) -> Result<Target, TargetError> {
    resolve(SourceFile {
        path: path.to_path_buf(),
        text: text.to_string(),
        builtin: None,
    })
}

/// Finds a target by name or path: a path to a `.toml` file; else the name
/// in `dir` (or `./targets` when it exists), else among the built-in profiles.
pub fn load(name_or_path: &str, dir: Option<&Path>) -> Result<Target, TargetError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.ends_with(".toml") || as_path.is_file() {
        return load_file(as_path);
    }
    let all = load_all(dir)?;
    let known: Vec<String> = all.iter().map(|t| t.spec.name.clone()).collect();
    all.into_iter()
        .find(|t| t.spec.name == name_or_path)
        .ok_or_else(|| TargetError::Unknown {
            name: name_or_path.to_string(),
            known: known.join(", "),
        })
}

/// The targets `names` (names or `.toml` paths), or every target when
/// `names` is empty: what a `--target T ...` flag selects.
pub fn load_named(names: &[String], dir: Option<&Path>) -> Result<Vec<Target>, TargetError> {
    if names.is_empty() {
        return load_all(dir);
    }
    names.iter().map(|n| load(n, dir)).collect()
}

/// Every target in `dir` (or `./targets`, or the built-in set), sorted by
/// name; files under `base/` are parents only. Duplicate names are errors.
pub fn load_all(dir: Option<&Path>) -> Result<Vec<Target>, TargetError> {
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from("targets")).filter(|d| d.is_dir()));
    let sources: Vec<SourceFile> = match &dir {
        Some(dir) => {
            let entries = std::fs::read_dir(dir).map_err(|e| TargetError::File {
                file: dir.clone(),
                message: format!("Cannot list: {e}"),
            })?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            paths
                .iter()
                .map(|p| SourceFile::read(p))
                .collect::<Result<_, _>>()?
        }
        None => builtin::FILES
            .iter()
            .filter(|(p, _)| !p.starts_with("base/"))
            .filter_map(|(p, _)| SourceFile::builtin(p))
            .collect(),
    };
    let mut targets: Vec<Target> = Vec::with_capacity(sources.len());
    for source in sources {
        let path = source.path.clone();
        let target = resolve(source)?;
        if let Some(other) = targets.iter().find(|t| t.spec.name == target.spec.name) {
            return Err(TargetError::Invalid {
                file: path,
                line: 1,
                key: "name".into(),
                message: format!(
                    "Target name `{}` is also used by {}",
                    target.spec.name,
                    other.source.display()
                ),
            });
        }
        targets.push(target);
    }
    targets.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(targets)
}

/// Most parents a chain may have (cycles are caught before this).
const MAX_EXTENDS_DEPTH: usize = 8;

fn resolve(leaf: SourceFile) -> Result<Target, TargetError> {
    // The chain from the leaf up to the root ancestor.
    let mut chain: Vec<(SourceFile, toml::Table)> = Vec::new();
    let mut current = leaf;
    loop {
        let table: toml::Table = toml::from_str(&current.text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(&current.text, s.start));
            let message = e.message().trim().to_string();
            TargetError::Invalid {
                file: current.path.clone(),
                line,
                key: "(syntax)".into(),
                message,
            }
        })?;
        let extends = match table.get("extends") {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(current.invalid_at("extends", "Must be a string path".into())),
        };
        let parent = extends.as_deref().map(|e| current.parent(e)).transpose()?;
        chain.push((current, table));
        let Some(parent) = parent else { break };
        if chain.iter().any(|(f, _)| f.path == parent.path) {
            let (leaf, _) = &chain[chain.len() - 1];
            return Err(leaf.invalid_at(
                "extends",
                format!("`extends` cycle through {}", parent.path.display()),
            ));
        }
        if chain.len() > MAX_EXTENDS_DEPTH {
            return Err(chain[0].0.invalid_at(
                "extends",
                format!("More than {MAX_EXTENDS_DEPTH} levels of `extends`"),
            ));
        }
        current = parent;
    }
    // Merge from the root ancestor down: children override parents.
    let mut merged = toml::Table::new();
    for (_, table) in chain.iter().rev() {
        deep_merge(&mut merged, table.clone());
    }
    merged.remove("extends");
    let files: Vec<&SourceFile> = chain.iter().map(|(f, _)| f).collect();
    let spec: TargetSpec = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| serde_error(&files, &e))?;
    validate::check(&spec).map_err(|(key, message)| located(&files, &key, message))?;
    let canonical = toml::to_string(&spec).expect("a validated profile serializes");
    let sha256 = hex::encode(Sha256::digest(canonical.as_bytes()));
    Ok(Target {
        spec,
        source: files[0].path.clone(),
        sha256,
    })
}

fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            // Arrays of named tables (`[[runtimes]]`, `[[accelerators]]`): the
            // child adds entries and replaces same-named ones, so a phone
            // profile can add its NPU runtime and keep the parent's llama.cpp.
            (Some(toml::Value::Array(b)), toml::Value::Array(o))
                if named_tables(b) && named_tables(&o) =>
            {
                for entry in o {
                    let name = entry.get("name").cloned();
                    match b.iter_mut().find(|e| e.get("name") == name.as_ref()) {
                        Some(slot) => *slot = entry,
                        None => b.push(entry),
                    }
                }
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn named_tables(a: &[toml::Value]) -> bool {
    a.iter()
        .all(|v| v.as_table().is_some_and(|t| t.contains_key("name")))
}

/// Turns serde's "message\nin `a.b`" into a located one-line error.
fn serde_error(files: &[&SourceFile], e: &toml::de::Error) -> TargetError {
    let text = e.to_string();
    let mut lines = text.trim().lines();
    let message = lines.next().unwrap_or("invalid profile").to_string();
    let path = lines
        .find_map(|l| l.strip_prefix("in `").and_then(|l| l.strip_suffix('`')))
        .unwrap_or("");
    let field = message.split('`').nth(1).unwrap_or("");
    let key = if message.starts_with("unknown field") || message.starts_with("missing field") {
        if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    } else {
        path.to_string()
    };
    let message = capitalize(&message);
    if text.starts_with("missing field") {
        // A missing key has no line of its own: point at its table's header.
        let table = key.rsplit_once('.').map_or("", |(t, _)| t);
        let line = if table.is_empty() {
            Some(1)
        } else {
            locate(&files[0].text, table)
        };
        return TargetError::Invalid {
            file: files[0].path.clone(),
            line: line.unwrap_or(1),
            key,
            message,
        };
    }
    located(files, &key, message)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

/// The file (leaf first, then its parents) and line that set `key`.
fn located(files: &[&SourceFile], key: &str, message: String) -> TargetError {
    for f in files {
        if let Some(line) = locate(&f.text, key) {
            return TargetError::Invalid {
                file: f.path.clone(),
                line,
                key: key.into(),
                message,
            };
        }
    }
    TargetError::Invalid {
        file: files[0].path.clone(),
        line: 1,
        key: key.into(),
        message,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line that defines dotted `key` (array indices ignored): a `[table]`
/// header for a table, or `name = ...` inside the right table.
fn locate(text: &str, key: &str) -> Option<usize> {
    let key: String = key
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .collect::<Vec<_>>()
        .join(".");
    let (table, leaf) = key
        .rsplit_once('.')
        .map_or(("", key.as_str()), |(t, l)| (t, l));
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if current == key {
                return Some(i + 1);
            }
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        if current == table && name.trim().trim_matches('"') == leaf {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"name = "t"
class = "sbc"
description = "test"

[memory]
ram_mb = 1024
model_budget_share = 0.5
storage_mb = 100
runtime_overhead_mb = 10

[cpu]
arch = "aarch64"
cores = 4
clock_ghz = 1.5
simd = ["neon"]
peak_gflops = 10.0
mem_bandwidth_gbs = 4.0

[[runtimes]]
name = "llama.cpp"
format = "gguf"
weight_schemes = ["Q8_0", "Q4_K"]

[workload]
context_tokens = 512
batch = 1

[accuracy]
max_cosine_drop = 0.01
max_perplexity_increase_pct = 5.0
min_top1_agreement = 0.9
"#;

    fn err_of(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        load_file(&write(dir.path(), "t.toml", text))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn loads_a_good_profile() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_file(&write(dir.path(), "t.toml", GOOD)).unwrap();
        assert_eq!(t.model_budget_mb(), 512);
        assert_eq!(t.allowed_schemes().len(), 2);
        assert_eq!(t.sha256.len(), 64);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err_of(&GOOD.replace("storage_mb = 100", "storage_mb = 100\nramm_mb = 3"));
        assert!(e.ends_with("t.toml:9: memory.ramm_mb: Unknown field `ramm_mb`, expected one of `ram_mb`, `model_budget_share`, `model_budget_mb`, `storage_mb`, `runtime_overhead_mb`"), "{e}");
    }

    #[test]
    fn zero_ram_is_impossible() {
        let e = err_of(&GOOD.replace("ram_mb = 1024", "ram_mb = 0"));
        assert!(
            e.ends_with("t.toml:6: memory.ram_mb: Must be between 1 and 16777216, got 0"),
            "{e}"
        );
    }

    #[test]
    fn share_above_one_is_impossible() {
        let e = err_of(&GOOD.replace("0.5", "1.5"));
        assert!(
            e.contains(
                "t.toml:7: memory.model_budget_share: Must be between 0.0001 and 1, got 1.5"
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_scheme_is_named() {
        let e = err_of(&GOOD.replace("\"Q4_K\"]", "\"Q4_K_X\"]"));
        assert!(
            e.contains("t.toml:22: runtimes.weight_schemes: Unknown scheme `Q4_K_X`"),
            "{e}"
        );
    }

    #[test]
    fn missing_field_points_at_its_table() {
        let e = err_of(&GOOD.replace("cores = 4\n", ""));
        assert!(
            e.contains("t.toml:11: cpu.cores: Missing field `cores`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_located() {
        let e = err_of(&GOOD.replace("cores = 4", "cores = \"four\""));
        assert!(e.contains("t.toml:13: cpu.cores: Invalid type"), "{e}");
    }

    #[test]
    fn extends_merges_deeply_and_child_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", GOOD);
        let child = write(
            dir.path(),
            "child.toml",
            "extends = \"base.toml\"\nname = \"child\"\n[memory]\nram_mb = 2048\n",
        );
        let t = load_file(&child).unwrap();
        assert_eq!(
            (
                t.spec.name.as_str(),
                t.spec.memory.ram_mb,
                t.spec.memory.storage_mb
            ),
            ("child", 2048, 100)
        );
        assert_eq!(t.model_budget_mb(), 1024);
    }

    #[test]
    fn bad_value_in_parent_names_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            &GOOD.replace("cores = 4", "cores = 0"),
        );
        let child = write(
            dir.path(),
            "child.toml",
            "extends = \"base.toml\"\nname = \"child\"\n",
        );
        let e = load_file(&child).unwrap_err().to_string();
        assert!(
            e.contains("base.toml:13: cpu.cores: Must be between 1 and 4096, got 0"),
            "{e}"
        );
    }

    #[test]
    fn named_array_entries_are_added_to_the_parents() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", GOOD);
        let child = "extends = \"base.toml\"\nname = \"child\"\n\n[[runtimes]]\nname = \"qnn\"\nformat = \"onnx\"\nweight_schemes = [\"int8_pc\"]\n";
        let t = load_file(&write(dir.path(), "child.toml", child)).unwrap();
        let runtimes: Vec<&str> = t.spec.runtimes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(runtimes, ["llama.cpp", "qnn"]);
    }

    #[test]
    fn extends_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
        let b = write(dir.path(), "b.toml", "extends = \"a.toml\"\n");
        let e = load_file(&b).unwrap_err().to_string();
        assert!(e.contains("`extends` cycle"), "{e}");
    }

    #[test]
    fn every_builtin_target_resolves() {
        let all = load_all(Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("targets"))).unwrap();
        assert!(all.len() >= 10, "{}", all.len());
        let names: Vec<&str> = all.iter().map(|t| t.name()).collect();
        for name in names {
            assert!(load(name, None).is_ok() || std::path::Path::new("targets").is_dir());
        }
    }
}
