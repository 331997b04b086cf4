//! TLS on the gRPC port, done here rather than by tonic so that the server certificate can
//! be replaced while the server runs (`admin server-cert renew`): a new connection gets the
//! certificate current at its handshake; open connections keep theirs. Client certificates
//! are verified against the operator CA exactly as before, and tonic still sees each
//! connection's client certificate (`Request::peer_certs`), which `identity` maps to a
//! principal.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;
use tonic::transport::server::TcpIncoming;

use super::idle::IdleTimeout;
use crate::metrics::Metrics;

/// A TLS handshake not finished by then is dropped. Handshakes run side by side (each
/// holds one of `max_connections`), so slow ones cannot hold up the others.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The certificate the server presents, replaceable while it runs.
pub struct ServerCertificate {
    current: RwLock<(Arc<CertifiedKey>, String)>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCertificate")
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("server certificate: {err}"))?;
    anyhow::ensure!(!chain.is_empty(), "server certificate: no certificate in the PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|err| anyhow::anyhow!("server key: {err}"))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|err| anyhow::anyhow!("server key: {err}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

impl ServerCertificate {
    pub fn new(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<ServerCertificate>> {
        Ok(Arc::new(ServerCertificate {
            current: RwLock::new((certified_key(cert_pem, key_pem)?, cert_pem.to_owned())),
        }))
    }

    /// Presents `cert_pem` to every connection from now on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let key = certified_key(cert_pem, key_pem)?;
        *self.current.write() = (key, cert_pem.to_owned());
        Ok(())
    }

    /// The current certificate, as PEM.
    pub fn pem(&self) -> String {
        self.current.read().1.clone()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().0.clone())
    }
}

/// Mutual TLS: client certificates signed by the operator CA are required; HTTP/2 only.
pub fn server_config(ca_pem: &str, certificate: Arc<ServerCertificate>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.map_err(|err| anyhow::anyhow!("CA certificate: {err}"))?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Connections of `incoming` after their TLS handshake, each held to `idle_limit` and to
/// one of `slots` (closed at accept when none is free). A failed handshake is dropped.
/// Connections after their TLS handshake, in the order they completed.
pub type Accepted = tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<IdleTimeout<TcpStream>>>>;

pub fn accept(
    incoming: TcpIncoming,
    config: Arc<rustls::ServerConfig>,
    idle_limit: std::time::Duration,
    slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
) -> Accepted {
    let (ready, handshaken) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        while let Some(accepted) = incoming.next().await {
            let stream = match accepted {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%err, "accept failed");
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.connections_refused.inc();
                tracing::warn!(peer = ?stream.peer_addr().ok(), "max_connections reached; closing a new connection");
                continue;
            };
            let stream = IdleTimeout::new(stream, idle_limit).holding(slot);
            if ready.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%err, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(handshaken)
}
