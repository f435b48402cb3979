//! A synchronous, browser-style WebSocket client: `onopen`, `onmessage`, `onerror` and
//! `onclose` for programs that are not async and do not want to be.
//!
//! ```
//! # let addr = nwebsocket_doc_server();
//! use nwebsocket::{Handler, Message, WebSocket, WebSocketRef};
//!
//! #[derive(Default)]
//! struct Chat {
//!     messages: Vec<String>,
//! }
//!
//! impl Handler for Chat {
//!     fn onopen(&mut self, ws: &WebSocketRef) {
//!         ws.send("hello").unwrap();
//!     }
//!     fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
//!         if let Some(text) = msg.as_text() {
//!             self.messages.push(text.to_owned());
//!         }
//!     }
//! }
//!
//! // Blocks until the connection is OPEN (or returns why it could not be).
//! let ws = WebSocket::connect(&format!("ws://{addr}/chat"), Chat::default())?;
//!
//! // Your thread is free: compute, then look at what the callbacks collected.
//! # let t = std::time::Instant::now();
//! # while ws.handler().messages.is_empty() && t.elapsed().as_secs() < 10 { std::thread::yield_now() }
//! println!("{:?}", ws.handler().messages);
//!
//! ws.close();
//! let closed = ws.wait_closed()?;
//! assert!(closed.was_clean);
//! # fn nwebsocket_doc_server() -> std::net::SocketAddr {
//! #     let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! #     let a = l.local_addr().unwrap();
//! #     std::thread::spawn(move || {
//! #         let mut ws = tungstenite::accept(l.accept().unwrap().0).unwrap();
//! #         while let Ok(m) = ws.read() { if m.is_text() || m.is_binary() { let _ = ws.send(m); } }
//! #     });
//! #     a
//! # }
//! # Ok::<(), nwebsocket::Error>(())
//! ```
//!
//! # The model
//!
//! Each connection has one background **I/O thread** (named `nwebsocket-io`). It owns the
//! socket, sleeps in a readiness poller until the socket, a `send`, or a timer you set
//! needs it, answers pings, runs the closing handshake, and turns what arrives into
//! [`Event`]s: `Open`, then `Message`s, then, on failure, `Error`, and always `Close`, last
//! (per connection, with reconnect on).
//! It never runs your callbacks (only a header provider, before each attempt), so a slow callback or a busy main thread cannot stall pongs,
//! keepalive or the close. An idle connection costs no CPU at all.
//!
//! You take the events one of three ways:
//!
//! 1. **Callback style**: [`WebSocket::connect(url, handler)`](WebSocket::connect). A
//!    [`Handler`]'s methods run in order on the connection's callback thread
//!    (`nwebsocket-cb`). [`WebSocket::handler`] locks the handler so your own thread can
//!    read the state the callbacks fill in, with no locking of your own.
//! 2. **Pull style**: [`WebSocket::connect_pull(url)`](WebSocket::connect_pull) returns
//!    [`Events`]: the events, handed over a read burst at a time and taken one by one,
//!    with a crossbeam `Receiver<Event>` inside (it dereferences to it). Use `recv`,
//!    `recv_timeout`, `try_recv`, or `select!` beside your own channels; or
//!    [`dispatch_pending`](WebSocketRef::dispatch_pending) to run a handler on *your*
//!    thread at the moments you choose (between chunks of numeric work), with no `Send`
//!    bound and no lock.
//! 3. **Pull style in batches**: [`Builder::connect_batches(url)`](Builder::connect_batches)
//!    returns [`EventBatches`]: the same events, a whole read burst per `recv`, for a
//!    consumer of floods of small messages (one channel operation per burst, not per
//!    event); [`dispatch_batches`](WebSocketRef::dispatch_batches) runs a handler over
//!    them on your thread.
//!
//! ```
//! # let addr = nwebsocket_doc_server();
//! use std::time::Duration;
//! use nwebsocket::{Event, WebSocket};
//!
//! let (ws, events) = WebSocket::connect_pull(&format!("ws://{addr}/"))?;
//! ws.send("ping me back")?;
//! loop {
//!     match events.recv_timeout(Duration::from_secs(5)).expect("an event") {
//!         Event::Open => {}
//!         Event::Message(msg) => {
//!             assert_eq!(msg.as_text(), Some("ping me back"));
//!             break;
//!         }
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//! # fn nwebsocket_doc_server() -> std::net::SocketAddr {
//! #     let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! #     let a = l.local_addr().unwrap();
//! #     std::thread::spawn(move || {
//! #         let mut ws = tungstenite::accept(l.accept().unwrap().0).unwrap();
//! #         while let Ok(m) = ws.read() { if m.is_text() || m.is_binary() { let _ = ws.send(m); } }
//! #     });
//! #     a
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! CPU-bound work that takes events between chunks:
//!
//! ```
//! # let addr = nwebsocket_doc_server();
//! use nwebsocket::{Handler, Message, WebSocket, WebSocketRef};
//!
//! struct Progress { acks: usize } // not Send: fine, it never leaves this thread
//! impl Handler for Progress {
//!     fn onmessage(&mut self, _ws: &WebSocketRef, _msg: Message) { self.acks += 1; }
//! }
//!
//! let (ws, events) = WebSocket::connect_pull(&format!("ws://{addr}/"))?;
//! let mut progress = Progress { acks: 0 };
//! let mut x = 0.5_f64;
//! for chunk in 0..3 {
//!     for _ in 0..100_000 { x = 3.9 * x * (1.0 - x); } // the real work
//!     ws.send(format!("chunk {chunk} done: {x:.6}"))?;
//!     ws.dispatch_pending(&events, &mut progress);       // events, when *we* choose
//! }
//! # while progress.acks < 3 {
//! #     let ev = events.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
//! #     ws.dispatch(&mut progress, ev);
//! # }
//! # fn nwebsocket_doc_server() -> std::net::SocketAddr {
//! #     let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! #     let a = l.local_addr().unwrap();
//! #     std::thread::spawn(move || {
//! #         let mut ws = tungstenite::accept(l.accept().unwrap().0).unwrap();
//! #         while let Ok(m) = ws.read() { if m.is_text() || m.is_binary() { let _ = ws.send(m); } }
//! #     });
//! #     a
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Sending
//!
//! [`WebSocket`] is `Clone + Send + Sync`: send from any thread. [`send`](WebSocketRef::send)
//! takes `&str`, `String`, `&[u8]` or `Vec<u8>` and queues the message for the I/O thread,
//! which writes it at once (many queued messages go out in one write). Messages from one
//! thread keep their order. [`buffered_amount`](WebSocketRef::buffered_amount) counts the
//! bytes accepted and not yet handed to the OS; above the
//! [high-water mark](Builder::high_water_mark) `send` blocks, for at most the builder's
//! [`send_timeout`](Builder::send_timeout) (on the callback thread, or while holding the
//! [`HandlerGuard`], it returns [`SendError::Full`] instead),
//! [`try_send`](WebSocketRef::try_send) returns [`SendError::Full`] and
//! [`send_timeout`](WebSocketRef::send_timeout) waits a bounded time. A send that cannot be
//! taken (not yet OPEN, closing, closed) returns the message in its [`SendError`]: nothing
//! is dropped silently.
//!
//! Incoming messages queue up to [`incoming_queue`](Builder::incoming_queue) events; when
//! the consumer falls behind, the I/O thread stops reading the socket and TCP slows the
//! server down, so memory stays bounded.
//!
//! # Disconnection
//!
//! [`close`](WebSocketRef::close) / [`close_with(code, reason)`](WebSocketRef::close_with)
//! start the closing handshake (messages sent before go out first) and return at once;
//! [`wait_closed`](WebSocketRef::wait_closed) blocks until CLOSED and returns the
//! [`CloseEvent`]. Dropping the last [`WebSocket`] handle closes with 1001 (going away) and
//! joins its threads within the [close timeout](Builder::close_timeout) and a second;
//! dropping the [`Events`] or [`EventBatches`] closes with 1001 too. Callbacks get a
//! [`WebSocketRef`], which does not keep the connection alive.
//!
//! # Errors
//!
//! One enum, [`Error`], `Clone + Send + Sync`: syntax errors (bad URL, subprotocol, close
//! code) are returned synchronously; connection failures (DNS, refused, TLS, a rejected
//! handshake with its status, headers and body, protocol violations, limits, timeouts) come
//! back from `connect` and through `onerror`, always followed by `onclose` with code 1006.
//! TLS, handshake, proxy and protocol failures carry a kind to match on
//! ([`TlsErrorKind`], [`HandshakeErrorKind`], [`ProxyErrorKind`], [`ProtocolErrorKind`]).
//! Each error's `Display` shows its own level only and [`source()`] the next, as the Rust
//! API guidelines ask; [`Error::chain`] joins the levels in one line.
//!
//! [`source()`]: std::error::Error::source
//!
//! # Defaults
//!
//! Every wait is bounded: connect 10 s, opening handshake 10 s, closing handshake 10 s.
//! Incoming messages and frames are limited to 16 MiB each; the incoming queue to 4,096
//! events in pull style (allocated only while they wait) and to batches of 512 events in
//! callback style and batches (and 2 MiB of payload in all); the outgoing high-water mark
//! is 8 MiB, and `send` waits at most 10 s for room under it.
//! `TCP_NODELAY` is on. No keepalive pings unless you set
//! [`ping_interval`](Builder::ping_interval). `wss://` uses rustls with the Mozilla root
//! certificates from `webpki-roots`, compiled in. permessage-deflate is offered as browsers
//! offer it (with the default `deflate` feature; see `Builder::deflate`): incoming
//! messages are inflated within the message size limit, outgoing ones of 1 KiB and up are
//! compressed, and the compression contexts are made only once a compressed message passes.
//!
//! # Features
//!
//! - `rustls` (default): `wss://` with rustls (*ring*) and the Mozilla roots of
//!   `webpki-roots`. Without it (and without `native-tls`), `wss://` fails with
//!   [`TlsErrorKind::Unsupported`], whose message names this feature.
//! - `deflate` (default): permessage-deflate (RFC 7692), offered as browsers do, on
//!   flate2.
//! - `json` (default): `send_json`, `Message::json`, `Router` and `request`, on serde and
//!   serde_json.
//! - `rustls-native-certs`: `Builder::os_root_certificates`, rustls with the operating
//!   system's certificate store instead of the compiled-in roots.
//! - `native-tls`: `wss://` with the platform's TLS (OpenSSL, Secure Transport, SChannel)
//!   and the system's roots, through the `native-tls` crate. With `rustls` on too, rustls
//!   is used unless [`Builder::tls_backend`] asks for [`TlsBackend::NativeTls`].
//! - `proxy` (default): HTTP CONNECT and SOCKS5 proxies, from
//!   [`Builder::proxy`] and the environment. It adds no crate; without it the environment's
//!   proxy variables are ignored and `proxy(url)` is refused.
//!
//! With `default-features = false` the crate is a `ws://` client on tungstenite,
//! crossbeam-channel, url, log and mio alone.
//!
//! # Log levels
//!
//! Through the `log` crate: state changes at `debug`, frames at `trace`, redirects and
//! reconnects at `info`, dropped data, a full queue and detached threads at `warn`, caught
//! callback panics at `error`. Nothing is printed.
//! tungstenite's own `trace` output includes handshake headers; keep the `tungstenite`
//! target below `trace` where requests carry credentials.
//!
//! # Minimum Rust version
//!
//! 1.85.

mod config;
mod delivery;
mod error;
mod handler;
mod io;
#[cfg(feature = "json")]
mod json;
/// Without `json` no request can be pending: every message is an ordinary one.
#[cfg(not(feature = "json"))]
mod json {
    use crate::message::Message;
    use crate::websocket::Shared;

    pub(crate) fn route_reply(_: &Shared, msg: Message) -> Option<Message> {
        Some(msg)
    }

    pub(crate) fn fail_requests(_: &Shared) {}
}
mod message;
mod protocol;
mod recycle;
mod response;
mod state;
mod url;
mod websocket;

#[cfg(feature = "deflate")]
pub use crate::config::Deflate;
pub use crate::config::{Builder, Reconnect};
pub use crate::delivery::{EventBatches, Events, EventsIntoIter, EventsIter, EventsTryIter};
pub use crate::error::{
    Error, HandshakeErrorKind, ProtocolErrorKind, ProxyErrorKind, Result, SendError, Source,
    Timeout, TlsErrorKind, UrlError,
};
pub use crate::handler::Handler;
pub use crate::io::TlsBackend;
#[cfg(feature = "json")]
pub use crate::json::Router;
pub use crate::message::{Binary, CloseEvent, Event, Message, Text};
pub use crate::response::HandshakeResponse;
pub use crate::state::ReadyState;
pub use crate::websocket::{HandlerGuard, WebSocket, WebSocketRef};

/// The channel crate of the event [`Receiver`](crossbeam_channel::Receiver), re-exported so
/// that `select!` and the channel types match the version this crate uses.
pub use crossbeam_channel;
