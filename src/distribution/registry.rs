//! One repository in an OCI registry, behind a blocking API: oci-client
//! speaks the protocol (token and basic auth, blob HEAD, upload sessions,
//! manifest PUT, blob streams); manifests are read here with a size bound.
//! Every call is retried with exponential backoff on network errors, 429
//! and 5xx; anything else fails at once with one line.

use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

use super::oci::MAX_DOCUMENT_BYTES;
use super::DistributionError;

/// How a registry is reached.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `http://` instead of `https://` (a local registry).
    pub plain_http: bool,
}

pub struct Remote {
    runtime: tokio::runtime::Runtime,
    client: Client,
    http: reqwest::Client,
    reference: Reference,
    auth: RegistryAuth,
    scheme: &'static str,
    attempts: u32,
    delay: Duration,
}

/// Parses `REGISTRY/REPO[:TAG|@DIGEST]`; `has_tag` says whether a tag or
/// digest was written (the parser defaults to `latest`).
pub fn parse_reference(text: &str) -> Result<(Reference, bool), DistributionError> {
    let reference: Reference = text.parse().map_err(|e| DistributionError::Registry {
        reference: text.into(),
        message: format!("not a registry reference (REGISTRY/REPOSITORY[:TAG]): {e}"),
    })?;
    let last = text.rsplit('/').next().unwrap_or(text);
    Ok((reference, last.contains([':', '@'])))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Credentials for `registry`: `EDGEFORGE_REGISTRY_USERNAME` and
/// `EDGEFORGE_REGISTRY_PASSWORD`, else the Docker config (`$DOCKER_CONFIG`
/// or `~/.docker/config.json`: auths, credHelpers, credsStore), else none.
fn credentials(registry: &str) -> RegistryAuth {
    if let (Ok(user), Ok(password)) = (
        std::env::var("EDGEFORGE_REGISTRY_USERNAME"),
        std::env::var("EDGEFORGE_REGISTRY_PASSWORD"),
    ) {
        return RegistryAuth::Basic(user, password);
    }
    match docker_credential::get_credential(registry) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(_)) => {
            tracing::warn!("{registry}: the Docker config holds an identity token, which edgeforge cannot use; trying anonymously");
            RegistryAuth::Anonymous
        }
        Err(e) => {
            tracing::debug!("{registry}: no Docker credentials ({e:?}); anonymous");
            RegistryAuth::Anonymous
        }
    }
}

/// Why one attempt failed, and whether trying again may help.
struct Failure {
    transient: bool,
    message: String,
}

impl From<OciDistributionError> for Failure {
    fn from(e: OciDistributionError) -> Self {
        Self {
            transient: transient(&e),
            message: describe(&e),
        }
    }
}

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Self {
        OciDistributionError::RequestError(e).into()
    }
}

/// Local file errors: not the network's fault, not retried.
impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self {
            transient: false,
            message: e.to_string(),
        }
    }
}

/// Whether an error may pass on its own (network, 429, 5xx).
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(e) => {
            e.is_connect()
                || e.is_timeout()
                || e.is_request()
                || e.is_body()
                || e.status()
                    .is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == oci_client::errors::OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// One line for an error from oci-client.
fn describe(e: &OciDistributionError) -> String {
    let short = |s: &str| s.trim().chars().take(200).collect::<String>();
    match e {
        OciDistributionError::UnauthorizedError { .. } => unauthorized(),
        OciDistributionError::AuthenticationFailure(reason) => {
            format!("authentication failed: {}", short(reason))
        }
        OciDistributionError::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 401) => {
            unauthorized()
        }
        OciDistributionError::RequestError(r) if r.is_connect() => {
            format!("cannot connect: {}", short(&error_chain(r)))
        }
        OciDistributionError::RequestError(r) => match r.status() {
            Some(s) => format!("HTTP {s}"),
            None => short(&error_chain(r)),
        },
        OciDistributionError::ServerError { code, message, .. } => {
            format!("HTTP {code}: {}", short(message))
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, short(&e.message)))
                .collect();
            format!("registry refused: {}", errors.join("; "))
        }
        other => short(&other.to_string()),
    }
}

fn unauthorized() -> String {
    "401 Unauthorized: set EDGEFORGE_REGISTRY_USERNAME and EDGEFORGE_REGISTRY_PASSWORD, or log in with `docker login`".into()
}

/// oci-client checks digests at the end of a blob stream itself.
fn is_digest_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

impl Remote {
    pub fn connect(
        reference: Reference,
        connection: &Connection,
    ) -> Result<Self, DistributionError> {
        let registry = reference.resolve_registry().to_string();
        let config = ClientConfig {
            protocol: if connection.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // Our files are streamed from disk: one PUT per blob, sized.
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DistributionError::Registry {
                reference: reference.whole(),
                message: format!("cannot start the network runtime: {e}"),
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| DistributionError::Registry {
                reference: reference.whole(),
                message: e.to_string(),
            })?;
        Ok(Self {
            runtime,
            client: Client::new(config),
            http,
            auth: credentials(&registry),
            reference,
            scheme: if connection.plain_http {
                "http"
            } else {
                "https"
            },
            attempts: env_number("EDGEFORGE_REGISTRY_ATTEMPTS", 4).max(1) as u32,
            delay: Duration::from_millis(env_number("EDGEFORGE_REGISTRY_RETRY_MS", 500)),
        })
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The same repository at another tag or digest.
    fn at(&self, tag_or_digest: &str) -> Reference {
        let (registry, repo) = (
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
        );
        if tag_or_digest.starts_with("sha256:") {
            Reference::with_digest(registry, repo, tag_or_digest.into())
        } else {
            Reference::with_tag(registry, repo, tag_or_digest.into())
        }
    }

    fn error(&self, what: &str, message: String) -> DistributionError {
        DistributionError::Registry {
            reference: format!(
                "{}/{}",
                self.reference.registry(),
                self.reference.repository()
            ),
            message: format!("{what}: {message}"),
        }
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of attempts.
    fn retry<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, DistributionError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Failure>,
    {
        let mut delay = self.delay;
        for attempt in 1..=self.attempts {
            match self.runtime.block_on(op()).map_err(Into::into) {
                Ok(v) => return Ok(v),
                Err(f) if f.transient && attempt < self.attempts => {
                    tracing::warn!(
                        "{what}: {} (attempt {attempt} of {}; retrying in {delay:?})",
                        f.message,
                        self.attempts
                    );
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(f) => {
                    let tries = if f.transient {
                        format!(" (after {} attempts)", self.attempts)
                    } else {
                        String::new()
                    };
                    return Err(self.error(what, format!("{}{tries}", f.message)));
                }
            }
        }
        unreachable!("attempts >= 1")
    }

    /// Logs in for `operation` (a no-op for anonymous registries).
    pub fn authenticate(&self, operation: RegistryOperation) -> Result<(), DistributionError> {
        self.retry("login", || {
            self.client.auth(&self.reference, &self.auth, operation)
        })?;
        Ok(())
    }

    pub fn blob_exists(&self, digest: &str) -> Result<bool, DistributionError> {
        self.retry(&format!("HEAD blob {digest}"), || {
            self.client.blob_exists(&self.reference, digest)
        })
    }

    /// Uploads one blob from a file or from memory, streamed (one PUT).
    pub fn push_blob(
        &self,
        digest: &str,
        size: u64,
        source: &super::release::BlobSource,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), DistributionError> {
        use super::release::BlobSource;
        self.retry(&format!("upload blob {digest}"), || {
            let source = source.clone();
            async move {
                let stream = match source {
                    BlobSource::Bytes(b) => {
                        futures_util::stream::iter(vec![Ok(bytes::Bytes::from(b))]).boxed()
                    }
                    BlobSource::File(path) => {
                        let file = std::fs::File::open(&path)?;
                        futures_util::stream::unfold(file, |mut file| async move {
                            let mut buf = vec![0u8; 1 << 20];
                            match file.read(&mut buf) {
                                Ok(0) => None,
                                Ok(n) => {
                                    buf.truncate(n);
                                    Some((Ok(bytes::Bytes::from(buf)), file))
                                }
                                Err(e) => Some((Err(OciDistributionError::IoError(e)), file)),
                            }
                        })
                        .boxed()
                    }
                };
                self.client
                    .push_blob_stream(&self.reference, stream, digest, Some(size))
                    .await
            }
        })?;
        on_bytes(size);
        Ok(())
    }

    /// PUTs a manifest or index under a tag or its digest.
    pub fn push_manifest(
        &self,
        tag_or_digest: &str,
        bytes: &[u8],
        media_type: &'static str,
    ) -> Result<(), DistributionError> {
        let reference = self.at(tag_or_digest);
        self.retry(&format!("push manifest {tag_or_digest}"), || {
            self.client.push_manifest_raw(
                &reference,
                bytes.to_vec(),
                reqwest::header::HeaderValue::from_static(media_type),
            )
        })?;
        Ok(())
    }

    /// GETs a manifest or index by tag or digest, reading at most `max`
    /// bytes; `None` when the registry has no such manifest. Returns the
    /// bytes and their digest (checked against a digest reference).
    pub fn get_manifest(
        &self,
        tag_or_digest: &str,
        accept: &[&str],
        max: usize,
    ) -> Result<Option<(Vec<u8>, String)>, DistributionError> {
        let max = max.min(MAX_DOCUMENT_BYTES);
        let url = format!(
            "{}://{}/v2/{}/manifests/{tag_or_digest}",
            self.scheme,
            self.reference.resolve_registry(),
            self.reference.repository()
        );
        let what = format!("GET manifest {tag_or_digest}");
        let token = self.retry("login", || {
            self.client
                .auth(&self.reference, &self.auth, RegistryOperation::Pull)
        })?;
        let body = self.retry(&what, || async {
            let mut request = self.http.get(&url).header("Accept", accept.join(", "));
            request = match (&token, &self.auth) {
                (Some(t), _) => request.bearer_auth(t),
                (None, RegistryAuth::Basic(u, p)) => request.basic_auth(u, Some(p)),
                _ => request,
            };
            let mut response = request.send().await.map_err(Failure::from)?;
            let status = response.status();
            if status.as_u16() == 404 {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(Failure::from(OciDistributionError::ServerError {
                    code: status.as_u16(),
                    url: url.clone(),
                    message: status.canonical_reason().unwrap_or("").into(),
                }));
            }
            let too_big = || Failure {
                transient: false,
                message: format!("the registry sent more than {max} bytes for a manifest"),
            };
            if response.content_length().is_some_and(|n| n > max as u64) {
                return Err(too_big());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(Failure::from)? {
                if body.len() + chunk.len() > max {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some(body))
        })?;
        let Some(body) = body else { return Ok(None) };
        let digest = super::oci::digest_of(&body);
        if tag_or_digest.starts_with("sha256:") && digest != tag_or_digest {
            return Err(DistributionError::content(
                self.at(tag_or_digest).whole(),
                format!("the registry sent a manifest whose digest is {digest}"),
            ));
        }
        Ok(Some((body, digest)))
    }

    /// Streams one blob into `out` (created), hashing as it goes; a size or
    /// digest other than `expected`'s is an error (the caller discards `out`).
    pub fn pull_blob(
        &self,
        digest: &str,
        size: u64,
        out: &Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), DistributionError> {
        let descriptor = OciDescriptor {
            digest: digest.into(),
            size: size as i64,
            ..OciDescriptor::default()
        };
        let tampered =
            |message: String| DistributionError::content(self.at(digest).whole(), message);
        let result = self.retry(&format!("GET blob {digest}"), || async {
            let mut stream = self
                .client
                .pull_blob_stream(&self.reference, &descriptor)
                .await
                .map_err(Failure::from)?;
            let mut file = std::fs::File::create(out)?;
            let mut hasher = Sha256::new();
            let mut written = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) if is_digest_error(&e) => {
                        return Ok(Err(format!(
                            "blob does not hash to its digest (tampered): {e}"
                        )));
                    }
                    Err(e) => {
                        return Err(Failure {
                            transient: true,
                            message: format!("download interrupted: {e}"),
                        })
                    }
                };
                written += chunk.len() as u64;
                if written > size {
                    return Ok(Err(format!("blob is longer than its {size} bytes")));
                }
                hasher.update(&chunk);
                std::io::Write::write_all(&mut file, &chunk)?;
                on_bytes(chunk.len() as u64);
            }
            file.sync_all()?;
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            Ok(if written != size {
                Err(format!(
                    "blob is {written} bytes, its manifest says {size} (interrupted?)"
                ))
            } else if actual != digest {
                Err(format!("blob hashes to {actual} (tampered)"))
            } else {
                Ok(())
            })
        })?;
        result.map_err(tampered)
    }
}
