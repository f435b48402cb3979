//! Reaching OPEN: DNS, the TCP connect to each address in turn, an HTTP CONNECT tunnel
//! through a proxy, TLS and tungstenite's client handshake, and redirects. Each step is
//! resumed on readiness events and never blocks (but the resolver, which the connect
//! timeout bounds).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;
use tungstenite::client::IntoClientRequest;
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::handshake::client::{ClientHandshake, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{header, HeaderName, HeaderValue};
use tungstenite::protocol::WebSocketConfig;

use super::transport::{tls_error, Transport};
use super::{Io, IoThread, Open, Phase, SOCKET};
use crate::config::Config;
use crate::error::{Error, UrlError};
use crate::message::Event;
use crate::protocol::{after, Connection, End, Limits, Timers};
use crate::state::ReadyState;
use crate::url::Target;

impl IoThread {
    /// DNS, on this thread (the resolver blocks; the connect timeout bounds the rest).
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn resolve(&mut self) -> Result<(), End> {
        self.io.request = Some(build_request(&self.io.target, &self.io.shared.config)?);
        self.io.proxy = super::proxy::for_target(&self.io.shared.config.proxy, &self.io.target)?;
        let (host, port) = match &self.io.proxy {
            Some(proxy) => {
                log::debug!(
                    "{}: through proxy {}:{}",
                    self.io.url(),
                    proxy.host,
                    proxy.port
                );
                (proxy.host.clone(), proxy.port)
            }
            None => (self.io.target.host.clone(), self.io.target.port),
        };
        let addrs: VecDeque<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| Error::Dns {
                host: host.clone(),
                source: Arc::new(e),
            })?
            .collect();
        if addrs.is_empty() {
            let e = io::Error::new(io::ErrorKind::NotFound, "no addresses");
            return Err(Error::Dns {
                host,
                source: Arc::new(e),
            }
            .into());
        }
        log::debug!("{}: resolved to {addrs:?}", self.io.url());
        self.phase = Phase::Connecting {
            addrs,
            tcp: None,
            last_error: None,
        };
        self.connect_next()
    }

    /// Starts a non-blocking connect to the next address.
    fn connect_next(&mut self) -> Result<(), End> {
        let Phase::Connecting {
            addrs,
            tcp,
            last_error,
        } = &mut self.phase
        else {
            return Ok(());
        };
        if let Some(mut old) = tcp.take() {
            let _ = self.io.poll.registry().deregister(&mut old);
        }
        while let Some(addr) = addrs.pop_front() {
            log::debug!("connecting to {addr}");
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    self.io
                        .poll
                        .registry()
                        .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
                        .map_err(Error::io)?;
                    *tcp = Some(stream);
                    return Ok(());
                }
                Err(e) => *last_error = Some(e),
            }
        }
        let e = last_error
            .take()
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to"));
        Err(Error::Connect(Arc::new(e)).into())
    }

    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn progress_connect(&mut self) -> Result<(), End> {
        let Phase::Connecting {
            tcp: Some(stream),
            last_error,
            ..
        } = &mut self.phase
        else {
            return Ok(());
        };
        // mio's recipe: an error, or a peer address once connected.
        let failure = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            log::debug!("connect failed: {e}");
            *last_error = Some(e);
            return self.connect_next();
        }
        let Phase::Connecting { tcp: Some(tcp), .. } =
            std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Ok(());
        };
        let io = &mut self.io;
        log::debug!("{}: TCP connected", io.url());
        tcp.set_nodelay(io.shared.config.nodelay)
            .map_err(Error::io)?;
        io.handshake_deadline = after(Instant::now(), Some(io.shared.config.handshake_timeout));
        match &io.proxy {
            Some(proxy) => {
                self.phase = Phase::Tunneling {
                    out: proxy.connect_request(&io.target),
                    tcp,
                    written: 0,
                    answer: Vec::new(),
                };
                self.progress_tunnel()
            }
            None => self.start_handshake(tcp),
        }
    }

    /// Writes the CONNECT request and reads the proxy's answer, without blocking.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn progress_tunnel(&mut self) -> Result<(), End> {
        let Phase::Tunneling {
            tcp,
            out,
            written,
            answer,
        } = &mut self.phase
        else {
            return Ok(());
        };
        let broken = |e: io::Error| Error::Proxy(format!("the tunnel broke: {e}"));
        while *written < out.len() {
            match tcp.write(&out[*written..]) {
                Ok(0) => return Err(broken(io::ErrorKind::WriteZero.into()).into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(broken(e).into()),
            }
        }
        loop {
            let mut chunk = [0u8; 512];
            match tcp.read(&mut chunk) {
                Ok(0) => return Err(broken(io::ErrorKind::UnexpectedEof.into()).into()),
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    if super::proxy::parse_connect_response(answer)?.is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(broken(e).into()),
            }
        }
        let Phase::Tunneling { tcp, .. } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        log::debug!("{}: proxy tunnel open", self.io.url());
        self.start_handshake(tcp)
    }

    /// TLS (for `wss://`) and the WebSocket upgrade, over a connected socket or tunnel.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn start_handshake(&mut self, tcp: TcpStream) -> Result<(), End> {
        let io = &mut self.io;
        let target = &io.target;
        let tls = io.shared.config.tls.as_ref();
        let transport = Transport::new(tcp, target.tls, &target.host, tls)?;
        let Some(request) = io.request.take() else {
            return Err(Error::Handshake("request already used".into()).into());
        };
        let result =
            tungstenite::client::client_with_config(request, transport, Some(io.ws_config()));
        self.handshake_result(result)
    }

    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn progress_handshake(&mut self) -> Result<(), End> {
        let Phase::Handshaking(mid) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        self.handshake_result(mid.handshake())
    }

    fn handshake_result(
        &mut self,
        result: Result<
            (tungstenite::WebSocket<Transport>, Response),
            HandshakeError<ClientHandshake<Transport>>,
        >,
    ) -> Result<(), End> {
        match result {
            Ok((ws, response)) => {
                #[cfg(feature = "deflate")]
                let negotiated = self.io.opened(&response)?;
                #[cfg(not(feature = "deflate"))]
                self.io.opened(&response)?;
                let mut transport = ws.into_inner();
                let tail = transport.handshake_tail();
                let now = Instant::now();
                #[allow(unused_mut)] // without deflate
                let mut conn = Connection::new(self.io.limits(), self.io.timers(), &tail, now);
                #[cfg(feature = "deflate")]
                if let Some(params) = negotiated {
                    conn.inflate_with(&params);
                }
                self.phase = Phase::Open(Box::new(Open { conn, transport }));
                // The handshake's reads consumed the readiness edges: look once.
                self.io.readable = true;
                Ok(())
            }
            Err(HandshakeError::Interrupted(mid)) => {
                self.phase = Phase::Handshaking(mid);
                Ok(())
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(response)))
                if redirect_location(&response).is_some() =>
            {
                let location = redirect_location(&response).unwrap_or_default();
                self.redirect(&location)
            }
            Err(HandshakeError::Failure(e)) => {
                Err(map_error(e, true, &self.io.shared.config).into())
            }
        }
    }

    /// Follows a redirect of the opening handshake: a new attempt at the new target.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn redirect(&mut self, location: &str) -> Result<(), End> {
        let io = &mut self.io;
        let config = &io.shared.config;
        if io.redirects >= config.max_redirects {
            return Err(Error::TooManyRedirects {
                limit: config.max_redirects,
                location: location.to_owned(),
            }
            .into());
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::Handshake(format!("bad redirect location {location:?}: {e}"))
        };
        let joined = io.target.url.join(location).map_err(|e| bad(&e))?;
        let mut next = crate::url::parse(joined.as_str()).map_err(|e| bad(&e))?;
        if io.target.tls && !next.tls {
            let refused = format!("refused redirect from wss:// to {}", next.url);
            return Err(Error::Handshake(refused).into());
        }
        if (&next.host, next.port) == (&io.target.host, io.target.port) {
            next.credentials = next.credentials.or_else(|| io.target.credentials.clone());
        } else {
            // URL credentials are for the host they were written for.
            next.credentials = None;
        }
        io.redirects += 1;
        log::info!(
            "{}: redirected ({}/{}) to {}",
            io.url(),
            io.redirects,
            config.max_redirects,
            next.url
        );
        io.connect_deadline = after(Instant::now(), Some(config.connect_timeout));
        io.target = next;
        self.phase = Phase::Done;
        self.resolve()
    }
}

impl Io {
    pub(super) fn ws_config(&self) -> WebSocketConfig {
        let c = &self.shared.config;
        WebSocketConfig::default()
            .read_buffer_size(c.read_buffer_size)
            .max_message_size(Some(c.max_message_size))
            .max_frame_size(Some(c.max_frame_size))
    }

    /// The handshake succeeded: check what the server chose, go OPEN, report `Open`.
    /// Returns the permessage-deflate parameters, if negotiated.
    fn opened(&mut self, response: &Response) -> Result<Negotiated, End> {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        // All its lines, as one list (RFC 7230 §3.2.2).
        let extensions = response
            .headers()
            .get_all("Sec-WebSocket-Extensions")
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}").trim())
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        #[cfg(feature = "deflate")]
        let negotiated = match &self.shared.config.deflate {
            Some(offered) => crate::protocol::accept_deflate(offered, &extensions)
                .map_err(|e| Error::Handshake(format!("permessage-deflate: {e}")))?,
            None => None,
        };
        #[cfg(feature = "deflate")]
        let declined = negotiated.is_none();
        #[cfg(not(feature = "deflate"))]
        let declined = true;
        if declined && !extensions.is_empty() {
            // RFC 6455 §4.1: an extension that was not offered fails the connection.
            return Err(Error::Handshake(format!(
                "the server chose extensions {extensions:?}, none were offered"
            ))
            .into());
        }
        // Before OPEN: no `send` compresses before the context is this connection's.
        #[cfg(feature = "deflate")]
        self.shared
            .deflate
            .start(negotiated.as_ref().zip(self.shared.config.deflate.as_ref()));
        let _ = self.shared.protocol.set(header("Sec-WebSocket-Protocol"));
        let _ = self.shared.extensions.set(extensions);
        if !self
            .shared
            .transition(&[ReadyState::Connecting], ReadyState::Open)
        {
            // `close` was called while the handshake finished.
            return Err(Error::Aborted.into());
        }
        self.shared.set_open(Ok(()));
        self.opened = true;
        self.emit(Event::Open);
        self.deliver_pending();
        #[cfg(feature = "deflate")]
        return Ok(negotiated);
        #[cfg(not(feature = "deflate"))]
        Ok(())
    }

    fn limits(&self) -> Limits {
        let c = &self.shared.config;
        Limits {
            max_frame: c.max_frame_size,
            max_message: c.max_message_size,
        }
    }

    fn timers(&self) -> Timers {
        let c = &self.shared.config;
        Timers {
            close_timeout: Some(c.close_timeout),
            ping_interval: c.ping_interval,
            pong_timeout: Some(c.pong_timeout),
        }
    }
}

/// What the handshake negotiated: the permessage-deflate parameters, if any.
#[cfg(feature = "deflate")]
type Negotiated = Option<crate::protocol::DeflateParams>;
#[cfg(not(feature = "deflate"))]
type Negotiated = ();

/// The opening handshake request: the URL's path and query intact, subprotocols,
/// Origin, extra headers, and `Authorization: Basic` from URL credentials.
pub(crate) fn build_request(target: &Target, config: &Config) -> Result<Request, Error> {
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Url(UrlError::Parse(e.to_string())))?;
    let bad = |name: &str, reason: &str| Error::InvalidHeader {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let value = |name: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| bad(name, "not a valid header value"))
    };
    let headers = request.headers_mut();
    if !config.subprotocols.is_empty() {
        let offered = config.subprotocols.join(", ");
        headers.insert(
            "Sec-WebSocket-Protocol",
            value("Sec-WebSocket-Protocol", &offered)?,
        );
    }
    if !config.cookies.is_empty() {
        let pairs: Vec<String> = config
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let mut cookie = value("Cookie", &pairs.join("; "))?;
        cookie.set_sensitive(true);
        headers.append(header::COOKIE, cookie);
    }
    if let Some(origin) = &config.origin {
        headers.insert(header::ORIGIN, value("Origin", origin)?);
    }
    #[cfg(feature = "deflate")]
    if let Some(deflate) = &config.deflate {
        let offer = crate::protocol::offer_deflate(deflate);
        headers.insert(
            "Sec-WebSocket-Extensions",
            value("Sec-WebSocket-Extensions", &offer)?,
        );
    }
    for (name, v) in &config.headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(name, "not a valid header name"))?;
        const OWN: [&str; 7] = [
            "host",
            "connection",
            "upgrade",
            "sec-websocket-version",
            "sec-websocket-key",
            "sec-websocket-protocol",
            "sec-websocket-extensions",
        ];
        if OWN.contains(&header_name.as_str()) {
            return Err(bad(
                name,
                "set by the handshake itself (use `subprotocol` for protocols, `deflate` for extensions)",
            ));
        }
        headers.append(header_name, value(name, v)?);
    }
    if let Some(credentials) = &target.credentials {
        if !headers.contains_key(header::AUTHORIZATION) {
            let basic = format!("Basic {}", crate::url::base64(credentials.as_bytes()));
            let mut v = value("Authorization", &basic)?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    Ok(request)
}

/// Maps tungstenite's error to ours. `handshake` tells protocol errors during the upgrade
/// (a bad response) from those after it (a bad frame).
pub(super) fn map_error(e: tungstenite::Error, handshake: bool, config: &Config) -> Error {
    use tungstenite::Error as T;
    match e {
        T::Io(e) => match tls_error(&e) {
            Some(tls) => Error::Tls(tls.to_string()),
            None if handshake && e.kind() == io::ErrorKind::UnexpectedEof => {
                Error::Handshake("the server closed the connection during the handshake".into())
            }
            None => Error::io(e),
        },
        T::Tls(e) => Error::Tls(e.to_string()),
        T::Capacity(CapacityError::MessageTooLong { size, max_size }) => Error::Capacity {
            what: if max_size == config.max_frame_size && max_size != config.max_message_size {
                "frame"
            } else {
                "message"
            },
            size,
            limit: max_size,
        },
        T::Capacity(c) => Error::Handshake(c.to_string()),
        T::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Error::io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the TCP connection without a closing handshake",
        )),
        T::Protocol(p) if handshake => Error::Handshake(p.to_string()),
        T::Protocol(p) => Error::Protocol(p.to_string()),
        // During the handshake there are no messages yet: a response header is not text.
        T::Utf8(s) if handshake => Error::Handshake(format!("a response header is not text: {s}")),
        T::Utf8(s) => Error::Protocol(format!("invalid UTF-8 in a text message: {s}")),
        T::AttackAttempt => Error::Protocol("attack attempt detected".into()),
        T::Http(response) => Error::HandshakeRejected {
            status: response.status().as_u16(),
            body: response.into_body(),
        },
        T::HttpFormat(e) => Error::Handshake(e.to_string()),
        T::Url(e) => Error::Url(UrlError::Parse(e.to_string())),
        other => Error::io(io::Error::other(other.to_string())),
    }
}

/// The `Location` of a redirect response to the opening handshake.
pub(super) fn redirect_location(
    response: &tungstenite::http::Response<Option<Vec<u8>>>,
) -> Option<String> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    Some(location.to_owned())
}
