//! Text that becomes a path: artifact names, versions, target names, client
//! ids. Each must be one safe path component, so `dist/<name>/<version>/`
//! can never climb out of `dist/` or make nested folders.

use std::path::{Component, Path, PathBuf};

use super::echo::bounded;

const MAX_LEN: usize = 128;

/// An artifact name: it becomes a folder name and a registry repository.
pub fn artifact_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` is not a valid artifact name (lowercase letters, digits, `.`, `_`, `-`; starting with a letter or digit; at most {MAX_LEN})", bounded(name, 64)))
    }
}

/// One path component named by others (a target name, a client id): letters,
/// digits, `.`, `_`, `-`, starting with a letter or digit.
pub fn path_component(text: &str, what: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= MAX_LEN
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{}` is not a safe name (letters, digits, `.`, `_`, `-`; starting with a letter or digit; at most {MAX_LEN})",
            bounded(text, 64)
        ))
    }
}

/// Semantic Versioning 2.0: MAJOR.MINOR.PATCH[-PRE][+BUILD], where PRE and
/// BUILD are dot-separated identifiers of `[0-9A-Za-z-]` (so no `/`, no `..`).
pub fn semver(v: &str) -> Result<(), String> {
    let err = || {
        format!(
            "`{}` is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD], e.g. 1.2.0)",
            bounded(v, 64)
        )
    };
    if v.len() > MAX_LEN {
        return Err(err());
    }
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numeric = |p: &str| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
    };
    let identifiers = |s: &str| {
        s.split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return Err(err());
    }
    if pre.is_some_and(|p| !identifiers(p)) || build.is_some_and(|b| !identifiers(b)) {
        return Err(err());
    }
    Ok(())
}

/// `root/rel`, refused unless `rel` is relative with only plain components
/// and the result, with symlinks resolved as far as it exists, stays under
/// `root` (a symlinked folder inside the root must not lead out of it).
pub fn confined(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || rel.as_os_str().is_empty() {
        return Err(format!(
            "`{}` would leave the output folder {}",
            bounded(&rel.display().to_string(), 96),
            root.display()
        ));
    }
    let joined = root.join(rel);
    let Ok(real_root) = root.canonicalize() else {
        return Ok(joined);
    };
    let mut existing = joined.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(joined),
        }
    }
    let real = existing
        .canonicalize()
        .map_err(|e| format!("{}: {e}", existing.display()))?;
    if real.starts_with(&real_root) {
        Ok(joined)
    } else {
        Err(format!(
            "{} leads outside the output folder {} (to {})",
            existing.display(),
            root.display(),
            real.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_semver_strictly() {
        for ok in [
            "1.0.0",
            "0.3.12",
            "2.0.0-rc.1",
            "1.0.0+build.5",
            "1.0.0-a-b+x-1.2",
        ] {
            assert!(semver(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1.0",
            "01.0.0",
            "1.0.0-",
            "v1.0.0",
            "1.0.x",
            "1.0.0+x/../../../../../VESC",
            "1.0.0+a/b",
            "1.0.0+a..b",
            "1.0.0+",
            "1.0.0-x/y",
        ] {
            assert!(semver(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_single_components() {
        assert!(artifact_name("minilm-l6.q8").is_ok());
        for bad in ["../x", "../../victim", "Upper", "", ".hidden", "a/b"] {
            assert!(artifact_name(bad).is_err(), "{bad}");
        }
        assert!(path_component("client-07", "client id").is_ok());
        for bad in ["", "../../etc/passwd", "a/b", "..", "x\0y"] {
            assert!(path_component(bad, "client id").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn confinement_resolves_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dist");
        std::fs::create_dir(&root).unwrap();
        assert!(confined(&root, Path::new("a/b")).is_ok());
        assert!(confined(&root, Path::new("../a")).is_err());
        assert!(confined(&root, Path::new("/etc")).is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
            assert!(confined(&root, Path::new("up/x")).is_err());
        }
    }
}
