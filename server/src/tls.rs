//! TLS for client connections, with rustls, over any [`ByteStream`].
//!
//! [`TlsStream`] wraps a byte stream after the server's plaintext `INFO`
//! (the NATS way: the client sees `tls_required` and starts the handshake)
//! and is itself a [`ByteStream`], so the connection driver, writer and
//! pumps do not know whether they speak TLS. rustls is sans-IO: bytes from
//! the socket go into the `ServerConnection`, plaintext comes out, and
//! records to send are drained from it. Two locks: the connection state
//! (never held across an await) and a write-order lock held across each
//! socket write, so records reach the socket in the order they were made.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_core::runtime::{ByteStream, NetError};
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The `[tls]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain.
    pub cert: String,
    /// PEM file with the server's private key.
    pub key: String,
    /// PEM file of CAs whose client certificates are accepted; when set,
    /// clients must present one.
    #[serde(default)]
    pub client_ca: Option<String>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Builds the rustls server configuration from PEM files.
pub fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let pem_err =
        |path: &str, e: &dyn std::fmt::Display| TlsSetupError::Pem { path: path.to_owned(), why: e.to_string() };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(Path::new(&config.cert))
        .map_err(|e| pem_err(&config.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&config.cert, &e))?;
    if certs.is_empty() {
        return Err(pem_err(&config.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(Path::new(&config.key)).map_err(|e| pem_err(&config.key, &e))?;
    // ring, not aws-lc-rs: rustls now flags ring's provider for lacking
    // post-quantum key exchange, but aws-lc-rs adds a C/C++ build of about a
    // minute on this 2-core machine. Classical TLS 1.2/1.3 suites only.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(Path::new(path)).map_err(|e| pem_err(path, &e))? {
                roots.add(cert.map_err(|e| pem_err(path, &e))?).map_err(|e| pem_err(path, &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A byte stream carrying TLS; reads and writes plaintext.
pub struct TlsStream<S: ByteStream> {
    inner: S,
    conn: Arc<Mutex<ServerConnection>>,
    write_order: Arc<futures_util::lock::Mutex<()>>,
}

impl<S: ByteStream> Clone for TlsStream<S> {
    fn clone(&self) -> Self {
        TlsStream { inner: self.inner.clone(), conn: self.conn.clone(), write_order: self.write_order.clone() }
    }
}

fn tls_err(e: impl std::fmt::Display) -> NetError {
    NetError::Io(format!("TLS: {e}"))
}

impl<S: ByteStream> TlsStream<S> {
    /// Starts a server-side TLS session on `inner` (the handshake runs as
    /// the first reads and writes happen).
    pub fn accept(inner: S, config: Arc<rustls::ServerConfig>) -> Result<Self, NetError> {
        let conn = ServerConnection::new(config).map_err(tls_err)?;
        Ok(TlsStream {
            inner,
            conn: Arc::new(Mutex::new(conn)),
            write_order: Arc::new(futures_util::lock::Mutex::new(())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServerConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records rustls wants sent.
    fn drain(conn: &mut ServerConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while conn.wants_write() {
            if conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    async fn send_records(&self, records: Vec<u8>) -> Result<(), NetError> {
        if records.is_empty() {
            return Ok(());
        }
        self.inner.write(Bytes::from(records)).await
    }
}

impl<S: ByteStream> ByteStream for TlsStream<S> {
    async fn write(&self, data: Bytes) -> Result<(), NetError> {
        let _order = self.write_order.lock().await;
        let records = {
            let mut conn = self.lock();
            conn.writer().write_all(&data).map_err(tls_err)?;
            Self::drain(&mut conn)
        };
        self.send_records(records).await
    }

    async fn read(&self) -> Result<Option<Bytes>, NetError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            {
                let mut conn = self.lock();
                match conn.reader().read(&mut buf) {
                    Ok(0) => return Ok(None),
                    Ok(n) => {
                        buf.truncate(n);
                        return Ok(Some(Bytes::from(buf)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(tls_err(e)),
                }
            }
            let Some(chunk) = self.inner.read().await? else {
                // The peer closed the socket without close_notify: for
                // this protocol (framed, every message complete or
                // refused) an end of stream.
                return Ok(None);
            };
            let (records, failure) = {
                let mut conn = self.lock();
                let mut rest: &[u8] = &chunk;
                let mut failure = None;
                while !rest.is_empty() {
                    if let Err(e) = conn.read_tls(&mut rest) {
                        failure = Some(tls_err(e));
                        break;
                    }
                    if let Err(e) = conn.process_new_packets() {
                        failure = Some(tls_err(e));
                        break;
                    }
                }
                (Self::drain(&mut conn), failure)
            };
            if !records.is_empty() {
                // Handshake replies and alerts (also the alert that
                // explains a failure to the peer).
                let _order = self.write_order.lock().await;
                self.send_records(records).await?;
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }

    fn close(&self) {
        self.lock().send_close_notify();
        // The close_notify is best effort: the socket closes right after.
        self.inner.close();
    }

    fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr()
    }
}
