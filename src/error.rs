//! The crate's one error type.

use std::io;
use std::sync::Arc;

use crate::message::Message;
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
    /// The call needs another state of the connection (for example `ping` before OPEN).
    #[error("the connection is {0:?}, which does not allow this")]
    InvalidState(ReadyState),
    /// A message was not taken; the error hands it back.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The host name could not be resolved.
    #[error("DNS lookup of {host:?} failed: {source}")]
    Dns {
        /// The host that was looked up.
        host: String,
        /// What the resolver said.
        #[source]
        source: Arc<io::Error>,
    },
    /// No TCP connection could be made (refused, unreachable, …) to any resolved address.
    #[error("could not connect: {0}")]
    Connect(#[source] Arc<io::Error>),
    /// The TLS handshake failed or a TLS setting is unusable (bad certificate, wrong host name…).
    #[error("TLS: {0}")]
    Tls(String),
    /// The server answered the opening handshake with something other than `101`.
    #[error("handshake rejected with HTTP status {status}")]
    HandshakeRejected {
        /// The HTTP status code the server sent.
        status: u16,
        /// The response body, if any (capped by tungstenite).
        body: Option<Vec<u8>>,
    },
    /// The HTTP CONNECT proxy could not be used: a bad proxy URL, or the proxy refused
    /// or broke the tunnel (its status line is in the message).
    #[error("proxy: {0}")]
    Proxy(String),
    /// The opening handshake was redirected more times than
    /// [`Builder::max_redirects`](crate::Builder::max_redirects) allows (or in a loop).
    #[error("too many redirects (limit {limit}), the last one to {location}")]
    TooManyRedirects {
        /// The configured limit.
        limit: usize,
        /// Where the refused redirect pointed.
        location: String,
    },
    /// The opening handshake response was not a valid WebSocket upgrade
    /// (bad `Sec-WebSocket-Accept`, a subprotocol or extension that was not offered…).
    #[error("invalid handshake response: {0}")]
    Handshake(String),
    /// The peer broke RFC 6455 (masked frame, reserved bits, invalid UTF-8 in text…).
    #[error("protocol violation: {0}")]
    Protocol(String),
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
    /// A bounded wait ran out.
    #[error("{0} timed out")]
    Timeout(Timeout),
    /// The connection was lost or a socket call failed after the handshake.
    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// `close` was called while the connection was still CONNECTING.
    #[error("the connection was closed before it was established")]
    Aborted,
    /// A value could not be serialized to JSON, or a message is not the JSON expected.
    #[error("JSON: {0}")]
    Json(String),
    /// A callback panicked; the panic was caught and the connection carries on.
    #[error("a callback panicked: {0}")]
    CallbackPanic(String),
    /// A blocking call was made where it could never return: `wait_closed` on the
    /// callback thread (which must return before `onclose` can run), or while the same
    /// thread holds the [`HandlerGuard`](crate::HandlerGuard). It returns this at once
    /// instead of blocking for ever.
    #[error("{0} would never return here")]
    WouldDeadlock(&'static str),
    /// The connection's I/O thread panicked (a bug in this crate); the panic was caught and
    /// the connection closed.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(err: io::Error) -> Self {
        Error::Io(Arc::new(err))
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
    /// The outgoing buffer is above its high-water mark (from `try_send`).
    #[error("the outgoing buffer is full")]
    Full(Message),
    /// The outgoing buffer stayed above its high-water mark for the whole timeout.
    #[error("timed out waiting for room in the outgoing buffer")]
    Timeout(Message),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            SendError::NotOpen(m)
            | SendError::Closed(m)
            | SendError::Full(m)
            | SendError::Timeout(m) => m,
        }
    }

    /// A reference to the message that was not sent.
    pub fn message(&self) -> &Message {
        match self {
            SendError::NotOpen(m)
            | SendError::Closed(m)
            | SendError::Full(m)
            | SendError::Timeout(m) => m,
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
    fn send_error_hands_message_back() {
        let e: Error = SendError::Closed(Message::from("hi")).into();
        assert_eq!(e.into_message().unwrap().as_text(), Some("hi"));
    }
}
