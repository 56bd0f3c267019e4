//! TLS on the HTTP listener: a certificate and key from PEM files, and
//! optionally client certificates verified against a CA (mTLS).
//!
//! The files are read at start-up and again on [`Tls::reload`] (the agent
//! calls it on SIGHUP). A reload builds a whole new server configuration
//! and swaps it in only if every file is valid: a bad file leaves the old
//! configuration serving and says what is wrong. Each new connection's
//! handshake uses the configuration current at its accept; connections
//! already open (watches, blocking queries) keep theirs and are not
//! dropped.
//!
//! ALPN offers `h2` and `http/1.1`; the connection is then served as the
//! cleartext listener serves it.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::TlsAcceptor;

/// Where the listener's certificate, key and client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; when
    /// set, a client without a valid certificate is refused during the
    /// handshake.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used (files are read by `muster-tls`,
/// as the cluster port's are).
pub use muster_tls::TlsError;

/// The listener's TLS configuration, reloadable.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let config = build(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Reads the files again and serves new connections with them; on an
    /// error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the configuration current now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn build(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let chain = muster_tls::certs("tls_cert", &files.cert)?;
    let key = muster_tls::private_key("tls_key", &files.key)?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            builder.with_client_cert_verifier(muster_tls::client_verifier("tls_client_ca", ca)?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::new(format!(
            "tls_cert {} and tls_key {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
