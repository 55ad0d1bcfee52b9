//! Reading files others made: only regular files (a FIFO or `/dev/zero` in
//! place of a file would hang us), never more than a stated cap.

use std::io::Read;
use std::path::Path;

use super::GuardError;

/// The most we read of one kind of file, named in the refusal.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub bytes: u64,
    pub what: &'static str,
}

impl Cap {
    /// Target profiles, recipes and `extends` parents: hand-written TOML.
    pub const TOML: Cap = Cap {
        bytes: 1 << 20,
        what: "TOML file",
    };
    /// Manifests, indexes, registry documents, model configs and update metadata.
    pub const JSON: Cap = Cap {
        bytes: 16 << 20,
        what: "JSON document",
    };
    /// tokenizer.json files hold whole vocabularies (Gemma's is 33 MB).
    pub const TOKENIZER: Cap = Cap {
        bytes: 256 << 20,
        what: "tokenizer file",
    };
    /// Importance matrices: a few MB for dense models, hundreds for large MoE ones.
    pub const IMATRIX: Cap = Cap {
        bytes: 2 << 30,
        what: "importance matrix",
    };
    /// Text a command reads line by line (eval and calibration sets, `--file`).
    pub const TEXT: Cap = Cap {
        bytes: 256 << 20,
        what: "text file",
    };
}

/// `path` is a regular file (after following symlinks); returns its size.
pub fn regular_file(path: &Path) -> Result<u64, GuardError> {
    let meta = std::fs::metadata(path).map_err(|e| GuardError::at(path, io_reason(&e)))?;
    if meta.is_dir() {
        return Err(GuardError::at(path, "is a folder, not a file"));
    }
    if !meta.is_file() {
        return Err(GuardError::at(
            path,
            "is not a regular file (a FIFO, socket or device)",
        ));
    }
    Ok(meta.len())
}

/// The bytes of a regular file no larger than `cap`.
pub fn read_bytes(path: &Path, cap: Cap) -> Result<Vec<u8>, GuardError> {
    let size = regular_file(path)?;
    if size > cap.bytes {
        return Err(too_big(path, size, cap));
    }
    let file = std::fs::File::open(path).map_err(|e| GuardError::at(path, io_reason(&e)))?;
    // The file may grow between the check and the read: read one byte past the cap.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(cap.bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| GuardError::at(path, io_reason(&e)))?;
    if bytes.len() as u64 > cap.bytes {
        return Err(too_big(path, bytes.len() as u64, cap));
    }
    Ok(bytes)
}

/// The UTF-8 text of a regular file no larger than `cap`.
pub fn read_text(path: &Path, cap: Cap) -> Result<String, GuardError> {
    String::from_utf8(read_bytes(path, cap)?).map_err(|_| GuardError::at(path, "is not UTF-8 text"))
}

fn too_big(path: &Path, size: u64, cap: Cap) -> GuardError {
    GuardError::at(
        path,
        format!(
            "{size} bytes is more than a {} may hold ({} bytes)",
            cap.what, cap.bytes
        ),
    )
}

/// An io error in words, without Rust's `(os error 2)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_special_files_folders_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(regular_file(dir.path())
            .unwrap_err()
            .message
            .contains("folder"));
        #[cfg(unix)]
        assert!(regular_file(Path::new("/dev/zero"))
            .unwrap_err()
            .message
            .contains("not a regular file"));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (Cap::TOML.bytes + 1) as usize]).unwrap();
        let err = read_text(&big, Cap::TOML).unwrap_err();
        assert!(err.message.contains("TOML file"), "{err}");
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "a = 1").unwrap();
        assert_eq!(read_text(&ok, Cap::TOML).unwrap(), "a = 1");
    }
}
