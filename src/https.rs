//! One HTTPS request by hand over tokio-rustls, for the two places that need no more: the
//! console's S3 endpoint check (a GET) and the events webhook (a POST). Each reads only the
//! answer's status line. Rustls on aws-lc (the S3 client's TLS stack), checking against the
//! system's CA certificates and, where given, those of a PEM file.
//!
//! A leaf: tokio-rustls and the system's CA store, no state. It knows nothing of S3, the console or
//! webhooks.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// The longest status line read.
const STATUS_LINE_BYTES_MAX: usize = 512;

/// Connects TLS over `stream` to `host`, trusting the system's CA certificates and those in
/// `extra_ca` (PEM).
pub async fn connect(
    stream: TcpStream,
    host: &str,
    extra_ca: Option<&Path>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = extra_ca {
        let bad =
            |e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", ca.display()));
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
    }
    if roots.is_empty() {
        return Err(std::io::Error::other(
            "no CA certificates on this box to check the server's TLS certificate",
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
        .map_err(|e| std::io::Error::other(format!("TLS server name {host}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| std::io::Error::other(format!("TLS: {e}")))
}

/// Reads the first line of an HTTP answer, e.g. `HTTP/1.1 204 No Content`.
pub async fn status_line<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < STATUS_LINE_BYTES_MAX {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("").trim().to_owned();
    if line.starts_with("HTTP/") {
        Ok(line)
    } else if line.is_empty() {
        Err(std::io::Error::other(
            "the connection closed without an answer",
        ))
    } else {
        Err(std::io::Error::other(format!("not HTTP: {line:.60}")))
    }
}

/// The status code of a status line.
pub fn status_code(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1)?.parse().ok()
}
