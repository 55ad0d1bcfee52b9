//! `package --tar`: an artifact as one file, byte-identical for the same
//! artifact (fixed order, owner, mode and time).

use std::path::{Path, PathBuf};

use super::manifest::Manifest;
use super::{ArtifactError, MANIFEST};

/// Writes `dir` as one deterministic tar beside it: `<target>/<file>` entries
/// in path order, mode 0644, owner 0, mtime `SOURCE_DATE_EPOCH` or 0.
pub fn write_tar(dir: &Path, manifest: &Manifest) -> Result<PathBuf, ArtifactError> {
    let parent = dir.parent().expect("artifact folder has a parent");
    let path = parent.join(format!(
        "{}-{}-{}.tar",
        manifest.name, manifest.version, manifest.target.name
    ));
    let mtime = manifest.created.unwrap_or(0);
    let mut names: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    names.push(MANIFEST.into());
    names.sort();
    let file =
        crate::format::atomic::AtomicFile::create(&path, crate::format::atomic::Overwrite::Allow)
            .map_err(|e| ArtifactError::at(&path, e.to_string()))?;
    let mut builder = tar::Builder::new(file);
    for name in &names {
        let src = dir.join(name);
        let mut reader =
            fs_err::File::open(&src).map_err(|e| ArtifactError::at(&src, e.to_string()))?;
        let size = reader
            .metadata()
            .map_err(|e| ArtifactError::at(&src, e.to_string()))?
            .len();
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        let entry = format!("{}/{name}", manifest.target.name);
        builder
            .append_data(&mut header, &entry, &mut reader)
            .map_err(|e| ArtifactError::at(&path, format!("cannot write: {e}")))?;
    }
    let file = builder
        .into_inner()
        .map_err(|e| ArtifactError::at(&path, format!("cannot write: {e}")))?;
    file.commit()
        .map_err(|e| ArtifactError::at(&path, e.to_string()))?;
    Ok(path)
}
