//! The `https` check: a TLS session to the backend, then the `http` check
//! over it. The load balancer passes TLS through untouched, so this is what
//! proves a backend's HTTPS answers: SNI is `host` (or none for an address),
//! and the certificate is verified against the system's roots or
//! `tls_ca_file`, unless `tls_verify = false`.

use std::{net::SocketAddr, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{
    check::Check,
    http::{self, HttpError},
};
use crate::config::CheckConfig;

/// How a TLS check fails.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The check's own TLS settings could not be made (a CA file that
    /// cannot be read, no trusted roots): this host's fault.
    #[error("{0}")]
    Settings(String),
    #[error("TLS name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("TLS: {0}")]
    Handshake(#[source] std::io::Error),
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// `kind = "https"`: its TLS settings are built once per set of probes
/// (reading the CA file or the system's roots), not per probe.
pub struct HttpsCheck {
    spec: CheckConfig,
    tls: Result<Arc<ClientConfig>, String>,
}

impl HttpsCheck {
    pub fn new(spec: CheckConfig) -> HttpsCheck {
        let tls = client_config(&spec);
        HttpsCheck { spec, tls }
    }
}

impl Check for HttpsCheck {
    type Error = HttpsError;

    async fn run(&self, stream: TcpStream, peer: SocketAddr) -> Result<(), HttpsError> {
        let tls = self
            .tls
            .as_ref()
            .map_err(|e| HttpsError::Settings(e.clone()))?;
        request(stream, peer, &self.spec, tls).await
    }
}

/// The TLS client settings of a check (built once per set of probes).
pub fn client_config(spec: &CheckConfig) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = if !spec.tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &spec.tls_ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(
                "TLS: no trusted certificates (set tls_ca_file, or tls_verify = false)".into(),
            );
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Handshake over `stream`, then GET as the `http` check does.
pub async fn request(
    stream: TcpStream,
    addr: SocketAddr,
    spec: &CheckConfig,
    tls: &Arc<ClientConfig>,
) -> Result<(), HttpsError> {
    let name = match &spec.host {
        Some(h) => ServerName::try_from(h.clone()).map_err(|e| HttpsError::Name {
            name: h.clone(),
            reason: e.to_string(),
        })?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let mut session = TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(HttpsError::Handshake)?;
    Ok(http::request(&mut session, spec).await?)
}

/// `tls_verify = false`: any certificate is accepted, but the handshake's
/// signatures are still checked (the session is real TLS, just not
/// authenticated).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A TLS server on loopback with a certificate for `name`, answering
    /// every request with 204; returns its address and the CA (self-signed).
    async fn server(name: &str) -> (SocketAddr, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = cert.pem();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 512];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, pem)
    }

    fn spec(text: &str) -> CheckConfig {
        toml::from_str(&format!("kind = \"https\"\n{text}")).unwrap()
    }

    async fn probe(addr: SocketAddr, spec: &CheckConfig) -> Result<(), String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        HttpsCheck::new(spec.clone())
            .run(stream, addr)
            .await
            .map_err(|e| e.to_string())
    }

    #[test]
    fn verifies_the_certificate_against_the_name_and_the_ca() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (addr, ca) = server("www.foobar.com").await;
            let dir = std::env::temp_dir().join(format!("xdplb-https-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let ca_file = dir.join("ca.pem");
            std::fs::write(&ca_file, &ca).unwrap();
            let trusted = format!("tls_ca_file = {:?}\n", ca_file.display().to_string());
            // The right name and CA: passes.
            probe(addr, &spec(&format!("{trusted}host = \"www.foobar.com\"")))
                .await
                .expect("verified session");
            // Another name: the certificate does not match.
            let e = probe(addr, &spec(&format!("{trusted}host = \"other.example\"")))
                .await
                .unwrap_err();
            assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
            // Not trusted: the system roots do not know this CA.
            let e = probe(addr, &spec("host = \"www.foobar.com\""))
                .await
                .unwrap_err();
            assert!(e.contains("TLS"), "{e}");
            // Verification off: any certificate will do, the HTTP check runs.
            probe(addr, &spec("tls_verify = false"))
                .await
                .expect("unverified session");
            // A status out of range still fails over TLS.
            let e = probe(addr, &spec("tls_verify = false\nstatus = [200, 200]"))
                .await
                .unwrap_err();
            assert!(e.contains("HTTP status 204"), "{e}");
            let _ = std::fs::remove_dir_all(&dir);
            let _ = Ipv4Addr::LOCALHOST;
        });
    }
}
