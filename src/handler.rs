//! The `Handler` trait: the browser's `onopen` / `onmessage` / `onerror` / `onclose`.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::Error;
use crate::message::{Binary, CloseEvent, Event, Message};
use crate::websocket::{Shared, WebSocketRef};

/// Receives a connection's events, with the browser's method names.
///
/// Every method has a default body (logging, or nothing for `onping` and `onpong`), so
/// implement the ones you need.
/// They are called in order, one at a time: `onopen` once, then `onmessage` for each
/// message, then, if the connection failed, `onerror` once, and always `onclose` once,
/// last. Nothing is called after `onclose`.
///
/// # Which thread runs them
///
/// With [`WebSocket::connect`](crate::WebSocket::connect) they run on the connection's
/// callback thread (named `nwebsocket-cb`). The I/O thread never runs your code, so a slow
/// callback does not delay pongs, keepalive or the closing handshake; it only lets
/// incoming messages queue up (and, once [`incoming_queue`](crate::Builder::incoming_queue)
/// is full, makes the server wait). Heavy work belongs on your own threads: forward
/// messages to a channel of yours.
///
/// With pull style, [`dispatch_pending`](crate::WebSocketRef::dispatch_pending) runs them
/// on your thread, when you choose; then the handler need not be `Send`.
///
/// A panic in a callback is caught, logged, and reported to `onerror` as
/// [`Error::CallbackPanic`]; the connection carries on. A panic in `onclose` is only
/// logged: nothing is called after `onclose`.
///
/// The `ws` argument can send, close and inspect the connection but does not keep it
/// alive; store a [`WebSocketRef`] (clone it), never a [`WebSocket`](crate::WebSocket),
/// inside a handler.
///
/// ```
/// use nwebsocket::{Handler, Message, WebSocketRef};
///
/// #[derive(Default)]
/// struct Echo { seen: usize }
///
/// impl Handler for Echo {
///     fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
///         self.seen += 1;
///         let _ = ws.send(msg);
///     }
/// }
/// ```
///
/// A closure `FnMut(&WebSocketRef, Message)` is a handler too: its `onmessage`.
pub trait Handler {
    /// The connection is OPEN; [`protocol()`](WebSocketRef::protocol) is known.
    fn onopen(&mut self, ws: &WebSocketRef) {
        log::debug!("onopen {}", ws.url());
    }

    /// A complete message arrived.
    fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
        let _ = ws;
        log::trace!("onmessage (unhandled) {msg:?}");
    }

    /// The connection failed, or a callback panicked. After a failure `onclose` follows.
    fn onerror(&mut self, ws: &WebSocketRef, err: Error) {
        log::debug!("onerror {}: {err}", ws.url());
    }

    /// The connection is CLOSED. The connection's last call (with
    /// [`reconnect`](crate::Builder::reconnect) on, a new connection's `onopen` may follow;
    /// after the last connection's, nothing does).
    fn onclose(&mut self, ws: &WebSocketRef, event: CloseEvent) {
        log::debug!("onclose {}: {event:?}", ws.url());
    }

    /// A ping arrived and was answered (only with
    /// [`Builder::ping_events`](crate::Builder::ping_events)).
    fn onping(&mut self, ws: &WebSocketRef, payload: Binary) {
        let _ = (ws, payload);
    }

    /// A pong arrived (only with [`Builder::ping_events`](crate::Builder::ping_events)).
    fn onpong(&mut self, ws: &WebSocketRef, payload: Binary) {
        let _ = (ws, payload);
    }
}

impl<F> Handler for F
where
    F: FnMut(&WebSocketRef, Message),
{
    fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
        self(ws, msg)
    }
}

/// Pull style with no callbacks: the unit handler only logs.
impl Handler for () {}

/// Which events a callback runs for, as far as the state it sees goes (see
/// [`WebSocketRef::ready_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatching {
    /// `Open`, a message, a ping or a pong: the connection is OPEN (or CLOSING).
    Live,
    /// `Error` or `Close`: it is CLOSED.
    Ended,
}

thread_local! {
    /// While this thread runs a callback: the connection (its `Shared`, by address) and
    /// the kind of event.
    static DISPATCHING: Cell<Option<(*const Shared, Dispatching)>> = const { Cell::new(None) };
}

/// What this thread is running a callback for, if it runs one for `shared`'s connection.
pub(crate) fn dispatching(shared: &Arc<Shared>) -> Option<Dispatching> {
    match DISPATCHING.get() {
        Some((at, kind)) if std::ptr::eq(at, Arc::as_ptr(shared)) => Some(kind),
        _ => None,
    }
}

/// Puts back what [`DISPATCHING`] said before a callback (a callback may dispatch events
/// of another connection, or of this one through `dispatch_pending`).
struct Restore(Option<(*const Shared, Dispatching)>);

impl Drop for Restore {
    fn drop(&mut self) {
        DISPATCHING.set(self.0);
    }
}

/// Runs the callback for `event`, catching a panic and reporting it to `onerror`.
pub(crate) fn dispatch<H: Handler + ?Sized>(ws: &WebSocketRef, handler: &mut H, event: Event) {
    let kind = match event {
        Event::Error(_) | Event::Close(_) => Dispatching::Ended,
        _ => Dispatching::Live,
    };
    let _restore = Restore(DISPATCHING.replace(Some((Arc::as_ptr(&ws.shared), kind))));
    let last = matches!(event, Event::Close(_));
    let result = catch_unwind(AssertUnwindSafe(|| match event {
        Event::Open => handler.onopen(ws),
        Event::Message(m) => handler.onmessage(ws, m),
        Event::Error(e) => handler.onerror(ws, e),
        Event::Close(c) => handler.onclose(ws, c),
        Event::Ping(p) => handler.onping(ws, p),
        Event::Pong(p) => handler.onpong(ws, p),
    }));
    if let Err(panic) = result {
        let text = panic_text(&*panic);
        log::error!("a callback panicked: {text}");
        if last {
            return; // nothing follows `onclose`, not even the report of its own panic
        }
        let report = catch_unwind(AssertUnwindSafe(|| {
            handler.onerror(ws, Error::CallbackPanic(text))
        }));
        if report.is_err() {
            log::error!("onerror panicked while reporting a panic; ignored");
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
