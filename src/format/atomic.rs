//! Atomic output files: write into a temp file in the destination's folder,
//! fsync, then rename, so a crash, a full disk or Ctrl-C never leaves half a
//! file and an existing good file is never replaced by accident.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Whether an existing destination may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail if the destination exists (the default for every command).
    Deny,
    /// Replace it atomically (`--force`).
    Allow,
}

/// A file being written; it appears at `target` only on [`AtomicFile::commit`].
/// Dropped uncommitted, the temp file is removed.
pub struct AtomicFile {
    temp: io::BufWriter<NamedTempFile>,
    target: PathBuf,
    overwrite: Overwrite,
}

/// Why an atomic file could not be created or committed.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    #[error("{}: Output already exists (pass --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("{}: Cannot write: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl AtomicFile {
    /// Opens a temp file beside `target`.
    pub fn create(target: &Path, overwrite: Overwrite) -> Result<Self, AtomicError> {
        if overwrite == Overwrite::Deny && target.exists() {
            return Err(AtomicError::Exists(target.to_path_buf()));
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|source| AtomicError::Io {
                path: target.to_path_buf(),
                source,
            })?;
        Ok(Self {
            temp: io::BufWriter::with_capacity(1 << 20, temp),
            target: target.to_path_buf(),
            overwrite,
        })
    }

    /// Where the file will appear.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes, fsyncs and renames into place; returns the final path.
    pub fn commit(self) -> Result<PathBuf, AtomicError> {
        let target = self.target;
        let io_err = |source: io::Error| AtomicError::Io {
            path: target.clone(),
            source,
        };
        let temp = self.temp.into_inner().map_err(|e| io_err(e.into_error()))?;
        make_shareable(temp.as_file()).map_err(io_err)?;
        temp.as_file().sync_all().map_err(io_err)?;
        match self.overwrite {
            Overwrite::Allow => temp.persist(&target).map_err(|e| io_err(e.error))?,
            Overwrite::Deny => temp.persist_noclobber(&target).map_err(|e| {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    AtomicError::Exists(target.clone())
                } else {
                    io_err(e.error)
                }
            })?,
        };
        Ok(target)
    }
}

/// Writes `bytes` to `target` atomically (temp file, fsync, rename).
pub fn write_atomic(
    target: &Path,
    bytes: &[u8],
    overwrite: Overwrite,
) -> Result<PathBuf, AtomicError> {
    let mut file = AtomicFile::create(target, overwrite)?;
    file.write_all(bytes).map_err(|source| AtomicError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    file.commit()
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.temp.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Temp files are created owner-only; outputs are ordinary shareable files
/// (mode 0644).
pub fn make_shareable(file: &std::fs::File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}
