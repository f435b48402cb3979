//! The byte stream under the WebSocket: plain TCP or rustls over TCP, always non-blocking.

use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::error::Error;

/// What the tungstenite `WebSocket` reads and writes. Both variants are non-blocking:
/// reads and writes return `WouldBlock` and the I/O thread waits for readiness.
#[derive(Debug)]
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// Wraps a connected socket, starting TLS when the URL's scheme asked for it.
    pub fn new(tcp: TcpStream, tls: bool, host: &str) -> Result<Self, Error> {
        if !tls {
            return Ok(Transport::Plain(tcp));
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::Tls(format!("invalid server name {host:?}: {e}")))?;
        let conn = ClientConnection::new(default_tls_config()?, name)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Transport::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(bufs),
            Transport::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// rustls with the `ring` provider and the Mozilla roots from `webpki-roots`, built once
/// per process. The roots are compiled in, so `wss://` works the same on every machine.
fn default_tls_config() -> Result<Arc<ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::Tls)
}

/// The rustls error inside an I/O error, if that is what it is.
pub(crate) fn tls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}
