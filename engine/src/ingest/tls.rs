//! The gateway's listener: plain TCP, or TLS from files (rustls with the ring provider), with
//! optional client certificates (mutual TLS).
//!
//! Owns loading the certificate, key and client CA, the TLS handshakes (done beside the accept
//! loop, a bounded number at a time and each with a time limit, so a slow or silent client
//! never holds up others), and naming the peer: its address and, under mutual TLS, the common
//! name of its verified certificate. It never reads requests.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::IngestError;
use crate::config::IngestTls;
use crate::metrics::Metrics;

/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;
/// Time a client gets to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Under mutual TLS, the common name of the client's verified certificate (made safe to
    /// record: letters, digits, `.`, `_`, `-`), or `client-certificate` when it has none.
    pub certificate: Option<String>,
}

/// Builds the rustls server config from the files named in `ingest.tls`.
pub fn server_config(tls: &IngestTls) -> Result<Arc<ServerConfig>, IngestError> {
    let fail = |path: &std::path::Path, reason: String| IngestError::Tls {
        path: path.to_owned(),
        reason,
    };
    let certs = read_certs(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| fail(&tls.key_file, format!("no usable private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&tls.cert_file, e.to_string()))?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| fail(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        fail(
            &tls.cert_file,
            format!("certificate and key do not fit: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, IngestError> {
    let fail = |reason: String| IngestError::Tls {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

/// The gateway's listener, for `axum::serve`.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    handshakes: JoinSet<Option<(Conn, Peer)>>,
    metrics: Arc<Metrics>,
}

impl Listener {
    /// Binds `addr`; TLS when `tls` is given.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Listener> {
        Ok(Listener {
            tcp: TcpListener::bind(addr).await?,
            tls: tls.map(TlsAcceptor::from),
            handshakes: JoinSet::new(),
            metrics,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Accepts the next TCP connection, riding out errors that concern one connection.
async fn accept_tcp(tcp: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match tcp.accept().await {
            Ok((stream, addr)) => {
                // Answers are small: send them now rather than wait for more to write.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                return (stream, addr);
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // Out of file descriptors or similar: wait instead of spinning.
                tracing::error!(error = %e, "ingest: accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Option<(Conn, Peer)> {
    let refused = |reason: String| {
        tracing::info!(peer = %addr, %reason, "ingest: TLS handshake failed");
        metrics
            .ingest_auth_failures
            .get_or_create(&Metrics::label("reason", "tls_handshake"))
            .inc();
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| certificate_name(c.as_ref()));
            Some((Conn::Tls(Box::new(tls)), Peer { addr, certificate }))
        }
        Ok(Err(e)) => {
            refused(e.to_string());
            None
        }
        Err(_) => {
            refused(format!("not completed within {HANDSHAKE_TIMEOUT:?}"));
            None
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        let Some(acceptor) = self.tls.clone() else {
            let (stream, addr) = accept_tcp(&self.tcp).await;
            return (
                Conn::Plain(stream),
                Peer {
                    addr,
                    certificate: None,
                },
            );
        };
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            let busy = !self.handshakes.is_empty();
            tokio::select! {
                (stream, addr) = accept_tcp(&self.tcp), if room => {
                    self.handshakes.spawn(handshake(acceptor.clone(), stream, addr, self.metrics.clone()));
                }
                Some(done) = self.handshakes.join_next(), if busy => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.tcp.local_addr()?,
            certificate: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A connection, plain or TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The name recorded for a verified client certificate: its subject's common name, kept to
/// letters, digits, `.`, `_` and `-` (others become `-`, at most 64), or `client-certificate`.
pub fn certificate_name(der: &[u8]) -> String {
    let safe: String = common_name(der)
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if safe.is_empty() {
        "client-certificate".to_owned()
    } else {
        safe
    }
}

/// The subject common name (OID 2.5.4.3) of a DER certificate. Reads only the few DER
/// elements on the way to the subject; anything unexpected gives `None`.
fn common_name(der: &[u8]) -> Option<String> {
    const CN: [u8; 3] = [0x55, 0x04, 0x03];
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xA0 {
        rest = after; // explicit version
    }
    for _ in 0..4 {
        let (_, _, after) = tlv(rest)?; // serial, signature algorithm, issuer, validity
        rest = after;
    }
    let (_, mut rdns, _) = tlv(rest)?;
    while !rdns.is_empty() {
        let (_, mut set, after) = tlv(rdns)?;
        rdns = after;
        while !set.is_empty() {
            let (_, pair, after) = tlv(set)?;
            set = after;
            let (tag, oid, value) = tlv(pair)?;
            if tag == 0x06 && oid == CN {
                let (_, text, _) = tlv(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// One DER element: tag, content, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A client certificate made with
    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes
    /// -subj "/O=riposte tests/CN=falco node-1" -days 1`.
    const CLIENT_PEM: &str = include_str!("testdata/client-cert.pem");

    #[test]
    fn a_client_certificate_is_named_by_its_common_name() {
        let der = CertificateDer::from_pem_slice(CLIENT_PEM.as_bytes()).unwrap();
        assert_eq!(common_name(der.as_ref()).as_deref(), Some("falco node-1"));
        assert_eq!(certificate_name(der.as_ref()), "falco-node-1");
    }

    #[test]
    fn garbage_is_no_name() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(
            certificate_name(&[0x30, 0x03, 0x02, 0x01]),
            "client-certificate"
        );
        let der = CertificateDer::from_pem_slice(CLIENT_PEM.as_bytes()).unwrap();
        for cut in 0..der.as_ref().len() {
            let _ = common_name(der.as_ref().get(..cut).unwrap());
        }
    }
}
