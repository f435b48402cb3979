//! The crate's one error type.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::message::Message;
use crate::response::HandshakeResponse;
use crate::state::ReadyState;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, as values a program can match on.
///
/// The same type is returned by synchronous calls (a bad URL, a bad close code, a send
/// that cannot be taken) and handed to [`Handler::onerror`](crate::Handler::onerror)
/// when a live connection fails. It is `Clone + Send + Sync + 'static`, so it can travel
/// between threads and be kept.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a WebSocket URL (the browser's `SyntaxError`).
    #[error("invalid URL: {0}")]
    Url(#[from] UrlError),
    /// A subprotocol name is empty, has characters a token may not have, or is offered twice
    /// (the browser's `SyntaxError`).
    #[error("invalid subprotocol {0:?}: must be a unique, non-empty HTTP token")]
    InvalidSubprotocol(String),
    /// A header name or value given to the builder cannot be sent.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A close code other than 1000 or 3000–4999 (the browser's `InvalidAccessError`).
    #[error("invalid close code {0}: must be 1000 or in 3000..=4999")]
    InvalidCloseCode(u16),
    /// A close reason longer than 123 UTF-8 bytes (the browser's `SyntaxError`).
    #[error("close reason is {0} bytes long; at most 123 are allowed")]
    InvalidCloseReason(usize),
    /// A ping payload longer than 125 bytes.
    #[error("ping payload is {0} bytes long; at most 125 are allowed")]
    InvalidPingPayload(usize),
    /// `ping` was called while this many pings still wait to be written (16 at most).
    #[error("{0} pings already wait to be written")]
    PingsWaiting(usize),
    /// The call needs another state of the connection (for example `ping` before OPEN).
    #[error("the connection is {0:?}, which does not allow this")]
    InvalidState(ReadyState),
    /// A message was not taken; the error hands it back.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The host name could not be resolved.
    #[error("could not resolve {host:?}")]
    Dns {
        /// The host that was looked up.
        host: String,
        /// What the resolver said.
        #[source]
        source: Arc<io::Error>,
    },
    /// No TCP connection could be made (refused, unreachable, …) to any resolved address;
    /// `addr` is the last one tried.
    #[error("could not connect to {addr}")]
    Connect {
        /// The address of the last attempt (the proxy's, when connecting through one).
        addr: SocketAddr,
        /// Why that attempt failed.
        #[source]
        source: Arc<io::Error>,
    },
    /// The TLS handshake failed or a TLS setting is unusable (bad certificate, wrong host
    /// name, a server that does not speak TLS…). `kind` says which; `source` holds the
    /// TLS library's own error when there is one.
    #[error("TLS: {message}")]
    #[non_exhaustive]
    Tls {
        /// What went wrong, to match on.
        kind: TlsErrorKind,
        /// What went wrong, in words (with a hint when there is one to give).
        message: String,
        /// The TLS library's error, if any.
        #[source]
        source: Option<Source>,
    },
    /// The server answered the opening handshake with something other than `101`.
    /// `response` has its status line, headers and body (up to 64 KiB, read within the
    /// handshake timeout).
    #[error("the server rejected the WebSocket handshake with HTTP status {status}{}", response.body_excerpt())]
    #[non_exhaustive]
    HandshakeRejected {
        /// The HTTP status code the server sent.
        status: u16,
        /// The whole response: status, headers and body.
        response: HandshakeResponse,
    },
    /// The proxy could not be used: a bad proxy URL, or the proxy refused or broke the
    /// tunnel (HTTP CONNECT or SOCKS5).
    #[error("proxy: {message}")]
    #[non_exhaustive]
    Proxy {
        /// What went wrong, to match on.
        kind: ProxyErrorKind,
        /// What went wrong, in words (the proxy's status line or reply code included).
        message: String,
        /// The underlying error (an I/O error of the tunnel), if any.
        #[source]
        source: Option<Source>,
    },
    /// The opening handshake was redirected more times than
    /// [`Builder::max_redirects`](crate::Builder::max_redirects) allows (or in a loop).
    #[error("too many redirects (limit {limit}), the last one to {location}")]
    TooManyRedirects {
        /// The configured limit.
        limit: usize,
        /// Where the refused redirect pointed.
        location: String,
    },
    /// The opening handshake response was not a valid WebSocket upgrade (not HTTP, a bad
    /// `Sec-WebSocket-Accept`, a subprotocol or extension that was not offered, a head
    /// too long, the server hanging up…).
    #[error("handshake: {message}")]
    #[non_exhaustive]
    Handshake {
        /// What went wrong, to match on.
        kind: HandshakeErrorKind,
        /// What went wrong, in words.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
    /// The peer broke RFC 6455 (masked frame, reserved bits, invalid UTF-8 in text…).
    #[error("protocol violation: {message}")]
    #[non_exhaustive]
    Protocol {
        /// What went wrong, to match on.
        kind: ProtocolErrorKind,
        /// What went wrong, in words.
        message: String,
    },
    /// An incoming message or frame was larger than the configured limit.
    #[error("incoming {what} of {size} bytes exceeds the limit of {limit} bytes")]
    Capacity {
        /// `"message"` or `"frame"`.
        what: &'static str,
        /// The size the peer announced or sent.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A bounded wait ran out; the value says which.
    #[error("{0} timed out")]
    Timeout(Timeout),
    /// The connection was lost or a socket call failed after the handshake.
    #[error("I/O error")]
    Io(#[source] Arc<io::Error>),
    /// `close` was called while the connection was still CONNECTING.
    #[error("the connection was closed before it was established")]
    Aborted,
    /// A value could not be serialized to JSON, a message is not the JSON expected, or a
    /// request is not a JSON object.
    #[error("JSON: {message}")]
    #[non_exhaustive]
    Json {
        /// What went wrong, in words.
        message: String,
        /// `serde_json`'s error, if any.
        #[source]
        source: Option<Source>,
        /// [`request`](crate::WebSocketRef::request)'s reply, whole, when it does not fit
        /// the type asked for (a server's error answer, say): taken from the stream as the
        /// reply, it is not delivered as a message.
        ///
        /// Boxed: every [`Event`](crate::Event) is as large as the largest `Error`.
        reply: Option<Box<crate::message::Message>>,
    },
    /// A callback panicked; the panic was caught and the connection carries on.
    #[error("a callback panicked: {0}")]
    CallbackPanic(String),
    /// A blocking call was made where it could never return: `wait_closed` on the
    /// callback thread (which must return before `onclose` can run), or while the same
    /// thread holds the [`HandlerGuard`](crate::HandlerGuard); `try_handler` on the
    /// callback thread (which holds the handler while a callback runs), or a second time
    /// on a thread that holds it. It returns this at once instead of blocking for ever.
    #[error("{0} would never return here")]
    WouldDeadlock(&'static str),
    /// The connection's I/O thread panicked (a bug in this crate); the panic was caught and
    /// the connection closed.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

/// An underlying error kept as [`source()`](std::error::Error::source) of an [`Error`],
/// shared so that the error stays `Clone`.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of TLS failure an [`Error::Tls`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// A TLS setting given to the builder is unusable (bad PEM, a key that does not fit
    /// its certificate, a host name that cannot be a TLS server name). Reported before
    /// any connection is made.
    Config,
    /// The server's certificate was not accepted (unknown issuer, another name, expired,
    /// a self-signed certificate used as its own CA…).
    Certificate,
    /// The server refused the handshake (a TLS alert: for example it requires a client
    /// certificate).
    Refused,
    /// The server did not answer in TLS: probably a plain `ws://` port.
    NotTls,
    /// `wss://` needs a TLS feature this build does not have (`rustls` or `native-tls`).
    Unsupported,
    /// Anything else the TLS library reports.
    Other,
}

/// What kind of failure an [`Error::Handshake`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeErrorKind {
    /// The answer is not an HTTP response (or is a TLS record: a `wss://` port).
    InvalidResponse,
    /// A `101` response that is not a valid WebSocket upgrade (missing `Upgrade`, a wrong
    /// `Sec-WebSocket-Accept`…).
    InvalidUpgrade,
    /// The server chose a subprotocol or an extension that was not offered.
    Negotiation,
    /// The response head is larger than the handshake allows.
    TooLarge,
    /// The server closed the connection before answering.
    Closed,
    /// A redirect that cannot be followed (a bad `Location`, `wss://` to `ws://`).
    Redirect,
}

/// What kind of failure an [`Error::Proxy`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyErrorKind {
    /// The proxy URL cannot be used (bad syntax, an unsupported scheme, no host).
    InvalidUrl,
    /// The proxy wants credentials, or refused the ones given (HTTP 407, SOCKS5 auth).
    Auth,
    /// The proxy refused to open the tunnel (an HTTP status, a SOCKS5 reply code).
    Refused,
    /// The proxy's answer is not valid for its protocol.
    InvalidResponse,
    /// The connection to the proxy broke while the tunnel was set up.
    Broken,
}

/// What kind of violation an [`Error::Protocol`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolErrorKind {
    /// A frame broke RFC 6455 (masked, reserved bits or opcodes, a fragmented or
    /// oversized control frame, a bad Close code…); the connection is closed with 1002.
    Frame,
    /// A text message or a close reason is not UTF-8; closed with 1007.
    Utf8,
    /// A compressed message (permessage-deflate) does not inflate; closed with 1007.
    Compression,
    /// Anything else.
    Other,
}

impl Error {
    pub(crate) fn io(err: io::Error) -> Self {
        Error::Io(Arc::new(err))
    }

    pub(crate) fn tls(kind: TlsErrorKind, message: impl Into<String>) -> Self {
        Error::Tls {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn handshake(kind: HandshakeErrorKind, message: impl Into<String>) -> Self {
        Error::Handshake {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn proxy(kind: ProxyErrorKind, message: impl Into<String>) -> Self {
        Error::Proxy {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn protocol(kind: ProtocolErrorKind, message: impl Into<String>) -> Self {
        Error::Protocol {
            kind,
            message: message.into(),
        }
    }

    #[cfg(feature = "json")]
    pub(crate) fn json(message: impl Into<String>, source: Option<Source>) -> Self {
        Error::Json {
            message: message.into(),
            source,
            reply: None,
        }
    }

    /// The whole chain in one line: this error, then each [`source()`] in turn, joined
    /// by `": "`. `Display` shows one level only (the Rust API guidelines' rule, so that
    /// error reporters such as `anyhow` do not repeat it); this is for logs and `main`.
    ///
    /// [`source()`]: std::error::Error::source
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }

    /// The message a failed send hands back, if this error came from one.
    pub fn into_message(self) -> Option<Message> {
        match self {
            Error::Send(e) => Some(e.into_message()),
            _ => None,
        }
    }
}

/// Which bounded wait ran out, in [`Error::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timeout {
    /// Resolving the host and opening the TCP connection.
    Connect,
    /// The TLS and WebSocket opening handshake.
    Handshake,
    /// Waiting for the server's Close frame and the end of the TCP stream.
    Close,
    /// Waiting for a pong after a keepalive ping.
    Pong,
    /// Waiting for the server to take what we write, while it is owed a control frame
    /// (it pings and never reads).
    Write,
    /// Waiting for a reply to a request.
    Request,
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Timeout::Connect => "connecting",
            Timeout::Handshake => "the opening handshake",
            Timeout::Close => "the closing handshake",
            Timeout::Pong => "waiting for a pong",
            Timeout::Write => "waiting for the server to read",
            Timeout::Request => "waiting for a reply",
        })
    }
}

/// Why a URL was refused, in [`Error::Url`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The text does not parse as a URL.
    #[error("{0}")]
    Parse(String),
    /// A scheme other than `ws`, `wss`, `http` or `https`.
    #[error("unsupported scheme {0:?}: use ws:// or wss://")]
    Scheme(String),
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The URL has a `#fragment`, which WebSocket URLs may not have.
    #[error("WebSocket URLs may not have a fragment")]
    Fragment,
}

/// A message that was not taken, handed back to the caller.
///
/// Returned by [`send`](crate::WebSocketRef::send) and its variants. Nothing is dropped
/// silently: every refusal carries the message so it can be retried or reported.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is still CONNECTING.
    #[error("the connection is not open yet")]
    NotOpen(Message),
    /// `close` was called, or the connection is CLOSING or CLOSED.
    #[error("the connection is closing or closed")]
    Closed(Message),
    /// The outgoing buffer is above its high-water mark (from `try_send`, or from `send`
    /// on the callback thread or while this thread holds the
    /// [`HandlerGuard`](crate::HandlerGuard), where it does not wait).
    #[error("the outgoing buffer is full")]
    Full(Message),
    /// The outgoing buffer stayed above its high-water mark for the whole timeout (from
    /// `send_timeout`, or from `send` after the builder's
    /// [`send_timeout`](crate::Builder::send_timeout)). Named `TimedOut`, not `Timeout`,
    /// because [`Timeout`] names *which* wait ran out in [`Error::Timeout`]; this is the
    /// outcome, with the message.
    #[error("timed out waiting for room in the outgoing buffer")]
    TimedOut(Message),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            SendError::NotOpen(m)
            | SendError::Closed(m)
            | SendError::Full(m)
            | SendError::TimedOut(m) => m,
        }
    }

    /// A reference to the message that was not sent.
    pub fn message(&self) -> &Message {
        match self {
            SendError::NotOpen(m)
            | SendError::Closed(m)
            | SendError::Full(m)
            | SendError::TimedOut(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Error>();
    }

    #[test]
    fn each_level_of_a_chain_is_printed_once() {
        let e = Error::Connect {
            addr: "127.0.0.1:9".parse().unwrap(),
            source: Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        let top = e.to_string();
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert_eq!(top, "could not connect to 127.0.0.1:9");
        assert!(!top.contains(&source), "{top}");
        assert_eq!(e.chain(), format!("{top}: {source}"));
        assert_eq!(e.chain().matches(&source).count(), 1);
    }

    #[test]
    fn send_error_hands_message_back() {
        let e: Error = SendError::Closed(Message::from("hi")).into();
        assert_eq!(e.into_message().unwrap().as_text(), Some("hi"));
    }
}
