//! JSON helpers: a typed view of messages, dispatch by a `"type"` field, and
//! request/response matched by a correlation id.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result, Timeout};
use crate::handler::Handler;
use crate::message::{CloseEvent, Message};
use crate::state::ReadyState;
use crate::websocket::WebSocketRef;

impl Message {
    /// Parses a text message as JSON into `T` (use [`serde_json::Value`] for any JSON).
    ///
    /// ```
    /// # use nwebsocket::Message;
    /// #[derive(serde::Deserialize)]
    /// struct Chat { data: String }
    ///
    /// let msg = Message::from(r#"{"type": "message", "data": "hi"}"#);
    /// assert_eq!(msg.json::<Chat>()?.data, "hi");
    /// assert!(Message::from("not json").json::<Chat>().is_err());
    /// # Ok::<(), nwebsocket::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Json`] for a binary message, text that is not JSON, or JSON of another shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let text = self
            .as_text()
            .ok_or_else(|| Error::json("a binary message is not JSON text", None))?;
        serde_json::from_str(text)
            .map_err(|e| Error::json("the message is not the JSON expected", Some(Arc::new(e))))
    }
}

/// A route returns `false` when the message does not fit its type.
type Route = Box<dyn FnMut(&WebSocketRef, &Value) -> bool + Send>;
type Fallback = Box<dyn FnMut(&WebSocketRef, Message) + Send>;
type OnOpen = Box<dyn FnMut(&WebSocketRef) + Send>;
type OnError = Box<dyn FnMut(&WebSocketRef, Error) + Send>;
type OnClose = Box<dyn FnMut(&WebSocketRef, CloseEvent) + Send>;

/// A ready-made [`Handler`] that routes JSON messages by their `"type"` field.
///
/// Each text message that is a JSON object with a string `"type"` goes to the closure
/// registered for that type, deserialized into the closure's argument type. Everything
/// else (an unknown type, non-JSON text, binary, or JSON that does not fit the closure's
/// type) goes to the [fallback](Router::fallback), so nothing is lost (without one it is
/// logged at `debug`).
///
/// ```
/// use nwebsocket::{Router, WebSocketRef};
/// use serde_json::Value;
///
/// #[derive(serde::Deserialize)]
/// struct Chat { data: String }
///
/// let router = Router::new()
///     .on("message", |_ws: &WebSocketRef, chat: Chat| println!("chat: {}", chat.data))
///     .on("presence", |_ws: &WebSocketRef, v: Value| println!("presence: {v}"))
///     .fallback(|_ws, msg| println!("other: {msg:?}"));
/// // WebSocket::connect(url, router) runs it on the callback thread.
/// # drop(router);
/// ```
pub struct Router {
    field: String,
    routes: HashMap<String, Route>,
    fallback: Option<Fallback>,
    on_open: Option<OnOpen>,
    on_error: Option<OnError>,
    on_close: Option<OnClose>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A router on the `"type"` field, with no routes.
    pub fn new() -> Self {
        Self::with_field("type")
    }

    /// A router on another field name (`"kind"`, `"op"`, …).
    pub fn with_field(field: impl Into<String>) -> Self {
        Router {
            field: field.into(),
            routes: HashMap::new(),
            fallback: None,
            on_open: None,
            on_error: None,
            on_close: None,
        }
    }

    /// Routes messages whose type is `kind` to `f`, deserialized into `T`.
    pub fn on<T, F>(mut self, kind: impl Into<String>, mut f: F) -> Self
    where
        T: DeserializeOwned,
        F: FnMut(&WebSocketRef, T) + Send + 'static,
    {
        let kind = kind.into();
        let route: Route = Box::new(move |ws, value| match T::deserialize(value) {
            Ok(typed) => {
                f(ws, typed);
                true
            }
            Err(e) => {
                log::debug!("message does not fit its route, sent to the fallback: {e}");
                false
            }
        });
        self.routes.insert(kind, route);
        self
    }

    /// Receives every message no route took. Defaults to logging it at `debug`.
    pub fn fallback<F>(mut self, f: F) -> Self
    where
        F: FnMut(&WebSocketRef, Message) + Send + 'static,
    {
        self.fallback = Some(Box::new(f));
        self
    }

    /// Runs `f` as `onopen`.
    pub fn on_open<F: FnMut(&WebSocketRef) + Send + 'static>(mut self, f: F) -> Self {
        self.on_open = Some(Box::new(f));
        self
    }

    /// Runs `f` as `onerror`.
    pub fn on_error<F: FnMut(&WebSocketRef, Error) + Send + 'static>(mut self, f: F) -> Self {
        self.on_error = Some(Box::new(f));
        self
    }

    /// Runs `f` as `onclose`.
    pub fn on_close<F: FnMut(&WebSocketRef, CloseEvent) + Send + 'static>(mut self, f: F) -> Self {
        self.on_close = Some(Box::new(f));
        self
    }

    fn unrouted(&mut self, ws: &WebSocketRef, msg: Message) {
        match &mut self.fallback {
            Some(f) => f(ws, msg),
            None => log::debug!("unrouted message {msg:?}"),
        }
    }
}

impl Handler for Router {
    fn onopen(&mut self, ws: &WebSocketRef) {
        if let Some(f) = &mut self.on_open {
            f(ws);
        }
    }

    fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
        if let Ok(value) = msg.json::<Value>() {
            let kind = value.get(&self.field).and_then(Value::as_str);
            if let Some(route) = kind.and_then(|k| self.routes.get_mut(k)) {
                if route(ws, &value) {
                    return;
                }
            }
        }
        self.unrouted(ws, msg);
    }

    fn onerror(&mut self, ws: &WebSocketRef, err: Error) {
        match &mut self.on_error {
            Some(f) => f(ws, err),
            None => log::debug!("onerror {}: {err}", ws.url()),
        }
    }

    fn onclose(&mut self, ws: &WebSocketRef, event: CloseEvent) {
        if let Some(f) = &mut self.on_close {
            f(ws, event);
        }
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("field", &self.field)
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl WebSocketRef {
    /// Sends `value` (a JSON object) stamped with a fresh correlation id, and blocks until
    /// the message carrying the same id comes back, or `timeout` passes.
    ///
    /// The id goes in the field set by [`Builder::request_id_field`](crate::Builder::request_id_field)
    /// (default `"id"`) as a number. The I/O thread hands the reply straight to the waiting
    /// caller; every other message goes to `onmessage` / the event channel as usual. Any
    /// number of threads may wait on requests at once. A reply that arrives after its
    /// timeout is delivered as an ordinary message, so nothing is lost.
    ///
    /// # Ordering
    ///
    /// Messages reach the event channel (or `onmessage`) once, in the order they arrived;
    /// the reply goes to the waiting caller as soon as the I/O thread reads it. So the
    /// reply can *overtake* messages that arrived before it but are still queued for your
    /// consumer: when `request` returns, messages the server sent before the reply may
    /// not have been handled yet. If you need "everything before the reply", take the
    /// events that wait (`dispatch_pending`) after `request` returns.
    ///
    /// ```
    /// # let addr = nwebsocket_doc_server();
    /// use std::time::Duration;
    /// use nwebsocket::WebSocket;
    /// use serde_json::{json, Value};
    ///
    /// let (ws, _events) = WebSocket::connect_pull(&format!("ws://{addr}/"))?;
    /// let reply: Value = ws.request(&json!({"type": "query", "what": "users"}), Duration::from_secs(5))?;
    /// assert_eq!(reply["what"], "users");
    /// # fn nwebsocket_doc_server() -> std::net::SocketAddr {
    /// #     let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// #     let a = l.local_addr().unwrap();
    /// #     std::thread::spawn(move || {
    /// #         let mut ws = tungstenite::accept(l.accept().unwrap().0).unwrap();
    /// #         while let Ok(m) = ws.read() { if m.is_text() || m.is_binary() { let _ = ws.send(m); } }
    /// #     });
    /// #     a
    /// # }
    /// # Ok::<(), nwebsocket::Error>(())
    /// ```
    ///
    /// While a request waits, the I/O thread reads on past the incoming queue's bound (up
    /// to 65,536 events or 16 MiB more, kept in order for your consumer), so the reply is
    /// found even when the thread that waits is the one that would take the messages
    /// before it (inside a callback, or your pull-style loop). A reply behind more than
    /// that waits for your consumer to take some, or times out.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `value` is not a JSON object, already has the id field (it is
    /// never overwritten: a caller's own `"id"` would otherwise vanish silently), or the
    /// reply does not fit `R` (the reply is then in its `reply` field, whole: a server's
    /// error answer is not lost);
    /// [`Error::Send`] if it cannot be sent (with
    /// [`SendError::TimedOut`](crate::SendError::TimedOut) when the outgoing buffer stays
    /// above its high-water mark for the whole timeout); [`Error::Timeout`]
    /// ([`Timeout::Request`]) when no reply came in time; [`Error::InvalidState`] if the
    /// connection closed first.
    pub fn request<T, R>(&self, value: &T, timeout: Duration) -> Result<R>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let deadline = crate::protocol::saturating_deadline(Instant::now(), timeout);
        let mut value = serde_json::to_value(value)
            .map_err(|e| Error::json("could not serialize the request", Some(Arc::new(e))))?;
        let Value::Object(object) = &mut value else {
            return Err(Error::json("a request must be a JSON object", None));
        };
        let shared = &*self.shared;
        let field = &shared.config.request_id_field;
        if object.contains_key(field) {
            // Overwriting it would change what the caller sends; keeping it would let two
            // requests share an id. Neither is right without being asked.
            return Err(Error::json(
                format!(
                    "the request already has a {field:?} field, which `request` sets to its \
                     correlation id (choose another field with `Builder::request_id_field`)"
                ),
                None,
            ));
        }
        let id = shared.next_request_id.fetch_add(1, SeqCst);
        object.insert(field.clone(), Value::from(id));
        let text = serde_json::to_string(&value)
            .map_err(|e| Error::json("could not serialize the request", Some(Arc::new(e))))?;

        let (tx, rx) = crossbeam_channel::bounded(1);
        shared.requests().insert(id, tx);
        shared.pending_requests.fetch_add(1, SeqCst);
        // The timeout bounds the whole call: the wait for room under the high-water mark
        // too.
        let sent = self.send_timeout(text, timeout);
        let reply = match sent {
            Ok(()) => rx.recv_deadline(deadline).ok(),
            Err(e) => {
                self.forget_request(id);
                return Err(e.into());
            }
        };
        let reply = match reply {
            Some(reply) => reply,
            // Timed out, or the I/O thread ended. If the entry is still ours, nobody will
            // answer; otherwise the I/O thread took it and its reply is in the channel.
            None if self.forget_request(id) => {
                return Err(if self.shared.ready_state() == ReadyState::Closed {
                    Error::InvalidState(ReadyState::Closed)
                } else {
                    Error::Timeout(Timeout::Request)
                });
            }
            None => rx
                .recv()
                .map_err(|_| Error::InvalidState(ReadyState::Closed))?,
        };
        match reply.json() {
            Ok(value) => Ok(value),
            Err(Error::Json { source, .. }) => Err(Error::Json {
                message: "the reply is not the JSON expected".into(),
                source,
                reply: Some(Box::new(reply)),
            }),
            Err(e) => Err(e),
        }
    }

    /// Removes a pending request; `true` if it was still pending.
    fn forget_request(&self, id: u64) -> bool {
        let removed = self.shared.requests().remove(&id).is_some();
        if removed {
            self.shared.pending_requests.fetch_sub(1, SeqCst);
        }
        removed
    }
}

/// The I/O thread's side of `request`: hands a reply to its waiting caller, or gives the
/// message back when it is not a reply to a pending request.
pub(crate) fn route_reply(shared: &crate::websocket::Shared, msg: Message) -> Option<Message> {
    if shared.pending_requests.load(SeqCst) == 0 {
        return Some(msg);
    }
    let Some(id) = msg
        .as_text()
        .and_then(|t| extract_id(t, &shared.config.request_id_field))
    else {
        return Some(msg);
    };
    let waiter = shared.requests().remove(&id);
    match waiter {
        Some(tx) => {
            shared.pending_requests.fetch_sub(1, SeqCst);
            // Capacity 1, one reply per id: this cannot block. If the caller is gone, the
            // reply goes back to the ordinary path.
            tx.send(msg).err().map(|e| e.into_inner())
        }
        None => Some(msg),
    }
}

/// The I/O thread ended: wake every waiting requester.
pub(crate) fn fail_requests(shared: &crate::websocket::Shared) {
    let mut requests = shared.requests();
    shared.pending_requests.fetch_sub(requests.len(), SeqCst);
    requests.clear();
}

impl crate::websocket::Shared {
    fn requests(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, crossbeam_channel::Sender<Message>>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads `field` of a JSON object as a `u64` without building the rest of the document.
/// `None` unless the text is one JSON document (nothing after it) whose field appears once.
fn extract_id(text: &str, field: &str) -> Option<u64> {
    let mut de = serde_json::Deserializer::from_str(text);
    let id = IdSeed(Some(field)).deserialize(&mut de).ok().flatten()?;
    de.end().ok()?;
    Some(id)
}

/// Reads a JSON value without building it. `Some(field)`: an object's `field`, as a
/// `u64`; `None`: the value itself, as a `u64`. Anything else is `None`, skipped (a huge
/// or deeply nested value costs no memory: a `Value` of a 16 MiB id would have cost
/// hundreds of MiB).
struct IdSeed<'f>(Option<&'f str>);

impl<'de> DeserializeSeed<'de> for IdSeed<'_> {
    type Value = Option<u64>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdSeed<'_> {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut found = None;
        let mut seen = 0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if Some(&*key) == self.0 {
                seen += 1;
                found = map.next_value_seed(IdSeed(None))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        // The field twice: which one counts is anybody's guess (serde_json's `Value` keeps
        // the last), so it is nobody's reply.
        Ok(found.filter(|_| seen == 1))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_u64<E>(self, v: u64) -> Result<Option<u64>, E> {
        Ok(self.0.is_none().then_some(v))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_id_reads_only_the_field() {
        assert_eq!(
            extract_id(r#"{"type":"x","id":42,"data":[1,2,{"id":7}]}"#, "id"),
            Some(42)
        );
        assert_eq!(extract_id(r#"{"data":{"id":7}}"#, "id"), None);
        assert_eq!(extract_id(r#"{"id":"42"}"#, "id"), None);
        assert_eq!(extract_id(r#"{"rid":5}"#, "rid"), Some(5));
        assert_eq!(extract_id("[1,2]", "id"), None);
        assert_eq!(extract_id("not json", "id"), None);
        assert_eq!(extract_id(r#""str""#, "id"), None);
        assert_eq!(extract_id(r#"{"id":[[],[{"a":1}],{}]}"#, "id"), None);
        assert_eq!(extract_id(r#"{"id":{"id":3}}"#, "id"), None);
        assert_eq!(extract_id(r#"{"id":-3}"#, "id"), None);
        assert_eq!(extract_id(r#"{"id":3.5}"#, "id"), None);
        assert_eq!(extract_id(r#"{"id":null,"x":1}"#, "id"), None);
        assert_eq!(extract_id(r#"{"id":7,"id":7}"#, "id"), None);
    }

    #[test]
    fn json_view_errors_are_typed() {
        assert!(matches!(
            Message::from(vec![1u8]).json::<Value>(),
            Err(Error::Json { .. })
        ));
        assert!(matches!(
            Message::from("{").json::<Value>(),
            Err(Error::Json { .. })
        ));
        let v: Value = Message::from(r#"{"a":1}"#).json().unwrap();
        assert_eq!(v["a"], 1);
    }
}
