//! The byte stream under the WebSocket: plain TCP or rustls over TCP, always non-blocking.

use std::io::{self, Read, Write};
#[cfg(feature = "rustls")]
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, PoisonError};

use mio::net::TcpStream;
#[cfg(feature = "rustls")]
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
#[cfg(feature = "rustls")]
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
#[cfg(feature = "rustls")]
use rustls::pki_types::pem::PemObject;
#[cfg(feature = "rustls")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
#[cfg(feature = "rustls")]
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};

use super::sockopt;
use crate::error::{Error, TlsErrorKind};

/// The byte stream under the WebSocket: plain TCP or rustls over TCP, always
/// non-blocking (reads and writes return `WouldBlock`; the I/O thread waits for
/// readiness). During the opening handshake it keeps a copy of what it read, so that the
/// bytes that came after the response head (the first frames) are handed to the protocol
/// core exactly: see [`Transport::handshake_tail`].
#[derive(Debug)]
pub(crate) struct Transport {
    stream: Stream,
    /// What the handshake read, until it is done.
    recorded: Option<Vec<u8>>,
    /// The socket's receive low-water mark, as last set (0: never set, so 1).
    low_water: usize,
    /// The most the low-water mark may be raised to: a quarter of the socket's receive
    /// buffer, looked up at each large frame's first wait (0 until then).
    low_water_max: usize,
    /// What was left of the large frame at the last wait (a larger value: a new frame).
    low_water_left: usize,
}

/// The largest receive low-water mark asked for while a large frame is read.
const LOW_WATER_MAX: usize = 256 << 10;

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "rustls")]
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    #[cfg(feature = "native-tls")]
    Native(Box<native::State>),
}

/// Which TLS library makes `wss://` connections, chosen with
/// [`Builder::tls_backend`](crate::Builder::tls_backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsBackend {
    /// rustls (feature `rustls`, on by default), with the Mozilla roots of `webpki-roots`.
    Rustls,
    /// The platform's TLS through the `native-tls` crate (feature `native-tls`): OpenSSL
    /// on Linux, Secure Transport on macOS, SChannel on Windows, with the system's roots.
    NativeTls,
}

/// A TLS client configuration, built from the builder's settings.
#[derive(Debug, Clone)]
pub(crate) enum TlsConfig {
    #[cfg(feature = "rustls")]
    Rustls(Arc<ClientConfig>),
    #[cfg(feature = "native-tls")]
    Native(native_tls::TlsConnector),
}

impl Transport {
    /// Wraps a connected socket, starting TLS when the URL's scheme asked for it.
    pub fn new(
        tcp: TcpStream,
        tls: bool,
        host: &str,
        config: Option<&TlsConfig>,
    ) -> Result<Self, Error> {
        let stream = match (tls, config) {
            (false, _) => Stream::Plain(tcp),
            #[cfg(feature = "rustls")]
            (true, Some(TlsConfig::Rustls(config))) => {
                rustls_stream(tcp, host, Arc::clone(config))?
            }
            #[cfg(feature = "native-tls")]
            (true, Some(TlsConfig::Native(connector))) => native::connect(connector, host, tcp)?,
            #[cfg(feature = "rustls")]
            (true, None) => rustls_stream(tcp, host, default_tls_config()?)?,
            #[cfg(all(feature = "native-tls", not(feature = "rustls")))]
            (true, None) => match native::default_connector()? {
                TlsConfig::Native(connector) => native::connect(&connector, host, tcp)?,
            },
            #[cfg(not(any(feature = "rustls", feature = "native-tls")))]
            (true, _) => {
                let _ = host;
                return Err(Error::tls(
                    TlsErrorKind::Unsupported,
                    "wss:// needs TLS, and this build has none: enable the `rustls` feature \
                     of nwebsocket (on by default) or `native-tls`",
                ));
            }
        };
        Ok(Transport {
            stream,
            recorded: Some(Vec::new()),
            low_water: 0,
            low_water_max: 0,
            low_water_left: 0,
        })
    }

    /// The socket under TLS, if any (`None` once a native TLS handshake failed).
    pub fn tcp(&mut self) -> Option<&mut TcpStream> {
        match &mut self.stream {
            Stream::Plain(s) => Some(s),
            #[cfg(feature = "rustls")]
            Stream::Tls(s) => Some(&mut s.sock),
            #[cfg(feature = "native-tls")]
            Stream::Native(s) => s.tcp(),
        }
    }

    /// Whether a read that returned less than it had room for means the socket is
    /// drained, so that the I/O thread need not read again to see `WouldBlock`: true of
    /// a plain socket under an edge-triggered poller (epoll, kqueue), where the kernel
    /// handed over all it held and any byte that comes later raises a new event. (tokio
    /// relies on the same, tokio-rs/tokio#5866.) Not over TLS: a short read of decrypted
    /// bytes says nothing of the socket.
    pub fn short_read_drains(&self) -> bool {
        cfg!(any(
            target_os = "linux",
            target_os = "android",
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "openbsd",
            target_os = "dragonfly"
        )) && matches!(self.stream, Stream::Plain(_))
    }

    /// The bytes in the socket's send queue that the server has not acknowledged (see
    /// `sockopt::unsent`); `None` where that cannot be known.
    pub fn unsent(&mut self) -> Option<usize> {
        self.tcp().and_then(|tcp| sockopt::unsent(tcp).ok())
    }

    /// Whether this is a TLS stream (which may hold decrypted bytes no readiness event
    /// announces).
    pub fn is_tls(&self) -> bool {
        !matches!(self.stream, Stream::Plain(_))
    }

    /// After the opening handshake: the bytes read after the response head, and the end
    /// of recording. The head's length is found by tungstenite's own response parser, the
    /// one the handshake used, on the same bytes, so the split is exact however the
    /// server ended its lines.
    pub fn handshake_tail(&mut self) -> Vec<u8> {
        use tungstenite::handshake::client::Response;
        use tungstenite::handshake::machine::TryParse;
        let recorded = self.recorded.take().unwrap_or_default();
        match Response::try_parse(&recorded) {
            Ok(Some((head, _))) => recorded[head..].to_vec(),
            _ => Vec::new(),
        }
    }

    /// What the handshake read so far (empty once it is done).
    pub fn recorded(&self) -> &[u8] {
        self.recorded.as_deref().unwrap_or_default()
    }

    /// Whether TLS was asked for and no TLS answer (a ServerHello) came yet.
    pub fn tls_before_server_hello(&self) -> bool {
        match &self.stream {
            Stream::Plain(_) => false,
            #[cfg(feature = "rustls")]
            Stream::Tls(s) => s.conn.protocol_version().is_none(),
            #[cfg(feature = "native-tls")]
            Stream::Native(s) => s.handshaking(),
        }
    }

    /// Sets the socket's receive low-water mark for a large frame with `left` bytes to
    /// come (`None`: back to 1 byte), so the I/O thread wakes once a good part of the
    /// rest is here rather than at each segment. Best effort: if the system refuses, the
    /// I/O thread only wakes more often.
    pub fn set_low_water(&mut self, left: Option<usize>) {
        let mark = match left {
            None => 1,
            Some(left) => {
                // A new frame: the receive buffer grows as the kernel tunes it, so look
                // again (once per frame, as it was measured).
                if left > self.low_water_left {
                    self.low_water_max = 0;
                }
                self.low_water_left = left;
                if self.low_water_max == 0 {
                    let buffer = self
                        .tcp()
                        .map_or(0, |tcp| sockopt::receive_buffer(tcp).unwrap_or(0));
                    self.low_water_max = (buffer / 4).max(1);
                }
                left.min(LOW_WATER_MAX).min(self.low_water_max).max(1)
            }
        };
        if mark != self.low_water.max(1)
            && self
                .tcp()
                .is_some_and(|tcp| sockopt::set_low_water(tcp, mark).is_ok())
        {
            self.low_water = mark;
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(buf)?,
            #[cfg(feature = "rustls")]
            Stream::Tls(s) => s.read(buf)?,
            #[cfg(feature = "native-tls")]
            Stream::Native(s) => s.stream()?.read(buf)?,
        };
        if let Some(recorded) = &mut self.recorded {
            recorded.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "rustls")]
            Stream::Tls(s) => {
                let n = s.write(buf)?;
                // rustls keeps encrypted records until flushed.
                match s.flush() {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                    _ => Ok(n),
                }
            }
            #[cfg(feature = "native-tls")]
            Stream::Native(s) => s.stream()?.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "rustls")]
            Stream::Tls(s) => s.flush(),
            #[cfg(feature = "native-tls")]
            Stream::Native(s) => s.stream()?.flush(),
        }
    }
}

/// The transport during the opening handshake. tungstenite's handshake owns its stream
/// and drops it with a failure; this handle keeps a second reference, so that the I/O
/// thread can still read a rejection's body, or look at what was read to explain a
/// failure. The lock is taken only during the handshake, by one thread.
#[derive(Debug, Clone)]
pub(crate) struct Shaking(Arc<Mutex<Transport>>);

impl Shaking {
    pub fn new(transport: Transport) -> Self {
        Shaking(Arc::new(Mutex::new(transport)))
    }

    /// The transport, once tungstenite has let go of its reference.
    pub fn into_inner(self) -> Option<Transport> {
        Arc::try_unwrap(self.0)
            .ok()
            .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Transport> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Read for Shaking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.lock().read(buf)
    }
}

impl Write for Shaking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lock().flush()
    }
}

/// TLS settings from the builder, as given (PEM), checked when connecting.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    pub backend: Option<TlsBackend>,
    /// rustls: the operating system's store instead of webpki-roots.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub os_roots: bool,
    pub extra_roots_pem: Vec<Vec<u8>>,
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub accept_invalid_certs: bool,
}

impl TlsOptions {
    /// `None` when the defaults apply (the shared default config is used then). Without
    /// a TLS feature there is nothing to build (`wss://` fails with
    /// [`TlsErrorKind::Unsupported`] when connecting).
    pub fn build(&self) -> Result<Option<TlsConfig>, Error> {
        #[cfg(not(all(feature = "rustls", feature = "native-tls")))]
        let missing = |feature: &str| {
            Error::tls(
                TlsErrorKind::Unsupported,
                format!("this build has no `{feature}` feature"),
            )
        };
        match self.backend {
            #[cfg(feature = "rustls")]
            None | Some(TlsBackend::Rustls) => self.build_rustls(),
            #[cfg(not(feature = "rustls"))]
            Some(TlsBackend::Rustls) => Err(missing("rustls")),
            #[cfg(feature = "native-tls")]
            Some(TlsBackend::NativeTls) => native::build(self).map(Some),
            #[cfg(all(feature = "native-tls", not(feature = "rustls")))]
            None => native::build(self).map(Some),
            #[cfg(not(feature = "native-tls"))]
            Some(TlsBackend::NativeTls) => Err(missing("native-tls")),
            #[cfg(not(any(feature = "rustls", feature = "native-tls")))]
            None => Ok(None),
        }
    }

    #[cfg(feature = "rustls")]
    fn build_rustls(&self) -> Result<Option<TlsConfig>, Error> {
        if self.extra_roots_pem.is_empty()
            && self.client_cert_pem.is_none()
            && !self.accept_invalid_certs
            && !self.os_roots
        {
            return Ok(None);
        }
        let provider = ring_provider();
        let mut roots = if self.os_roots {
            os_root_store()?
        } else {
            webpki_root_store()
        };
        for pem in &self.extra_roots_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| config_error("bad root certificate PEM", e))?;
                roots
                    .add(cert)
                    .map_err(|e| config_error("unusable root certificate", e))?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::tls(
                    TlsErrorKind::Config,
                    "no certificate in the root certificate PEM",
                ));
            }
        }
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("no usable protocol version", e))?;
        let builder = if self.accept_invalid_certs {
            log::warn!("TLS certificate verification is OFF: any server can impersonate any host");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots)
        };
        let config = match &self.client_cert_pem {
            None => builder.with_no_client_auth(),
            Some((chain_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(chain_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| config_error("bad client certificate PEM", e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| config_error("bad client key PEM", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| config_error("unusable client certificate", e))?
            }
        };
        Ok(Some(TlsConfig::Rustls(Arc::new(config))))
    }
}

#[cfg(feature = "rustls")]
fn rustls_stream(tcp: TcpStream, host: &str, config: Arc<ClientConfig>) -> Result<Stream, Error> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls {
        kind: TlsErrorKind::Config,
        message: format!("{host:?} cannot be a TLS server name"),
        source: Some(Arc::new(e)),
    })?;
    let conn = ClientConnection::new(config, name).map_err(tls_failure)?;
    Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

/// The platform's TLS through `native-tls`, driven without blocking: the handshake is
/// resumed by each read or write until it is done.
#[cfg(feature = "native-tls")]
mod native {
    use std::io;
    use std::sync::Arc;

    use mio::net::TcpStream;
    use native_tls::{HandshakeError, MidHandshakeTlsStream, TlsConnector, TlsStream};

    use super::{Stream, TlsConfig, TlsOptions};
    use crate::error::{Error, TlsErrorKind};

    #[derive(Debug)]
    pub(super) enum State {
        Handshaking(MidHandshakeTlsStream<TcpStream>),
        Ready(TlsStream<TcpStream>),
        /// The handshake failed (its error was returned once); the socket is gone.
        Failed,
    }

    impl State {
        pub fn tcp(&mut self) -> Option<&mut TcpStream> {
            match self {
                State::Handshaking(s) => Some(s.get_mut()),
                State::Ready(s) => Some(s.get_mut()),
                State::Failed => None,
            }
        }

        pub fn handshaking(&self) -> bool {
            matches!(self, State::Handshaking(_))
        }

        /// The TLS stream, once the handshake is done; `WouldBlock` while it goes on.
        pub fn stream(&mut self) -> io::Result<&mut TlsStream<TcpStream>> {
            if let State::Handshaking(_) = self {
                if let State::Handshaking(mid) = std::mem::replace(self, State::Failed) {
                    match mid.handshake() {
                        Ok(stream) => *self = State::Ready(stream),
                        Err(HandshakeError::WouldBlock(mid)) => {
                            *self = State::Handshaking(mid);
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        Err(HandshakeError::Failure(e)) => return Err(io::Error::other(e)),
                    }
                }
            }
            match self {
                State::Ready(stream) => Ok(stream),
                _ => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS handshake failed",
                )),
            }
        }
    }

    pub(super) fn connect(
        connector: &TlsConnector,
        host: &str,
        tcp: TcpStream,
    ) -> Result<Stream, Error> {
        let state = match connector.connect(host, tcp) {
            Ok(stream) => State::Ready(stream),
            Err(HandshakeError::WouldBlock(mid)) => State::Handshaking(mid),
            Err(HandshakeError::Failure(e)) => {
                let mut error = classify(&e.to_string());
                if let Error::Tls { source, .. } = &mut error {
                    *source = Some(Arc::new(e));
                }
                return Err(error);
            }
        };
        Ok(Stream::Native(Box::new(state)))
    }

    #[cfg(not(feature = "rustls"))]
    pub(super) fn default_connector() -> Result<TlsConfig, Error> {
        build(&TlsOptions::default())
    }

    pub(super) fn build(options: &TlsOptions) -> Result<TlsConfig, Error> {
        let config_error = |what: &str, e: native_tls::Error| Error::Tls {
            kind: TlsErrorKind::Config,
            message: what.to_owned(),
            source: Some(Arc::new(e)),
        };
        let mut builder = TlsConnector::builder();
        for pem in &options.extra_roots_pem {
            let text = String::from_utf8_lossy(pem);
            let mut added = 0;
            for block in text.split_inclusive("-----END CERTIFICATE-----") {
                if !block.contains("-----BEGIN CERTIFICATE-----") {
                    continue;
                }
                let cert = native_tls::Certificate::from_pem(block.trim().as_bytes())
                    .map_err(|e| config_error("bad root certificate PEM", e))?;
                builder.add_root_certificate(cert);
                added += 1;
            }
            if added == 0 {
                return Err(Error::tls(
                    TlsErrorKind::Config,
                    "no certificate in the root certificate PEM",
                ));
            }
        }
        if let Some((chain, key)) = &options.client_cert_pem {
            let identity = native_tls::Identity::from_pkcs8(chain, key).map_err(|e| {
                config_error("unusable client certificate (the key must be PKCS#8)", e)
            })?;
            builder.identity(identity);
        }
        if options.accept_invalid_certs {
            log::warn!("TLS certificate verification is OFF: any server can impersonate any host");
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        builder
            .build()
            .map(TlsConfig::Native)
            .map_err(|e| config_error("the platform's TLS cannot be set up", e))
    }

    /// The native TLS failure inside an I/O error, if that is what it is. The platforms'
    /// errors have no common kinds: certificate failures are told by their words.
    pub(super) fn io_error(err: &io::Error) -> Option<Error> {
        let e = err.get_ref()?.downcast_ref::<native_tls::Error>()?;
        let shown = e.to_string();
        let mut error = classify(&shown);
        if let Error::Tls { source, .. } = &mut error {
            // native_tls::Error is not Clone: its words are kept.
            *source = Some(Arc::new(io::Error::other(shown)));
        }
        Some(error)
    }

    fn classify(text: &str) -> Error {
        let lower = text.to_lowercase();
        let (kind, message) = if lower.contains("certificate") || lower.contains("verify") {
            (
                TlsErrorKind::Certificate,
                "the server's certificate was not accepted",
            )
        } else if lower.contains("wrong version number") || lower.contains("packet length") {
            (
                TlsErrorKind::NotTls,
                "the server did not answer in TLS: is this a plain ws:// port?",
            )
        } else {
            (TlsErrorKind::Other, "the TLS session failed")
        };
        Error::tls(kind, message)
    }
}

/// rustls's *ring* provider. rustls 0.23.48 deprecates it ("no support for post-quantum
/// algorithms") in favour of aws-lc-rs; we keep *ring*: aws-lc-rs needs a C compiler and
/// CMake (and about doubles the clean build), and the key exchange that *ring* lacks
/// (X25519MLKEM768) only protects against a future quantum attacker. With a fresh resolve
/// the deprecation would otherwise warn in every build of this crate.
#[cfg(feature = "rustls")]
#[allow(deprecated)]
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The operating system's certificate store, read with `rustls-native-certs`.
#[cfg(feature = "rustls-native-certs")]
fn os_root_store() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        log::warn!("reading the system's certificate store: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    log::debug!("{added} roots from the system's store ({ignored} unusable)");
    if added == 0 {
        return Err(Error::tls(
            TlsErrorKind::Config,
            "no usable certificate in the operating system's store",
        ));
    }
    Ok(roots)
}

#[cfg(all(feature = "rustls", not(feature = "rustls-native-certs")))]
fn os_root_store() -> Result<RootCertStore, Error> {
    Err(Error::tls(
        TlsErrorKind::Unsupported,
        "the system's certificate store needs the `rustls-native-certs` feature",
    ))
}

#[cfg(feature = "rustls")]
fn webpki_root_store() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// rustls with the `ring` provider and the Mozilla roots from `webpki-roots`, built once
/// per process. The roots are compiled in, so `wss://` works the same on every machine.
#[cfg(feature = "rustls")]
fn default_tls_config() -> Result<Arc<ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, rustls::Error>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = ring_provider();
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    Arc::new(
                        b.with_root_certificates(webpki_root_store())
                            .with_no_client_auth(),
                    )
                })
        })
        .clone()
        .map_err(|e| config_error("no usable protocol version", e))
}

/// The explicit opt-out of certificate verification: any certificate is taken, but the
/// handshake signatures are still checked, so the session is encrypted to *someone*.
#[cfg(feature = "rustls")]
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

#[cfg(feature = "rustls")]
impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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

/// The TLS failure inside an I/O error, as the crate reports it, if that is what it is.
pub(crate) fn tls_io_error(err: &io::Error) -> Option<Error> {
    #[cfg(feature = "rustls")]
    if let Some(e) = err.get_ref()?.downcast_ref::<rustls::Error>() {
        return Some(tls_failure(e.clone()));
    }
    #[cfg(feature = "native-tls")]
    if let Some(e) = native::io_error(err) {
        return Some(e);
    }
    let _ = err;
    None
}

/// Whether this I/O error says the peer's bytes are not TLS at all.
pub(crate) fn not_tls_bytes(err: &io::Error) -> bool {
    #[cfg(feature = "rustls")]
    if let Some(e) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return matches!(
            e,
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }
        );
    }
    let _ = err;
    false
}

#[cfg(feature = "rustls")]
fn config_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Tls {
        kind: TlsErrorKind::Config,
        message: what.to_owned(),
        source: Some(Arc::new(e)),
    }
}

/// What to do about a self-signed certificate that webpki refuses.
#[cfg(feature = "rustls")]
pub(crate) const SELF_SIGNED_HINT: &str =
    "the server presents a CA certificate (or a self-signed one) as its own, \
     which webpki refuses even when it is added as a root (CaUsedAsEndEntity): make a CA \
     and a server certificate signed by it, and add the CA with `add_root_certificate` \
     (README, section TLS)";

/// A rustls failure as the crate reports it: a kind to match on, a message with a hint
/// where one helps, and rustls's error as the source.
#[cfg(feature = "rustls")]
pub(crate) fn tls_failure(e: rustls::Error) -> Error {
    use rustls::{CertificateError, Error as R};
    let (kind, message) = match &e {
        R::InvalidCertificate(CertificateError::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            (TlsErrorKind::Certificate, SELF_SIGNED_HINT.to_owned())
        }
        R::InvalidCertificate(CertificateError::UnknownIssuer) => (
            TlsErrorKind::Certificate,
            "the server's certificate was not accepted: no trusted root issued it (for a \
             private CA, add it with `add_root_certificate`)"
                .to_owned(),
        ),
        R::InvalidCertificate(_) => (
            TlsErrorKind::Certificate,
            "the server's certificate was not accepted".to_owned(),
        ),
        R::AlertReceived(_) => (
            TlsErrorKind::Refused,
            "the server refused the TLS handshake".to_owned(),
        ),
        R::InvalidMessage(_) | R::InappropriateMessage { .. } => (
            TlsErrorKind::Other,
            "the server sent an invalid TLS message".to_owned(),
        ),
        _ => (TlsErrorKind::Other, "the TLS session failed".to_owned()),
    };
    Error::Tls {
        kind,
        message,
        source: Some(Arc::new(e)),
    }
}

/// The server did not answer in TLS.
pub(crate) fn not_tls(source: Option<crate::error::Source>) -> Error {
    Error::Tls {
        kind: TlsErrorKind::NotTls,
        message: "the server did not answer in TLS: is this a plain ws:// port?".to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::Transport;
    use std::io::Write;

    #[test]
    fn the_handshake_tail_is_exact_with_bare_line_feeds() {
        for head in [
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"[..],
            &b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\n\n"[..],
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            let mut t =
                Transport::new(mio::net::TcpStream::from_std(client), false, "h", None).unwrap();
            let mut wire = head.to_vec();
            wire.extend_from_slice(b"\x82\x04\r\n\r\n");
            peer.write_all(&wire).unwrap();
            let mut got = Vec::new();
            while got.len() < wire.len() {
                let mut buf = [0u8; 7];
                let n = std::io::Read::read(&mut t, &mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(t.handshake_tail(), b"\x82\x04\r\n\r\n");
        }
    }
}
