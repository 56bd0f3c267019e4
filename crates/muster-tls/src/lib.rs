//! TLS material for muster: PEM files read into rustls types, and the
//! reloadable mutual-TLS configuration of the cluster port.
//!
//! Both the HTTP listener (`muster-http`'s `tls` module) and cluster RPC
//! (`muster-raft`) read their certificates, keys and CAs here, so a file
//! is accepted or refused by one set of rules and named the same way in
//! every error. Only rustls's `ring` provider is used, passed explicitly,
//! so nothing depends on a process-wide default provider.
//!
//! [`MutualTls`] is the cluster's: one certificate and key that a node
//! presents both as a server (to peers that call it) and as a client (when
//! it calls them), and one CA that every peer's certificate must chain
//! to, in both directions. [`MutualTls::reload`] reads the files again
//! and swaps the configurations in only when every file is valid.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Why TLS files could not be used: the message names the setting, the
/// file and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> TlsError {
        TlsError(message.into())
    }
}

/// rustls's `ring` provider, the one muster uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of the PEM file `path`, in order (a chain: leaf
/// first). `what` names the setting in errors (`tls_cert`).
pub fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of the PEM file `path` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError(format!(
            "{what} {}: no usable PEM private key: {e}",
            path.display()
        ))
    })
}

/// The CA certificates of the PEM file `path`, as trust roots.
pub fn roots(what: &str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(what, path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// A verifier of client certificates: each must chain to `roots` (read
/// from `path`, named `what` in errors); a client without one is refused.
pub fn client_verifier(
    what: &str,
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(roots(what, path)?, provider())
        .build()
        .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))
}

/// Where a node's cluster certificate, key and CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutualFiles {
    /// The node's certificate chain (PEM, leaf first). It must carry both
    /// the serverAuth and the clientAuth extended key usage (what `muster
    /// tls cert create --server` makes) and name every address peers reach
    /// the node at (IP or DNS subject alternative names).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA (PEM) every peer's certificate must chain to.
    pub ca: PathBuf,
}

/// Both sides of one mutual-TLS configuration.
#[derive(Debug)]
struct Configs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// A reloadable mutual-TLS configuration: the server side requires a
/// client certificate from the CA, the client side presents the node's
/// certificate and verifies the peer's against the same CA (and its
/// name against the address called). ALPN is `h2` only.
#[derive(Debug)]
pub struct MutualTls {
    files: MutualFiles,
    current: RwLock<Arc<Configs>>,
    /// Counts successful reloads, so holders of a client built from an
    /// older [`MutualTls::client_config`] know to build a new one.
    generation: AtomicU64,
}

impl MutualTls {
    /// Reads and checks the files.
    pub fn load(files: MutualFiles) -> Result<Arc<MutualTls>, TlsError> {
        let configs = build_mutual(&files)?;
        Ok(Arc::new(MutualTls {
            files,
            current: RwLock::new(Arc::new(configs)),
            generation: AtomicU64::new(0),
        }))
    }

    /// Reads the files again; new connections (accepted, or made by a
    /// client built after it) use them. On an error the configuration in
    /// use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build_mutual(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(configs);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> &MutualFiles {
        &self.files
    }

    /// How many times it was reloaded: changes whenever
    /// [`MutualTls::client_config`] would give a new configuration.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The server side as it is now.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.configs().server)
    }

    /// The client side as it is now.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.configs().client)
    }

    fn configs(&self) -> Arc<Configs> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Two configurations are the same when they read the same files.
impl PartialEq for MutualTls {
    fn eq(&self, other: &MutualTls) -> bool {
        self.files == other.files
    }
}

impl Eq for MutualTls {}

fn build_mutual(files: &MutualFiles) -> Result<Configs, TlsError> {
    let chain = certs("cluster_tls_cert", &files.cert)?;
    let key = private_key("cluster_tls_key", &files.key)?;
    let pair = |e: rustls::Error| {
        TlsError(format!(
            "cluster_tls_cert {} and cluster_tls_key {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    };
    let versions = |e: rustls::Error| TlsError(format!("TLS protocol versions: {e}"));
    let verifier = client_verifier("cluster_tls_ca", &files.ca)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(pair)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let roots = roots("cluster_tls_ca", &files.ca)?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError(format!("cluster_tls_ca {}: {e}", files.ca.display())))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(pair)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A CA and a node certificate it signed, as PEM files in `dir`.
    fn node_files(dir: &Path) -> MutualFiles {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        MutualFiles {
            cert: write(dir, "node.pem", &cert.pem()),
            key: write(dir, "node-key.pem", &key.serialize_pem()),
            ca: write(dir, "ca.pem", &ca_cert.pem()),
        }
    }

    #[test]
    fn a_reload_swaps_only_a_whole_valid_set_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = node_files(dir.path());
        let tls = MutualTls::load(files.clone()).unwrap();
        assert_eq!(tls.client_config().alpn_protocols, vec![b"h2".to_vec()]);
        let before = tls.server_config();
        assert_eq!(tls.generation(), 0);

        tls.reload().unwrap();
        assert_eq!(tls.generation(), 1);
        assert!(!Arc::ptr_eq(&before, &tls.server_config()));

        // A CA file that is not PEM: refused, naming the setting and the
        // file; the configuration in use stays.
        std::fs::write(&files.ca, "not a certificate").unwrap();
        let kept = tls.server_config();
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("cluster_tls_ca") && e.contains("ca.pem"), "{e}");
        assert_eq!(tls.generation(), 1);
        assert!(Arc::ptr_eq(&kept, &tls.server_config()));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = node_files(dir.path());
        let other = node_files(&{
            let d = dir.path().join("other");
            std::fs::create_dir(&d).unwrap();
            d
        });
        let e = MutualTls::load(MutualFiles {
            key: other.key,
            ..files
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("cluster_tls_key"), "{e}");
    }
}
