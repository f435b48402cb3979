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
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{header, HeaderName, HeaderValue};
use tungstenite::protocol::WebSocketConfig;

use super::proxy::{Progress, ProxyKind};
use super::transport::{not_tls, not_tls_bytes, tls_io_error, Shaking, Transport};
use super::{Io, IoThread, Open, Phase, SOCKET};
use crate::config::Config;
use crate::error::{Error, HandshakeErrorKind, ProtocolErrorKind, ProxyErrorKind, UrlError};
use crate::message::Event;
use crate::protocol::{after, Connection, End, Limits, Timers};
use crate::response::{HandshakeResponse, MAX_BODY};
use crate::state::ReadyState;
use crate::url::Target;

impl IoThread {
    /// Starts an attempt: the request, the proxy, then the names to resolve. A name is
    /// resolved on a thread of its own (see [`Lookup::spawn`]), whose answer comes back
    /// as [`Command::Resolved`](super::Command::Resolved); meanwhile this thread waits in
    /// [`Phase::Resolving`], for it, a command or the connect deadline. Addresses go
    /// straight on to connecting.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn resolve(&mut self) -> Result<(), End> {
        // The builder's credentials are for the host of the URL given (a redirect may
        // lead elsewhere).
        let (given, target) = (&self.io.shared.target, &self.io.target);
        let own_host = (&given.host, given.port) == (&target.host, target.port);
        let mut request = build_request(target, &self.io.shared.config, own_host)?;
        provided_headers(&mut request, &self.io.shared.config, own_host)?;
        self.io.request = Some(request);
        self.io.proxy = super::proxy::for_target(&self.io.shared.config.proxy, &self.io.target)?;
        let target = &self.io.target;
        let lookup = Lookup {
            resolver: self.io.shared.config.resolver.clone(),
            // `socks5://`: the name is resolved here, the proxy gets an address.
            socks_target: self
                .io
                .proxy
                .as_ref()
                .filter(|proxy| proxy.kind == ProxyKind::Socks5 { remote_dns: false })
                .map(|_| (target.host.clone(), target.port)),
            connect: match &self.io.proxy {
                Some(proxy) => {
                    log::debug!(
                        "{}: through proxy {}:{}",
                        self.io.url(),
                        proxy.host,
                        proxy.port
                    );
                    (proxy.host.clone(), proxy.port)
                }
                None => (target.host.clone(), target.port),
            },
        };
        if !lookup.needs_names() {
            return self.resolved(lookup.run());
        }
        let names = lookup.names();
        if let Some((id, running)) = &self.io.lookup_running {
            if *running == names {
                // An earlier attempt's lookup of the same names still runs (it outlived
                // that attempt's connect timeout): this attempt waits for it too, rather
                // than start another thread that a stalled name server would hold as well.
                self.phase = Phase::Resolving { id: *id };
                return Ok(());
            }
        }
        self.io.lookups += 1;
        let id = self.io.lookups;
        let shared = Arc::downgrade(&self.io.shared);
        let answer = move |answer| {
            // Gone: the connection ended meanwhile, and nobody waits for this.
            if let Some(shared) = shared.upgrade() {
                shared.enqueue(super::Command::Resolved(id, Box::new(answer)));
            }
        };
        if !lookup.spawn(answer) {
            return self.resolved(lookup.run());
        }
        self.io.lookup_running = Some((id, names));
        self.phase = Phase::Resolving { id };
        Ok(())
    }

    /// The answer of lookup `id`: on to connecting if it is the one awaited. (A lookup
    /// of an attempt that ended before it answered is ignored.)
    pub(super) fn lookup_done(
        &mut self,
        id: u64,
        answer: Result<Resolved, Error>,
    ) -> Result<(), End> {
        self.io.lookup_answered(id);
        match self.phase {
            Phase::Resolving { id: awaited } if awaited == id => self.resolved(answer),
            _ => Ok(()),
        }
    }

    fn resolved(&mut self, answer: Result<Resolved, Error>) -> Result<(), End> {
        let Resolved {
            socks_target,
            addrs,
        } = answer?;
        if let (Some(proxy), Some(ip)) = (&mut self.io.proxy, socks_target) {
            proxy.resolved = Some(ip);
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
        if let Some((_, mut old)) = tcp.take() {
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
                    self.io.read_closed = false; // a new socket
                    *tcp = Some((addr, stream));
                    return Ok(());
                }
                Err(e) => *last_error = Some((addr, e)),
            }
        }
        match last_error.take() {
            Some((addr, e)) => Err(Error::Connect {
                addr,
                source: Arc::new(e),
            }
            .into()),
            // `resolve` never starts with no address.
            None => Err(Error::Internal("no address to connect to".into()).into()),
        }
    }

    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn progress_connect(&mut self) -> Result<(), End> {
        let Phase::Connecting {
            tcp: Some((addr, stream)),
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
            log::debug!("connect to {addr} failed: {e}");
            *last_error = Some((*addr, e));
            return self.connect_next();
        }
        let Phase::Connecting {
            tcp: Some((_, tcp)),
            ..
        } = std::mem::replace(&mut self.phase, Phase::Done)
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
                    tunnel: proxy.tunnel(&io.target),
                    tcp,
                };
                self.progress_tunnel()
            }
            None => self.start_handshake(tcp),
        }
    }

    /// Sets up the tunnel (HTTP CONNECT, or SOCKS5's exchanges), without blocking.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn progress_tunnel(&mut self) -> Result<(), End> {
        let Phase::Tunneling { tcp, tunnel } = &mut self.phase else {
            return Ok(());
        };
        let (Some(proxy), target) = (&self.io.proxy, &self.io.target) else {
            return Err(Error::Internal("tunneling without a proxy".into()).into());
        };
        let broken = |e: io::Error| Error::Proxy {
            kind: ProxyErrorKind::Broken,
            message: "the connection to the proxy broke".into(),
            source: Some(Arc::new(e)),
        };
        loop {
            while tunnel.written < tunnel.out.len() {
                match tcp.write(&tunnel.out[tunnel.written..]) {
                    Ok(0) => return Err(broken(io::ErrorKind::WriteZero.into()).into()),
                    Ok(n) => tunnel.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(broken(e).into()),
                }
            }
            let mut chunk = [0u8; 512];
            match tcp.read(&mut chunk) {
                Ok(0) => return Err(broken(io::ErrorKind::UnexpectedEof.into()).into()),
                Ok(n) => {
                    if tunnel.received(&chunk[..n], proxy, target)? == Progress::Open {
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
            return Err(Error::Internal("handshake request already used".into()).into());
        };
        io.accept_key = request
            .headers()
            .get("Sec-WebSocket-Key")
            .map(|key| derive_accept_key(key.as_bytes()))
            .unwrap_or_default();
        let shaking = Shaking::new(transport);
        let result =
            tungstenite::client::client_with_config(request, shaking.clone(), Some(io.ws_config()));
        self.handshake_result(result, shaking)
    }

    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn progress_handshake(&mut self) -> Result<(), End> {
        let Phase::Handshaking(mid) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        let shaking = mid.get_ref().get_ref().clone();
        self.handshake_result(mid.handshake(), shaking)
    }

    fn handshake_result(
        &mut self,
        result: Result<
            (tungstenite::WebSocket<Shaking>, Response),
            HandshakeError<ClientHandshake<Shaking>>,
        >,
        shaking: Shaking,
    ) -> Result<(), End> {
        match result {
            Ok((ws, response)) => {
                drop(shaking);
                let Some(transport) = ws.into_inner().into_inner() else {
                    return Err(Error::Internal("the handshake kept its stream".into()).into());
                };
                self.open_with(transport, &response)
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
                let transport = shaking.into_inner();
                let token_list = matches!(
                    e,
                    tungstenite::Error::Protocol(ProtocolError::MissingConnectionUpgradeHeader)
                );
                let response = transport
                    .as_ref()
                    .filter(|_| token_list)
                    .and_then(|t| self.upgrade_in_a_token_list(t.recorded()));
                match (response, transport) {
                    (Some(response), Some(transport)) => self.open_with(transport, &response),
                    (_, transport) => Err(self.handshake_failure(e, transport).into()),
                }
            }
        }
    }

    /// The upgrade is done: check what the server chose and go OPEN.
    fn open_with(&mut self, mut transport: Transport, response: &Response) -> Result<(), End> {
        #[cfg(feature = "deflate")]
        let negotiated = self.io.opened(response)?;
        #[cfg(not(feature = "deflate"))]
        self.io.opened(response)?;
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

    /// tungstenite refuses a 101 whose `Connection` is anything but `Upgrade`; RFC 6455
    /// §4.1 (step 3) asks for a `Connection` that contains the token `Upgrade`, as in
    /// `Connection: keep-alive, Upgrade` (or on lines of their own), which browsers
    /// accept. Such a response (`recorded`, the bytes the handshake read) is checked here
    /// as tungstenite checks the rest of it (steps 2, 4 and 6), and returned if it passes.
    fn upgrade_in_a_token_list(&self, recorded: &[u8]) -> Option<Response> {
        use tungstenite::handshake::machine::TryParse;
        let (_, response) = Response::try_parse(recorded).ok()??;
        let headers = response.headers();
        let one = |name: &str| {
            let mut all = headers.get_all(name).iter();
            let first = all.next()?.to_str().ok()?.trim().to_owned();
            all.next().is_none().then_some(first)
        };
        let upgrade_token = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        let offered = &self.io.shared.config.subprotocols;
        let protocol_ok = match headers.get("Sec-WebSocket-Protocol") {
            None => offered.is_empty(),
            Some(_) => one("Sec-WebSocket-Protocol").is_some_and(|p| offered.contains(&p)),
        };
        let valid = response.status() == tungstenite::http::StatusCode::SWITCHING_PROTOCOLS
            && upgrade_token
            && one("Upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
            && one("Sec-WebSocket-Accept").is_some_and(|a| a == self.io.accept_key)
            && protocol_ok;
        valid.then_some(response)
    }

    /// A failed opening handshake, explained with what the transport saw: a rejection
    /// gets its body, a server that speaks TLS to `ws://` or plain text to `wss://` is
    /// named as such.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn handshake_failure(&mut self, e: tungstenite::Error, transport: Option<Transport>) -> Error {
        use tungstenite::Error as T;
        let Some(mut transport) = transport else {
            return map_error(e, true, &self.io.shared.config);
        };
        if let T::Http(response) = e {
            let body = self.rejection_body(&mut transport, &response);
            return Error::HandshakeRejected {
                status: response.status().as_u16(),
                response: HandshakeResponse::new(&response, body),
            };
        }
        if transport.tls_before_server_hello() {
            let refused = matches!(&e, T::Io(io) if matches!(io.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset)
                || not_tls_bytes(io))
                || matches!(&e, T::Protocol(ProtocolError::HandshakeIncomplete));
            if refused {
                return not_tls(Some(Arc::new(e)));
            }
        }
        let seen = transport.recorded();
        if !self.io.target.tls && seen.len() >= 2 && matches!(seen[0], 0x15 | 0x16) && seen[1] == 3
        {
            return Error::Handshake {
                kind: HandshakeErrorKind::InvalidResponse,
                message: "the server answered in TLS: use wss:// for this port".into(),
                source: Some(Arc::new(e)),
            };
        }
        map_error(e, true, &self.io.shared.config)
    }

    /// Reads the rest of a rejection's body: up to its `Content-Length` (or the end of a
    /// chunked body, or of the stream), at most [`MAX_BODY`] bytes, within the handshake
    /// timeout. A command (a `close`, say) cuts it short: the rejection is reported with
    /// what arrived.
    fn rejection_body(
        &mut self,
        transport: &mut Transport,
        response: &tungstenite::http::Response<Option<Vec<u8>>>,
    ) -> Vec<u8> {
        let headers = response.headers();
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
        let chunked = headers
            .get(header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let mut body = response.body().clone().unwrap_or_default();
        let wanted = length.unwrap_or(usize::MAX).min(MAX_BODY);
        let complete =
            |body: &[u8]| body.len() >= wanted || (chunked && decode_chunked(body).is_some());
        // Without a length the body ends with the stream; do not wait long for that.
        let deadline = match (length, chunked, self.io.handshake_deadline) {
            (None, false, d) => Some(d.map_or(Instant::now() + NO_LENGTH_WAIT, |d| {
                d.min(Instant::now() + NO_LENGTH_WAIT)
            })),
            (_, _, d) => d,
        };
        let mut events = mio::Events::with_capacity(4);
        let mut done = complete(&body);
        while !done && self.io.commands.is_empty() {
            let mut chunk = [0u8; 4096];
            match transport.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    body.extend_from_slice(&chunk[..n]);
                    // A chunked body can only end at a line end: a server trickling bytes
                    // does not make each one decode the whole body again.
                    done = body.len() >= wanted || (chunk[..n].contains(&b'\n') && complete(&body));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    let timeout = match deadline {
                        Some(d) if d <= now => break,
                        Some(d) => Some(d - now),
                        None => None,
                    };
                    if self.io.sleep(&mut events, timeout).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if chunked {
            body = decode_chunked(&body).unwrap_or(body);
        }
        body.truncate(wanted.min(MAX_BODY));
        body
    }

    /// Follows a redirect of the opening handshake: a new attempt at the new target.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn redirect(&mut self, location: &str) -> Result<(), End> {
        let io = &mut self.io;
        let config = &io.shared.config;
        // (A password the server wrote into `location` is not shown.)
        let shown = crate::url::without_userinfo(location);
        if io.redirects >= config.max_redirects {
            return Err(Error::TooManyRedirects {
                limit: config.max_redirects,
                location: shown,
            }
            .into());
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::handshake(
                HandshakeErrorKind::Redirect,
                format!("bad redirect location {shown:?}: {e}"),
            )
        };
        let joined = io.target.url.join(location).map_err(|e| bad(&e))?;
        let mut next = crate::url::parse(joined.as_str()).map_err(|e| bad(&e))?;
        if io.target.tls && !next.tls {
            let refused = format!("refused redirect from wss:// to {}", next.url);
            return Err(Error::handshake(HandshakeErrorKind::Redirect, refused).into());
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
        // Headers read as one value come once: tungstenite looks at the first line only,
        // and repeated lines are one comma-joined value (RFC 7230 §3.2.2), which is no
        // accept key and no single subprotocol (RFC 6455 §4.1, steps 4 and 6). Browsers
        // fail these too.
        for (name, kind) in [
            ("Upgrade", HandshakeErrorKind::InvalidUpgrade),
            ("Sec-WebSocket-Accept", HandshakeErrorKind::InvalidUpgrade),
            ("Sec-WebSocket-Protocol", HandshakeErrorKind::Negotiation),
        ] {
            if response.headers().get_all(name).iter().count() > 1 {
                return Err(Error::handshake(
                    kind,
                    format!("the server's 101 has more than one {name} header"),
                )
                .into());
            }
        }
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
            Some(offered) => {
                crate::protocol::accept_deflate(offered, &extensions).map_err(|e| {
                    Error::handshake(
                        HandshakeErrorKind::Negotiation,
                        format!("permessage-deflate: {e}"),
                    )
                })?
            }
            None => None,
        };
        #[cfg(feature = "deflate")]
        let declined = negotiated.is_none();
        #[cfg(not(feature = "deflate"))]
        let declined = true;
        if declined && !extensions.is_empty() {
            // RFC 6455 §4.1: an extension that was not offered fails the connection.
            return Err(Error::handshake(
                HandshakeErrorKind::Negotiation,
                format!("the server chose extensions {extensions:?}, none were offered"),
            )
            .into());
        }
        // Before OPEN: no `send` compresses before the context is this connection's.
        #[cfg(feature = "deflate")]
        self.shared
            .deflate
            .start(negotiated.as_ref().zip(self.shared.config.deflate.as_ref()));
        let protocol = header("Sec-WebSocket-Protocol");
        self.shared.set_opened(crate::websocket::Opened {
            protocol,
            extensions,
            response: Arc::new(HandshakeResponse::new(response, Vec::new())),
        });
        if !self
            .shared
            .transition(&[ReadyState::Connecting], ReadyState::Open)
        {
            // `close` was called while the handshake finished.
            return Err(Error::Aborted.into());
        }
        self.shared.set_open(Ok(()));
        self.opened = true;
        self.shared.open_handed_over();
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
/// Origin, extra headers, and `Authorization: Basic` from URL credentials. Not
/// `own_host` (a redirect to another host or port): without the builder's cookies and
/// its `Authorization` and `Cookie` headers, as browsers drop them on a cross-origin
/// redirect.
pub(crate) fn build_request(
    target: &Target,
    config: &Config,
    own_host: bool,
) -> Result<Request, Error> {
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
    // All cookies in one header (RFC 6265 §5.4): the builder's, then a `Cookie` header's.
    let mut cookies: Vec<String> = config
        .cookies
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
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
        if OWN_HEADERS.contains(&header_name.as_str()) {
            return Err(bad(
                name,
                "set by the handshake itself (use `subprotocol` for protocols, `deflate` for extensions)",
            ));
        }
        let value = value(name, v)?; // checked even when not sent
        if header_name == header::COOKIE {
            cookies.push(v.clone());
        } else if own_host || header_name != header::AUTHORIZATION {
            headers.append(header_name, value);
        }
    }
    if !cookies.is_empty() && own_host {
        let mut cookie = value("Cookie", &cookies.join("; "))?;
        cookie.set_sensitive(true);
        headers.insert(header::COOKIE, cookie);
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

/// The names one attempt must resolve: the host to connect to (the server's, or the
/// proxy's), and for a `socks5://` proxy the server's too.
#[derive(Clone)]
struct Lookup {
    resolver: Option<crate::config::Resolver>,
    socks_target: Option<(String, u16)>,
    connect: (String, u16),
}

/// A [`Lookup`]'s hosts: the `socks5://` target's, and the one to connect to.
pub(super) type LookupNames = (Option<(String, u16)>, (String, u16));

/// What a [`Lookup`] found.
#[derive(Debug)]
pub(crate) struct Resolved {
    socks_target: Option<std::net::IpAddr>,
    addrs: VecDeque<SocketAddr>,
}

impl Lookup {
    /// The hosts to resolve, to tell one lookup from another.
    fn names(&self) -> LookupNames {
        (self.socks_target.clone(), self.connect.clone())
    }

    /// Whether any of the hosts needs a lookup that may wait on the network: a name
    /// other than `localhost` (which the system's resolver answers from the hosts file;
    /// RFC 6761 §6.3) or any name for the builder's resolver.
    fn needs_names(&self) -> bool {
        let custom = self.resolver.is_some();
        let name = |(host, _): &(String, u16)| {
            host.parse::<std::net::IpAddr>().is_err()
                && (custom || !host.eq_ignore_ascii_case("localhost"))
        };
        self.socks_target.as_ref().is_some_and(name) || name(&self.connect)
    }

    /// Resolves on a thread of its own, which calls `answer` with the result. That may
    /// come after the attempt ended: a resolver blocks (the system's for up to its own
    /// timeouts, 5 s per try by default) and cannot be stopped, so it is left to finish,
    /// and its thread ends then. `false` if no thread could be started.
    fn spawn(&self, answer: impl FnOnce(Result<Resolved, Error>) + Send + 'static) -> bool {
        let lookup = self.clone();
        let spawned = std::thread::Builder::new()
            .name("nwebsocket-dns".into())
            .spawn(move || answer(lookup.run()));
        if let Err(e) = &spawned {
            log::warn!("no thread for DNS ({e}); resolving on the I/O thread");
        }
        spawned.is_ok()
    }

    /// Resolves, blocking.
    fn run(self) -> Result<Resolved, Error> {
        let socks_target = match &self.socks_target {
            Some((host, port)) => Some(self.addresses(host, *port)?[0].ip()),
            None => None,
        };
        let (host, port) = &self.connect;
        let addrs = self.addresses(host, *port)?.into();
        Ok(Resolved {
            socks_target,
            addrs,
        })
    }

    /// The addresses of `host` (the host itself if it is an address), at least one.
    fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = match &self.resolver {
            Some(resolver) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| resolver(host, port)))
                    .unwrap_or_else(|_| Err(io::Error::other("the resolver panicked")))
            }
            None => (host, port).to_socket_addrs().map(Iterator::collect),
        };
        let dns = |source| Error::Dns {
            host: host.to_owned(),
            source: Arc::new(source),
        };
        match found {
            Ok(addrs) if addrs.is_empty() => {
                Err(dns(io::Error::new(io::ErrorKind::NotFound, "no addresses")))
            }
            Ok(addrs) => Ok(addrs),
            Err(e) => Err(dns(e)),
        }
    }
}

/// The builder's header provider, called for this attempt: its headers replace those of
/// the same name (`Authorization` and `Cookie` are left out unless `own_host`: see
/// [`build_request`]).
fn provided_headers(request: &mut Request, config: &Config, own_host: bool) -> Result<(), Error> {
    let Some(provider) = &config.header_provider else {
        return Ok(());
    };
    let provided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| provider()))
        .map_err(|_| Error::CallbackPanic("the header provider panicked".into()))?;
    for (name, v) in provided {
        let bad = |reason: &str| Error::InvalidHeader {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a valid header name"))?;
        if OWN_HEADERS.contains(&header_name.as_str()) {
            return Err(bad("set by the handshake itself"));
        }
        let mut value = HeaderValue::from_str(&v).map_err(|_| bad("not a valid header value"))?;
        value.set_sensitive(true);
        if own_host || (header_name != header::AUTHORIZATION && header_name != header::COOKIE) {
            request.headers_mut().insert(header_name, value);
        }
    }
    Ok(())
}

/// Headers the handshake sets itself; neither the builder's headers nor its header
/// provider may.
const OWN_HEADERS: [&str; 7] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-version",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Maps tungstenite's error to ours. `handshake` tells protocol errors during the upgrade
/// (a bad response) from those after it (a bad frame).
pub(super) fn map_error(e: tungstenite::Error, handshake: bool, config: &Config) -> Error {
    use tungstenite::Error as T;
    match e {
        T::Io(e) => match tls_io_error(&e) {
            Some(tls) => tls,
            None if handshake && e.kind() == io::ErrorKind::UnexpectedEof => Error::Handshake {
                kind: HandshakeErrorKind::Closed,
                message: "the server closed the connection during the handshake".into(),
                source: Some(Arc::new(e)),
            },
            None => Error::io(e),
        },
        T::Tls(e) => Error::Tls {
            kind: crate::error::TlsErrorKind::Other,
            message: "the TLS session failed".into(),
            source: Some(Arc::new(e)),
        },
        T::Capacity(CapacityError::MessageTooLong { size, max_size }) => Error::Capacity {
            what: if max_size == config.max_frame_size && max_size != config.max_message_size {
                "frame"
            } else {
                "message"
            },
            size,
            limit: max_size,
        },
        T::Capacity(c) => Error::Handshake {
            kind: HandshakeErrorKind::TooLarge,
            message: "the response head is too large".into(),
            source: Some(Arc::new(c)),
        },
        T::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Error::io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the TCP connection without a closing handshake",
        )),
        T::Protocol(ProtocolError::HandshakeIncomplete) if handshake => Error::handshake(
            HandshakeErrorKind::Closed,
            "the server closed the connection during the handshake",
        ),
        T::Protocol(p) if handshake => {
            let kind = match p {
                ProtocolError::SecWebSocketSubProtocolError(_)
                | ProtocolError::InvalidHeader(_) => HandshakeErrorKind::Negotiation,
                ProtocolError::WrongHttpVersion
                | ProtocolError::HttparseError(_)
                | ProtocolError::JunkAfterRequest => HandshakeErrorKind::InvalidResponse,
                _ => HandshakeErrorKind::InvalidUpgrade,
            };
            Error::Handshake {
                kind,
                message: p.to_string(),
                source: None,
            }
        }
        T::Protocol(p) => Error::protocol(ProtocolErrorKind::Frame, p.to_string()),
        // During the handshake there are no messages yet: a response header is not text.
        T::Utf8(s) if handshake => Error::handshake(
            HandshakeErrorKind::InvalidResponse,
            format!("a response header is not text: {s}"),
        ),
        T::Utf8(s) => Error::protocol(
            ProtocolErrorKind::Utf8,
            format!("invalid UTF-8 in a text message: {s}"),
        ),
        // tungstenite's bound on the handshake's reads: endless or trickled headers.
        T::AttackAttempt if handshake => Error::handshake(
            HandshakeErrorKind::TooLarge,
            "the response head is too large or comes in too many pieces",
        ),
        T::AttackAttempt => Error::protocol(ProtocolErrorKind::Other, "attack attempt detected"),
        T::Http(response) => Error::HandshakeRejected {
            status: response.status().as_u16(),
            response: HandshakeResponse::new(
                &response,
                response.body().clone().unwrap_or_default(),
            ),
        },
        T::HttpFormat(e) => Error::Handshake {
            kind: HandshakeErrorKind::InvalidResponse,
            message: "the response is not valid HTTP".into(),
            source: Some(Arc::new(e)),
        },
        T::Url(e) => Error::Url(UrlError::Parse(e.to_string())),
        other => Error::io(io::Error::other(other.to_string())),
    }
}

/// How long a rejection's body without a length may take to end.
const NO_LENGTH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A whole chunked body, decoded; `None` while its last chunk has not arrived. A chunk
/// that would take the body past [`MAX_BODY`], or a size line that is not one, ends it
/// with what arrived: a server's numbers are never trusted for arithmetic.
fn decode_chunked(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line_end]).ok().and_then(|line| {
            let size_text = line.split(';').next().unwrap_or("").trim();
            usize::from_str_radix(size_text, 16).ok()
        });
        let Some(size) = size else {
            return Some(out); // not a chunk: the body is what came before
        };
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        let room = MAX_BODY - out.len();
        if size > room {
            // More than is kept: what arrived is enough.
            out.extend_from_slice(&raw[..room.min(raw.len())]);
            return Some(out);
        }
        if raw.len() < size + 2 {
            return None; // not all here yet (`size` is at most MAX_BODY: no overflow)
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_whole_partial_and_hostile() {
        assert_eq!(
            decode_chunked(b"2\r\nab\r\n3;x=y\r\ncde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(decode_chunked(b"2\r\nab\r\n3\r\ncd"), None); // more to come
        assert_eq!(decode_chunked(b"2\r\nab"), None);
        // Sizes a server made up: no arithmetic on them overflows.
        for huge in ["ffffffffffffffff", "fffffffffffffffe", "10000"] {
            let raw = format!("2\r\nab\r\n{huge}\r\nxyz");
            assert_eq!(
                decode_chunked(raw.as_bytes()).as_deref(),
                Some(&b"abxyz"[..]),
                "{huge}"
            );
        }
        // A size line that is not one ends the body.
        assert_eq!(
            decode_chunked(b"2\r\nab\r\nzz\r\n").as_deref(),
            Some(&b"ab"[..])
        );
        // At most MAX_BODY bytes are kept.
        let big = format!("{:x}\r\n{}", MAX_BODY, "a".repeat(MAX_BODY));
        let mut raw = b"1\r\nb\r\n".to_vec();
        raw.extend_from_slice(big.as_bytes());
        assert_eq!(decode_chunked(&raw).map(|b| b.len()), Some(MAX_BODY));
    }
}
