//! Pulls from an OCI distribution registry through `oci-client`: manifest
//! lists resolve to linux/amd64, token and basic auth are the client's.

use crate::{unpack::Compression, Error, Fetched, ImageConfig, LayerBlob, Progress};
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// How to log in to the registry.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn auth(&self) -> RegistryAuth {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

/// Unknown images and refused logins apart from other registry failures.
fn classify(reference: &Reference, e: oci_client::errors::OciDistributionError) -> Error {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let what = format!("{reference}: {e}");
    match &e {
        E::ImageManifestNotFoundError(_) => Error::NotFound(what),
        E::ServerError { code: 404, .. } => Error::NotFound(what),
        E::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, C::ManifestUnknown | C::NameUnknown | C::NotFound)) =>
        {
            Error::NotFound(what)
        }
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => Error::Unauthorized(what),
        E::ServerError {
            code: 401 | 403, ..
        } => Error::Unauthorized(what),
        E::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, C::Unauthorized | C::Denied)) =>
        {
            Error::Unauthorized(what)
        }
        _ => Error::Registry(what),
    }
}

pub(crate) fn parse_reference(r: &str) -> Result<Reference, String> {
    r.parse::<Reference>().map_err(|e| e.to_string())
}

pub(crate) async fn pull(
    reference: &str,
    credentials: &Credentials,
    insecure: bool,
    work: &Path,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Fetched, Error> {
    let reference =
        parse_reference(reference).map_err(|e| Error::BadReference(reference.to_string(), e))?;
    let client = Client::new(ClientConfig {
        protocol: if insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..Default::default()
    });
    let auth = credentials.auth();
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&reference, &auth)
        .await
        .map_err(|e| classify(&reference, e))?;
    let config = ImageConfig::from_blob(config.as_bytes())?;
    progress(Progress::Resolved {
        layers: manifest.layers.len(),
        bytes: manifest.layers.iter().map(|l| l.size.max(0) as u64).sum(),
    });
    let mut layers = Vec::new();
    for (index, layer) in manifest.layers.iter().enumerate() {
        let compression = Compression::from_media_type(&layer.media_type)?;
        let path = work.join(format!("layer-{index}"));
        let mut stream = client
            .pull_blob_stream(&reference, layer)
            .await
            .map_err(|e| Error::Registry(format!("layer {}: {e}", layer.digest)))?;
        let mut file = tokio::fs::File::create(&path).await?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| Error::Registry(format!("layer {}: {e}", layer.digest)))?;
            hash.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let got = format!("sha256:{:x}", hash.finalize());
        if layer.digest.starts_with("sha256:") && got != layer.digest {
            return Err(Error::Registry(format!(
                "layer {} arrived with digest {got}",
                layer.digest
            )));
        }
        progress(Progress::Fetched { index, bytes: size });
        layers.push(LayerBlob {
            path,
            compression: Some(compression),
            size,
        });
    }
    Ok(Fetched {
        config,
        layers,
        digest: Some(digest),
    })
}
