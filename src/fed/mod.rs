//! Federated averaging across a fleet (docs/federated.md): clients send
//! per-tensor deltas against a global version (`update`), the server checks
//! each one against that version and aggregates the accepted ones into the
//! next version (`aggregate`), whose `lineage.json` records what went in
//! and what was turned away (`global`).

pub mod aggregate;
pub mod global;
pub mod sign;
pub mod simulate;
pub mod train;
pub mod update;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FedError {
    #[error("{}: {message}", path.display())]
    At { path: PathBuf, message: String },
    /// Fewer updates were accepted than `--min-clients`: no new version.
    #[error(
        "only {accepted} of {received} updates accepted, --min-clients is {min}: no new version"
    )]
    TooFewClients {
        accepted: usize,
        received: usize,
        min: usize,
        /// Why each of the others was turned away, as a successful round lists them.
        rejected: Vec<global::Rejected>,
    },
}

impl FedError {
    pub fn at(path: &Path, message: impl Into<String>) -> Self {
        Self::At {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
