//! Signed updates. A client signs, with Ed25519, the canonical JSON of its
//! update's metadata (without `signature`) and of every tensor's name,
//! dtype, shape and data sha256; the signature goes into the metadata as
//! hex. The message does not depend on how the safetensors header is laid
//! out, so any writer can produce a verifiable update. The server trusts
//! the public keys in `clients.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::FedError;
use crate::artifact::manifest::canonical_json;
use crate::format::atomic::{write_atomic, Overwrite};
use crate::format::safetensors::{SafetensorsFile, SafetensorsStream, TensorSpec};

pub const SIGNATURE: &str = "signature";

/// The bytes a client signs.
pub fn message(file: &SafetensorsFile) -> Vec<u8> {
    let mut metadata = file.metadata().clone();
    metadata.remove(SIGNATURE);
    let mut tensors: Vec<serde_json::Value> = file
        .tensors()
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "dtype": t.dtype.to_string(),
                "shape": t.shape,
                "sha256": hex::encode(Sha256::digest(file.data(t))),
            })
        })
        .collect();
    tensors.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    canonical_json(&serde_json::json!({ "metadata": metadata, "tensors": tensors }))
}

fn read_key(path: &Path) -> Result<SigningKey, FedError> {
    let text = crate::guard::read_text(path, crate::guard::Cap::JSON)
        .map_err(|e| FedError::at(path, e.message))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| FedError::at(path, "not an Ed25519 secret key (64 hex digits)"))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A new secret key at `out` (mode 0600); returns the public key in hex.
pub fn keygen(out: &Path) -> Result<String, FedError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| FedError::at(out, format!("no random source: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    write_atomic(
        out,
        format!("{}\n", hex::encode(seed)).as_bytes(),
        Overwrite::Deny,
    )
    .map_err(|e| FedError::at(out, e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| FedError::at(out, e.to_string()))?;
    }
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

/// The public key of a secret key file, in hex.
pub fn public_key(key: &Path) -> Result<String, FedError> {
    Ok(hex::encode(read_key(key)?.verifying_key().to_bytes()))
}

/// Signs the update at `path` in place (rewritten atomically).
pub fn sign(path: &Path, key: &Path) -> Result<(), FedError> {
    let key = read_key(key)?;
    let file = SafetensorsFile::open(path).map_err(|e| FedError::at(path, e.message))?;
    let signature = key.sign(&message(&file));
    let mut metadata = file.metadata().clone();
    metadata.insert(SIGNATURE.into(), hex::encode(signature.to_bytes()));
    let specs: Vec<TensorSpec> = file.tensors().iter().map(TensorSpec::from).collect();
    let mut stream = SafetensorsStream::create(path, &specs, &metadata, Overwrite::Allow)
        .map_err(|e| FedError::at(path, e.message))?;
    for t in file.tensors() {
        stream
            .write_tensor(file.data(t))
            .map_err(|e| FedError::at(path, e.message))?;
    }
    stream.finish().map_err(|e| FedError::at(path, e.message))?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    id: String,
    /// Ed25519 public key, 64 hex digits.
    public_key: String,
}

/// The trusted clients: `[[client]] id = "...", public_key = "<hex>"`.
pub struct Trusted(BTreeMap<String, VerifyingKey>);

impl Trusted {
    pub fn load(path: &Path) -> Result<Self, FedError> {
        let text = crate::guard::read_text(path, crate::guard::Cap::JSON)
            .map_err(|e| FedError::at(path, e.message))?;
        let file: ClientsFile =
            toml::from_str(&text).map_err(|e| FedError::at(path, e.message().to_string()))?;
        let mut keys = BTreeMap::new();
        for c in file.client {
            let key = hex::decode(&c.public_key)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .and_then(|b| VerifyingKey::from_bytes(&b).ok())
                .ok_or_else(|| {
                    FedError::at(
                        path,
                        format!(
                            "client `{}`: public_key is not an Ed25519 key (64 hex digits)",
                            c.id
                        ),
                    )
                })?;
            if keys.insert(c.id.clone(), key).is_some() {
                return Err(FedError::at(
                    path,
                    format!("client `{}` is listed twice", c.id),
                ));
            }
        }
        Ok(Self(keys))
    }

    /// Why `file`, claiming to come from `client`, is not trusted, if it isn't.
    pub fn check(&self, client: &str, file: &SafetensorsFile) -> Result<(), String> {
        let key = self
            .0
            .get(client)
            .ok_or_else(|| format!("client `{client}` is not in clients.toml"))?;
        let hex_sig = file
            .metadata()
            .get(SIGNATURE)
            .ok_or("unsigned, and clients.toml requires signatures")?;
        let signature = hex::decode(hex_sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or("malformed signature")?;
        key.verify(&message(file), &signature)
            .map_err(|_| format!("bad signature: not signed by `{client}`'s key, or altered since"))
    }
}
