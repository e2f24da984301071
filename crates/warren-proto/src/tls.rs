//! TLS for `https://` agent endpoints (an E2B-style edge in front of envd).
//!
//! Roots: the Mozilla set (webpki-roots) plus, when `SSL_CERT_FILE` names a
//! PEM file, the certificates in it, for an E2B-compatible service behind a
//! private CA. HTTP/2 is required and negotiated by ALPN.

use std::io;

/// Opens TLS to `host` (`NAME:PORT`; the name is used for SNI and the
/// certificate check) over an established stream.
#[cfg(feature = "tls")]
pub async fn connect<S>(host: &str, stream: S) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use rustls_pki_types::ServerName;
    let name = host.rsplit_once(':').map_or(host, |(n, _)| n).trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS server name {name:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config()?);
    let tls = connector.connect(server_name, stream).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{host} did not negotiate HTTP/2 (ALPN h2), which the agent protocol needs"),
        ));
    }
    Ok(tls)
}

#[cfg(feature = "tls")]
fn config() -> io::Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
    use std::sync::{Arc, OnceLock};
    use tokio_rustls::rustls;
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let built = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
            use rustls_pki_types::pem::PemObject as _;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("SSL_CERT_FILE {}: {e}", path.to_string_lossy()))?;
            for c in certs {
                let c = c.map_err(|e| format!("SSL_CERT_FILE {}: {e}", path.to_string_lossy()))?;
                roots.add(c).map_err(|e| format!("SSL_CERT_FILE {}: {e}", path.to_string_lossy()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    });
    built.clone().map_err(io::Error::other)
}

/// Without the `tls` feature an `https://` endpoint is a clear error.
#[cfg(not(feature = "tls"))]
pub async fn connect<S>(host: &str, _stream: S) -> io::Result<S> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("cannot reach https://{host}: warren-proto was built without its `tls` feature"),
    ))
}
