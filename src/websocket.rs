//! The `WebSocket` handle, its non-owning twin `WebSocketRef`, and the state they share
//! with the I/O thread.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tungstenite::Bytes;

use crate::config::{Builder, Config, CALLBACK_QUEUE, PULL_QUEUE};
use crate::delivery::{Batches, EventBatches, Events, Outlet, Room};
use crate::error::{Error, Result, SendError, Timeout};
use crate::handler::{dispatch, Dispatching, Handler};
use crate::io::{Command, IoThread};
use crate::message::{CloseEvent, Event, Message};
use crate::protocol::{self, after, Outbox};
use crate::state::ReadyState;
use crate::url::Target;

/// A connection: a cheap, clonable handle (`Clone + Send + Sync`) to one WebSocket whose
/// socket lives on a background I/O thread.
///
/// All the connection's methods (`send`, `close`, `ready_state`, …) are on
/// [`WebSocketRef`], which this dereferences to. `WebSocket<H>` adds ownership: the
/// connection lives while a `WebSocket` handle does, and [`handler`](Self::handler) gives
/// your thread the callback handler's state.
///
/// Why `Deref` (the API guidelines keep it for smart pointers): a `WebSocket` *is* a
/// smart pointer, an owning, counted reference to the connection, as `Arc` is to its
/// value, and `WebSocketRef` is its weak-like twin. `Deref` gives both handles one set of
/// methods, documented once, with no name clash to resolve (`WebSocket`'s own methods,
/// `handler` and `downgrade`, exist only on the owner). `&WebSocket` also coerces to
/// `&WebSocketRef`, so a function that only sends can take `&WebSocketRef` and serve both.
///
/// # Disconnection
///
/// Dropping the last `WebSocket` handle closes the connection with 1001 (going away),
/// waits for the closing handshake up to the close timeout, and joins the I/O and
/// callback threads: no thread outlives the handle (unless a callback of yours is still
/// blocked after the timeout, which is logged). Messages still queued for the handler a
/// close timeout after the drop are not handed to it (a warning says how many); its
/// `onclose` still runs. A [`WebSocketRef`] does not keep the
/// connection alive; once it is gone, its sends return [`SendError::Closed`].
pub struct WebSocket<H = ()> {
    owner: Arc<Owner<H>>,
}

struct Owner<H> {
    ws: WebSocketRef,
    handler: Arc<HandlerCell<H>>,
    threads: Mutex<Threads>,
}

#[derive(Default)]
struct Threads {
    io: Option<Joinable>,
    callback: Option<Joinable>,
}

/// A non-owning handle to a connection: everything but keeping it alive.
///
/// Callbacks receive one. Clone and store it freely (in a handler, in another thread):
/// it never keeps the connection open, so it cannot create a cycle that leaks threads.
#[derive(Clone)]
pub struct WebSocketRef {
    pub(crate) shared: Arc<Shared>,
}

/// Why this thread holds the handler (see `Shared::close_wait_deadlock`).
#[derive(Debug, Clone, Copy)]
enum Holder {
    /// The callback thread, while a callback runs.
    CallbackThread,
    /// A thread with a [`HandlerGuard`].
    ThisThread,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Holder::CallbackThread => "on the callback thread",
            Holder::ThisThread => "while this thread holds the handler",
        })
    }
}

/// What one connection's opening handshake settled, for [`WebSocketRef::protocol`],
/// [`WebSocketRef::extensions`] and [`WebSocketRef::handshake_response`].
#[derive(Debug)]
pub(crate) struct Opened {
    pub protocol: String,
    pub extensions: String,
    pub response: Arc<crate::response::HandshakeResponse>,
}

/// The connections' handshakes: the latest, and, so that a callback sees its own
/// connection's however late it runs (with reconnect, the next connection may be open
/// by then), those of the `Open` events in order as the consumer takes them.
#[derive(Debug, Default)]
pub(crate) struct Opens {
    latest: Option<Arc<Opened>>,
    /// Of the `Open` events handed over and not taken yet, oldest first.
    untaken: VecDeque<Arc<Opened>>,
    /// Of the last `Open` taken: what callbacks see.
    taken: Option<Arc<Opened>>,
    /// Takes are not all seen (the raw receiver was used, or more than [`UNTAKEN_OPENS`]
    /// waited): callbacks see the latest connection's.
    untracked: bool,
}

/// The most `Open` events of reconnections that may wait untaken with their handshakes
/// kept (see [`Opens`]).
const UNTAKEN_OPENS: usize = 64;

/// State shared by the handles, the I/O thread and the callback thread.
pub(crate) struct Shared {
    pub target: Target,
    pub config: Config,
    /// `ReadyState` as u8. Written only under the outbox lock, so that a `send` holding
    /// it sees a state that cannot close under it (a frame appended while OPEN goes out
    /// before our Close). One lock per send, not a gate and then the outbox: each
    /// locked instruction waited for the cross-core traffic of the one before.
    state: Padded<AtomicU8>,
    commands: Sender<Command>,
    /// Frames encoded by `send`, waiting for the I/O thread (see `protocol::push`). Every
    /// `send` locks it: on a cache line of its own, away from what the I/O thread writes.
    outbox: Padded<Mutex<Outbox>>,
    /// permessage-deflate's compressor, taken by sending threads before the outbox.
    pub deflate: protocol::SendDeflate,
    /// The pings `ping` asked for, until the I/O thread takes them: at most
    /// [`crate::protocol::PINGS`], so that pings asked for faster than they go out cannot
    /// pile up (`ping` refuses more).
    ping: Mutex<VecDeque<Bytes>>,
    waker: mio::Waker,
    /// Set by the I/O thread while it sleeps in `poll`, and while it looks for an answer
    /// after a write with nothing handed over since; senders wake it only then.
    pub io_sleeping: AtomicBool,
    /// Set by the I/O thread while it looks for an answer after a write (see `SPIN` in
    /// `io`): a consumer waiting for an event yields on meanwhile (`Batches::look`).
    pub io_looking: AtomicBool,
    /// Bytes of application data accepted by `send` and not yet handed to the OS.
    buffered: Padded<AtomicUsize>,
    drain_waiters: AtomicUsize,
    drained: (Mutex<()>, Condvar),
    /// The connections' handshakes.
    opens: Mutex<Opens>,
    /// `opens.untaken.len()`, for takes to skip looking for `Open`s when none can be
    /// there (written under the lock).
    pub opens_untaken: AtomicUsize,
    status: Mutex<Status>,
    status_changed: Condvar,
    /// Callers of `request` waiting for a reply, by correlation id.
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub requests: Mutex<HashMap<u64, Sender<Message>>>,
    /// `requests.len()`, readable without the lock on every incoming message.
    pub pending_requests: AtomicUsize,
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub next_request_id: AtomicU64,
    /// Callback style: the callback thread publishes CLOSED after `onclose` ran.
    pub callback_mode: bool,
    /// The callback thread, when there is one: `Drop` on it must not join it.
    callback_thread: OnceLock<ThreadId>,
    /// Set when the last handle is dropped: after this, the callback thread hands the
    /// handler only the end (`onerror`, `onclose`), so that the drop can join it.
    callbacks_until: OnceLock<Instant>,
    /// The thread holding the [`HandlerGuard`], if one does.
    handler_holder: Mutex<Option<ThreadId>>,
    /// `close` or `close_with` was called: a callback then sees CLOSING (see
    /// [`WebSocketRef::ready_state`]).
    close_requested: AtomicBool,
}

/// A value on a cache line (pair) of its own.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Default)]
struct Status {
    open: Option<Result<()>>,
    closed: Option<CloseEvent>,
}

impl Shared {
    /// Whether waiting on this thread for the end of the connection (callback style:
    /// until `onclose` has run) would never return, because this thread holds the handler
    /// `onclose` needs. Then the callback thread takes no events either, so neither can a
    /// `send` wait for room (see `send_inner`).
    fn close_wait_deadlock(&self) -> Option<Holder> {
        self.callback_mode.then(|| self.held_here()).flatten()
    }

    /// Whether this thread holds the handler, and why.
    fn held_here(&self) -> Option<Holder> {
        if self.on_callback_thread() {
            return Some(Holder::CallbackThread);
        }
        (self.handler_holder() == Some(thread::current().id())).then_some(Holder::ThisThread)
    }

    fn on_callback_thread(&self) -> bool {
        self.callback_thread.get() == Some(&thread::current().id())
    }

    /// The thread that holds the [`HandlerGuard`], if one does.
    fn handler_holder(&self) -> Option<ThreadId> {
        *self
            .handler_holder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn opens(&self) -> MutexGuard<'_, Opens> {
        self.opens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The I/O thread: a connection's handshake succeeded (before it is OPEN).
    pub fn set_opened(&self, opened: Opened) {
        self.opens().latest = Some(Arc::new(opened));
    }

    /// The I/O thread: its `Open` event is being handed over.
    pub fn open_handed_over(&self) {
        let mut opens = self.opens();
        if opens.untracked {
            return;
        }
        if opens.untaken.len() == UNTAKEN_OPENS {
            opens.untracked = true;
            opens.untaken.clear();
        } else if let Some(latest) = opens.latest.clone() {
            opens.untaken.push_back(latest);
        }
        self.opens_untaken.store(opens.untaken.len(), SeqCst);
    }

    /// The consumer took an `Open` event: its callbacks see that connection's handshake.
    #[cold]
    pub fn open_taken(&self) {
        let mut opens = self.opens();
        if let Some(opened) = opens.untaken.pop_front() {
            opens.taken = Some(opened);
        }
        self.opens_untaken.store(opens.untaken.len(), SeqCst);
    }

    /// Takes may go unseen from now on (the raw receiver is used).
    pub fn untrack_opens(&self) {
        let mut opens = self.opens();
        opens.untracked = true;
        opens.untaken.clear();
        self.opens_untaken.store(0, SeqCst);
    }

    /// The handshake a caller sees: in a callback, that of the connection whose events
    /// it handles; elsewhere the latest connection's.
    pub fn opened(&self, in_callback: bool) -> Option<Arc<Opened>> {
        let opens = self.opens();
        match &opens.taken {
            Some(taken) if in_callback && !opens.untracked => Some(Arc::clone(taken)),
            _ => opens.latest.clone(),
        }
    }

    pub fn ready_state(&self) -> ReadyState {
        ReadyState::from_u8(self.state.load(SeqCst))
    }

    /// Moves the state forward from `from` to `to`; `false` if it was elsewhere.
    pub fn transition(&self, from: &[ReadyState], to: ReadyState) -> bool {
        let _gate = self.lock_outbox();
        let now = self.ready_state();
        if !from.contains(&now) {
            return false;
        }
        self.state.store(to as u8, SeqCst);
        log::debug!("{}: {now:?} -> {to:?}", self.target.url);
        if to >= ReadyState::Closing {
            // Senders blocked on the high-water mark give up at once: they get their
            // message back with `SendError::Closed`.
            self.notify_drained();
        }
        true
    }

    pub(crate) fn enqueue(&self, command: Command) {
        // The channel is unbounded: sending only fails once the I/O thread is gone, and
        // then the state is already CLOSED and no caller got an `Ok`.
        let _ = self.commands.send(command);
        self.wake_io();
    }

    /// Wakes the I/O thread if it sleeps in `poll` (pairs with the fences in `Io::sleep` and
    /// in the look of `IoThread::wait`).
    fn wake_io(&self) {
        fence(SeqCst);
        // A plain load first: while the I/O thread is awake, no read-modify-write at all.
        if self.io_sleeping.load(Relaxed) && self.io_sleeping.swap(false, SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::warn!("could not wake the I/O thread: {e}");
            }
        }
    }

    /// The outbox, locked. Also the lock that every change of state takes (see `state`).
    pub(crate) fn lock_outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pings `ping` asked for, in order.
    /// At most `max` of the pings `ping` queued, oldest first, and whether more wait.
    pub fn take_pings(&self, max: usize) -> (Vec<Bytes>, bool) {
        let mut waiting = self.ping.lock().unwrap_or_else(PoisonError::into_inner);
        let n = max.min(waiting.len());
        let taken = waiting.drain(..n).collect();
        (taken, !waiting.is_empty())
    }

    /// The I/O thread handed `bytes` of application data to the OS.
    pub fn sent(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.buffered.fetch_sub(bytes, SeqCst);
        if self.drain_waiters.load(SeqCst) > 0 {
            self.notify_drained();
        }
    }

    fn notify_drained(&self) {
        let _lock = self
            .drained
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.drained.1.notify_all();
    }

    /// Waits until `ready` finds what it looks for in the status, or `deadline` passes.
    fn wait_status<T>(
        &self,
        deadline: Option<Instant>,
        ready: impl Fn(&Status) -> Option<T>,
    ) -> Option<T> {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(found) = ready(&status) {
                return Some(found);
            }
            status = match deadline {
                None => self
                    .status_changed
                    .wait(status)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.status_changed
                        .wait_timeout(status, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    pub fn set_open(&self, result: Result<()>) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.open.get_or_insert(result);
        self.status_changed.notify_all();
    }

    pub fn set_closed(&self, event: CloseEvent) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.open.get_or_insert(Err(Error::Aborted));
        status.closed.get_or_insert(event);
        self.status_changed.notify_all();
    }

    pub fn buffered(&self) -> usize {
        self.buffered.load(SeqCst)
    }
}

impl WebSocketRef {
    /// Sends a message (text from `&str`/`String`, binary from `&[u8]`/`Vec<u8>`), blocking
    /// only while [`buffered_amount()`](Self::buffered_amount) is above the high-water mark,
    /// and then for at most the builder's
    /// [`send_timeout`](crate::Builder::send_timeout) (10 s by default).
    /// On the callback thread (inside a callback of callback style), or while this thread
    /// holds the [`HandlerGuard`], it does not block: above the mark it returns
    /// [`SendError::Full`] at once, as [`try_send`](Self::try_send) does (the callback
    /// thread takes the events a server may be waiting on us to read before it reads what
    /// we send, and it cannot while the handler is held;
    /// [`send_timeout`](Self::send_timeout) there waits as asked). Inside
    /// [`dispatch_pending`](Self::dispatch_pending) on your own thread it waits as
    /// anywhere else.
    ///
    /// The message is queued for the I/O thread, which writes it at once: there is no
    /// polling interval. Messages sent from one thread go out in that order.
    ///
    /// # Errors
    ///
    /// [`SendError::NotOpen`] in CONNECTING, [`SendError::Closed`] after `close` or once the
    /// connection is closing or gone, [`SendError::TimedOut`] when no room was made within
    /// the send timeout, [`SendError::Full`] where it does not wait (above). Each hands the
    /// message back.
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        self.send_inner(msg.into(), Wait::Configured)
    }

    /// Sends without blocking.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), plus [`SendError::Full`] when the outgoing buffer is above
    /// the high-water mark.
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        self.send_inner(msg.into(), Wait::Never)
    }

    /// Sends, waiting at most `timeout` for room under the high-water mark.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), plus [`SendError::TimedOut`] when no room was made in time.
    pub fn send_timeout(
        &self,
        msg: impl Into<Message>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let wait = after(Instant::now(), Some(timeout)).map_or(Wait::Forever, Wait::Until);
        self.send_inner(msg.into(), wait)
    }

    fn send_inner(&self, msg: Message, wait: Wait) -> Result<(), SendError> {
        let shared = &*self.shared;
        if shared.buffered.load(SeqCst) > shared.config.high_water_mark {
            // On the callback thread, `send` does not wait: that thread takes the events a
            // server may be blocked on before it reads our data again (rule 13). Nor on a
            // thread that holds the handler: the callback thread waits for it meanwhile.
            let wait = match wait {
                Wait::Configured if shared.close_wait_deadlock().is_some() => Wait::Never,
                Wait::Configured => after(Instant::now(), Some(shared.config.send_timeout))
                    .map_or(Wait::Forever, Wait::Until),
                wait => wait,
            };
            let waited = match wait {
                Wait::Never | Wait::Configured => Err(Waited::TimedOut),
                Wait::Forever => self.wait_for_room(None),
                Wait::Until(deadline) => self.wait_for_room(Some(deadline)),
            };
            match (waited, wait) {
                (Ok(()), _) => {}
                (Err(Waited::Closed), _) => return Err(SendError::Closed(msg)),
                (Err(Waited::TimedOut), Wait::Never) => return Err(SendError::Full(msg)),
                (Err(Waited::TimedOut), _) => return Err(SendError::TimedOut(msg)),
            }
        }
        // Refused early, before the frame is built; and again under the outbox lock, which
        // every change of state takes: a frame appended while OPEN goes out before our
        // Close.
        if let Some(refuse) = refused(shared.ready_state()) {
            return Err(refuse(msg));
        }
        let open = || shared.ready_state() == ReadyState::Open;
        let appended = protocol::push(&msg, &shared.deflate, open, |append| {
            let mut outbox = shared.lock_outbox();
            if let Some(refuse) = refused(shared.ready_state()) {
                return Err(refuse);
            }
            shared.buffered.fetch_add(msg.len(), SeqCst);
            let was_empty = outbox.is_empty();
            append(&mut outbox);
            Ok(was_empty)
        });
        match appended {
            Ok(true) => {
                // One nudge per batch, not per message: it wakes the I/O thread wherever
                // it waits (in `poll`, or on a full event channel).
                shared.enqueue(Command::Flush);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(refuse) => Err(refuse(msg)),
        }
    }

    fn wait_for_room(&self, deadline: Option<Instant>) -> Result<(), Waited> {
        let shared = &*self.shared;
        let (lock, cv) = &shared.drained;
        shared.drain_waiters.fetch_add(1, SeqCst);
        let mut guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let result = loop {
            if shared.ready_state() >= ReadyState::Closing {
                break Err(Waited::Closed);
            }
            if shared.buffered.load(SeqCst) <= shared.config.high_water_mark {
                break Ok(());
            }
            match deadline {
                None => guard = cv.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(Waited::TimedOut);
                    }
                    guard = cv
                        .wait_timeout(guard, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        };
        drop(guard);
        shared.drain_waiters.fetch_sub(1, SeqCst);
        result
    }

    /// Serializes `value` to JSON and sends it as a text message.
    ///
    /// # Errors
    ///
    /// [`Error::Send`] as for [`send`](Self::send); [`Error::Json`] if `value` cannot be
    /// serialized (for example a map with non-string keys).
    #[cfg(feature = "json")]
    pub fn send_json<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)
            .map_err(|e| Error::json("could not serialize the value", Some(Arc::new(e))))?;
        Ok(self.send(text)?)
    }

    /// Sends a ping with `payload` (at most 125 bytes). Its pong reaches
    /// [`Handler::onpong`] when [`Builder::ping_events`] is on.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPingPayload`] for more than 125 bytes; [`Error::InvalidState`] when
    /// the connection is not OPEN; [`Error::PingsWaiting`] when 16 pings already wait for
    /// the I/O thread, which itself holds at most 16 unwritten (a server that does not
    /// read cannot make them pile up; none accepted is dropped: those still waiting when
    /// the closing handshake begins go out before our Close).
    pub fn ping(&self, payload: impl Into<Vec<u8>>) -> Result<()> {
        let payload = payload.into();
        if payload.len() > 125 {
            return Err(Error::InvalidPingPayload(payload.len()));
        }
        let shared = &*self.shared;
        let _gate = shared.lock_outbox(); // no change of state meanwhile
        match shared.ready_state() {
            ReadyState::Open => {
                let mut waiting = shared.ping.lock().unwrap_or_else(PoisonError::into_inner);
                if waiting.len() >= protocol::PINGS {
                    return Err(Error::PingsWaiting(waiting.len()));
                }
                waiting.push_back(Bytes::from(payload));
                if waiting.len() == 1 {
                    shared.enqueue(Command::Ping);
                }
                Ok(())
            }
            other => Err(Error::InvalidState(other)),
        }
    }

    /// Closes the connection normally (code 1000, no reason). See
    /// [`close_with`](Self::close_with).
    ///
    /// It cannot fail, so it returns nothing (a `Result` that is never an error would only
    /// teach callers to ignore it): closing a connection that is closing or closed does
    /// nothing, and how the connection ended comes from `onclose` or
    /// [`wait_closed`](Self::wait_closed).
    pub fn close(&self) {
        self.request_close(Some((1000, String::new())));
    }

    /// Starts the closing handshake with `code` (1000 or 3000–4999) and `reason` (at most
    /// 123 UTF-8 bytes), as the browser's `close(code, reason)`. The codes 1001–2999 are
    /// the protocol's own, refused here as by the browser (Python's `websocket-client`
    /// lets you send them): 1001 (going away) goes out when the last handle is dropped.
    ///
    /// From OPEN the state becomes CLOSING; every message sent before this call goes out
    /// before the Close frame; `onclose` follows when the server's Close arrives (or the
    /// close timeout passes). In CONNECTING the handshake is aborted (`onerror` with
    /// [`Error::Aborted`], then `onclose` with 1006). When CLOSING or CLOSED this does
    /// nothing. It does not block; [`wait_closed`](Self::wait_closed) does.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCloseCode`] or [`Error::InvalidCloseReason`], synchronously; then
    /// nothing is sent.
    pub fn close_with(&self, code: u16, reason: &str) -> Result<()> {
        if code != 1000 && !(3000..=4999).contains(&code) {
            return Err(Error::InvalidCloseCode(code));
        }
        if reason.len() > 123 {
            return Err(Error::InvalidCloseReason(reason.len()));
        }
        self.request_close(Some((code, reason.to_owned())));
        Ok(())
    }

    pub(crate) fn request_close(&self, frame: Option<(u16, String)>) {
        let shared = &*self.shared;
        shared.close_requested.store(true, SeqCst);
        loop {
            if shared.transition(
                &[ReadyState::Connecting, ReadyState::Open],
                ReadyState::Closing,
            ) {
                shared.enqueue(Command::Close(frame));
                return;
            }
            match shared.ready_state() {
                ReadyState::Closed if shared.config.reconnect.is_some() => {
                    // Between two connections: this ends reconnecting.
                    shared.enqueue(Command::Close(None));
                    return;
                }
                // A closing handshake under way (the server's, or ours): this close adds
                // nothing to it, but still ends reconnecting.
                ReadyState::Closing if shared.config.reconnect.is_some() => {
                    shared.enqueue(Command::Close(None));
                    return;
                }
                // The next attempt began between the two looks (CLOSED, then CONNECTING):
                // close that one.
                ReadyState::Connecting | ReadyState::Open => {}
                ReadyState::Closing | ReadyState::Closed => return, // a no-op
            }
        }
    }

    /// The connection's state, as the browser's `readyState`.
    ///
    /// Inside a callback for this connection it is the state the event belongs to, as in
    /// a browser, where `readyState` changes in the task that fires the event: OPEN in
    /// `onopen`, `onmessage`, `onping` and `onpong` (CLOSING once you called
    /// [`close`](Self::close)), CLOSED in `onerror` and `onclose`. The I/O thread may be
    /// further on by then: the connection ended while the events waited for you, or,
    /// with reconnect, the next connection is on its way. Anywhere else it is the
    /// current state.
    pub fn ready_state(&self) -> ReadyState {
        match crate::handler::dispatching(&self.shared) {
            None => self.shared.ready_state(),
            Some(Dispatching::Ended) => ReadyState::Closed,
            Some(Dispatching::Live) if self.shared.close_requested.load(SeqCst) => {
                ReadyState::Closing
            }
            Some(Dispatching::Live) => ReadyState::Open,
        }
    }

    /// Bytes of application data accepted by `send` and not yet handed to the operating
    /// system, as the browser's `bufferedAmount`. Like the browser's, it does not go back
    /// to zero when the connection fails with data unsent.
    pub fn buffered_amount(&self) -> usize {
        self.shared.buffered.load(SeqCst)
    }

    /// The URL, with `http`/`https` mapped to `ws`/`wss` and credentials removed.
    pub fn url(&self) -> &str {
        self.shared.target.url.as_str()
    }

    /// The subprotocol the server chose; empty before OPEN, or when none was offered.
    /// (When some were offered, the server must choose one of them, or the connection
    /// fails, as in browsers.) With [`reconnect`](crate::Builder::reconnect), the latest
    /// connection's; but inside a callback, that of the connection whose event it handles,
    /// however late it runs (the next connection may be open by then), as a browser's
    /// `WebSocket` keeps its own. (Not once the raw receiver of [`Events`] or
    /// [`EventBatches`] was used, whose takes go unseen; with batches you take yourself,
    /// the last `Open` taken decides, while
    /// [`dispatch_batches`](Self::dispatch_batches) goes event by event.)
    pub fn protocol(&self) -> String {
        self.opened()
            .map_or_else(String::new, |o| o.protocol.clone())
    }

    /// The handshake this caller sees (see [`protocol`](Self::protocol)).
    pub(crate) fn opened(&self) -> Option<Arc<Opened>> {
        let in_callback = crate::handler::dispatching(&self.shared).is_some();
        self.shared.opened(in_callback)
    }

    /// The extensions the server chose (its `Sec-WebSocket-Extensions`), such as
    /// `permessage-deflate; client_max_window_bits=15`; empty before OPEN, when the server
    /// declined, or when none were offered (see [`Builder::deflate`](crate::Builder::deflate)).
    /// With reconnect, as [`protocol`](Self::protocol).
    pub fn extensions(&self) -> String {
        self.opened()
            .map_or_else(String::new, |o| o.extensions.clone())
    }

    /// Blocks until the connection is CLOSED and returns how it ended. In callback style
    /// it returns after `onclose` has run; in pull style and with batches, once every
    /// event of the connection, its `Close` last, waits in the channel (so
    /// `dispatch_pending` or `try_recv` right after finds them all). With
    /// [`reconnect`](crate::Builder::reconnect) on, that is once reconnecting has ended (a
    /// `close`, a clean server close when the policy stops on one, the attempts running
    /// out, or your [`Events`] or [`EventBatches`] dropped): the last connection's end.
    ///
    /// # Errors
    ///
    /// [`Error::WouldDeadlock`], at once, when called on the callback thread (inside a
    /// callback: `onclose` cannot run until it returns) or while this thread holds the
    /// [`HandlerGuard`] (the callback thread needs the handler to run `onclose`).
    pub fn wait_closed(&self) -> Result<CloseEvent> {
        if let Some(holder) = self.shared.close_wait_deadlock() {
            return Err(Error::WouldDeadlock(match holder {
                Holder::CallbackThread => "wait_closed on the callback thread",
                Holder::ThisThread => "wait_closed while this thread holds the handler",
            }));
        }
        Ok(self
            .shared
            .wait_status(None, |s| s.closed.clone())
            .unwrap_or_else(CloseEvent::abnormal)) // without a deadline it always has one
    }

    /// As [`wait_closed`](Self::wait_closed), giving up after `timeout` with `None`. Where
    /// `wait_closed` returns [`Error::WouldDeadlock`], it gives up at once, whatever the
    /// timeout (and logs a warning), unless the connection is closed already.
    pub fn wait_closed_timeout(&self, timeout: Duration) -> Option<CloseEvent> {
        let deadline = match self.shared.close_wait_deadlock() {
            Some(holder) => {
                log::warn!("wait_closed_timeout {holder} would never return: gave up at once");
                Some(Instant::now())
            }
            None => after(Instant::now(), Some(timeout)),
        };
        self.shared.wait_status(deadline, |s| s.closed.clone())
    }

    /// Blocks until OPEN, returning the error if the connection failed first.
    pub(crate) fn wait_open(&self) -> Result<()> {
        let config = &self.shared.config;
        // The I/O thread bounds connecting and the handshake itself, again for each
        // redirect; this outer bound only covers a resolver that ignores the connect
        // timeout.
        let attempts = u32::try_from(config.max_redirects.saturating_add(1)).unwrap_or(u32::MAX);
        let bound = config
            .connect_timeout
            .checked_add(config.handshake_timeout)
            .and_then(|d| d.checked_mul(attempts))
            .and_then(|d| d.checked_add(Duration::from_secs(1)));
        let deadline = bound.and_then(|d| after(Instant::now(), Some(d)));
        match self.shared.wait_status(deadline, |s| s.open.clone()) {
            Some(result) => result,
            None => {
                self.request_close(None);
                Err(Error::Timeout(Timeout::Connect))
            }
        }
    }

    /// Runs `handler`'s method for one event, on this thread. A panic inside is caught
    /// and reported to `onerror`, as on the callback thread.
    pub fn dispatch<H: Handler + ?Sized>(&self, handler: &mut H, event: Event) {
        dispatch(self, handler, event);
    }

    /// Pull style: runs `handler` for every event already waiting in `events`, on this
    /// thread, and returns how many there were. It never blocks, so a CPU-bound loop can
    /// call it between chunks of work. The handler need not be `Send`. Events that come
    /// while it runs wait for the next call: under a flood that never stops it still
    /// returns.
    pub fn dispatch_pending<H: Handler + ?Sized>(&self, events: &Events, handler: &mut H) -> usize {
        self.dispatch_some(events, handler, usize::MAX, None)
    }

    /// As [`dispatch_pending`](Self::dispatch_pending), for at most `max` events: a
    /// compute loop's pause stays bounded however many events wait.
    pub fn dispatch_pending_at_most<H: Handler + ?Sized>(
        &self,
        events: &Events,
        handler: &mut H,
        max: usize,
    ) -> usize {
        self.dispatch_some(events, handler, max, None)
    }

    /// As [`dispatch_pending`](Self::dispatch_pending), for about `budget` of time: it
    /// stops taking events once `budget` has passed (checked after each, so at least one
    /// waiting event is handled, and a slow callback can overrun it).
    pub fn dispatch_pending_for<H: Handler + ?Sized>(
        &self,
        events: &Events,
        handler: &mut H,
        budget: Duration,
    ) -> usize {
        let deadline = crate::protocol::saturating_deadline(Instant::now(), budget);
        self.dispatch_some(events, handler, usize::MAX, Some(deadline))
    }

    /// Runs `handler` for at most `max` of the events waiting now, until `deadline`.
    fn dispatch_some<H: Handler + ?Sized>(
        &self,
        events: &Events,
        handler: &mut H,
        max: usize,
        deadline: Option<Instant>,
    ) -> usize {
        let max = max.min(events.len());
        let mut n = 0;
        while n < max {
            let Ok(event) = events.try_recv() else {
                break;
            };
            dispatch(self, handler, event);
            n += 1;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        n
    }

    /// [`dispatch_pending`](Self::dispatch_pending) for [`EventBatches`]: runs `handler`
    /// for every event of the batches already waiting, on this thread, recycles the
    /// batches, and returns how many events there were. It never blocks; batches that
    /// come while it runs wait for the next call (but one). Once the connection has
    /// ended, that includes its last events, set aside when a batch still waited.
    pub fn dispatch_batches<H: Handler + ?Sized>(
        &self,
        batches: &EventBatches,
        handler: &mut H,
    ) -> usize {
        let mut n = 0;
        // One more `try_recv` than the channel holds: after the end it finds the events
        // set aside (see `EventBatches::receiver`); before, it finds nothing or a batch
        // that just came.
        for _ in 0..=batches.0.rx.len() {
            // Each `Open` noted as it is handled, not all of a batch's at once: a batch
            // may hold the end of one connection and the start of the next.
            let Ok(mut batch) = batches.try_recv_untracked() else {
                break;
            };
            n += batch.len();
            for event in batch.drain(..) {
                if matches!(event, Event::Open) {
                    self.shared.open_taken();
                }
                dispatch(self, handler, event);
            }
            batches.recycle(batch);
        }
        n
    }
}

/// How long `send` may wait for room under the high-water mark.
#[derive(Clone, Copy)]
enum Wait {
    Never,
    /// The builder's `send_timeout` (not at all on the callback thread, nor while this
    /// thread holds the handler), counted from when the wait starts.
    Configured,
    Forever,
    Until(Instant),
}

enum Waited {
    Closed,
    TimedOut,
}

impl fmt::Debug for WebSocketRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketRef")
            .field("url", &self.url())
            .field("ready_state", &self.ready_state())
            .field("buffered_amount", &self.buffered_amount())
            .finish()
    }
}

impl WebSocket {
    /// A [`Builder`] for every setting.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Pull style: connects, blocks until OPEN or failure, and returns the handle with the
    /// channel of [`Event`]s. Defaults as in [`Builder`]. Keep the [`Events`]: dropping it
    /// (`let (ws, _) = …` drops it at once) closes the connection with 1001, since nobody
    /// would take what the server sends.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::connect`].
    pub fn connect_pull(url: &str) -> Result<(WebSocket, Events)> {
        Builder::new().connect_pull(url)
    }

    /// Pull style, browser-like: returns at once in CONNECTING with the event channel.
    ///
    /// # Errors
    ///
    /// Synchronous ones only: a bad URL, or a thread that cannot be spawned.
    pub fn open_pull(url: &str) -> Result<(WebSocket, Events)> {
        Builder::new().open_pull(url)
    }

    pub(crate) fn start_pull(config: Config, url: &str) -> Result<(WebSocket, Events)> {
        let limit = config.incoming_queue.unwrap_or(PULL_QUEUE);
        let (tx, rx) = crossbeam_channel::unbounded();
        let room = Arc::new(Room::default());
        let bytes = config.incoming_queue_bytes;
        let (outlet, batches, lane) =
            crate::delivery::pull_lanes(tx, Arc::clone(&room), limit, bytes);
        let (ws, io) = start(config, url, outlet, false)?;
        let events = Events::new(rx, room, Arc::clone(&ws.shared), batches, lane);
        Ok((WebSocket::without_handler(ws, io), events))
    }

    pub(crate) fn start_batches(config: Config, url: &str) -> Result<(WebSocket, EventBatches)> {
        let limit = config.incoming_queue.unwrap_or(CALLBACK_QUEUE);
        let (outlet, mut batches) = crate::delivery::batches(limit, config.incoming_queue_bytes);
        let (ws, io) = start(config, url, outlet, false)?;
        batches.shared = Some(Arc::clone(&ws.shared));
        Ok((WebSocket::without_handler(ws, io), EventBatches(batches)))
    }

    fn without_handler(ws: WebSocketRef, io: Joinable) -> WebSocket {
        let owner = Owner {
            ws,
            handler: Arc::new(HandlerCell::new(())),
            threads: Mutex::new(Threads {
                io: Some(io),
                callback: None,
            }),
        };
        WebSocket {
            owner: Arc::new(owner),
        }
    }
}

impl<H: Handler + Send + 'static> WebSocket<H> {
    /// Connects with default settings and blocks until OPEN or failure; `handler`'s
    /// `onopen`/`onmessage`/`onerror`/`onclose` then run on the callback thread.
    ///
    /// # Errors
    ///
    /// A bad URL at once ([`Error::Url`]); otherwise what made the connection fail:
    /// [`Error::Dns`], [`Error::Connect`], [`Error::Tls`], [`Error::HandshakeRejected`],
    /// [`Error::Handshake`], [`Error::Proxy`] (a proxy from the environment),
    /// [`Error::TooManyRedirects`], [`Error::Timeout`]. The handler also gets `onerror`
    /// and `onclose` for it.
    pub fn connect(url: &str, handler: H) -> Result<Self> {
        Builder::new().connect(url, handler)
    }

    /// Browser-style: starts connecting and returns at once in CONNECTING.
    ///
    /// # Errors
    ///
    /// Synchronous ones only: a bad URL, or a thread that cannot be spawned.
    pub fn open(url: &str, handler: H) -> Result<Self> {
        Builder::new().open(url, handler)
    }

    pub(crate) fn start_with_handler(config: Config, url: &str, handler: H) -> Result<Self> {
        let (outlet, mut batches) = crate::delivery::batches(
            config.incoming_queue.unwrap_or(CALLBACK_QUEUE),
            config.incoming_queue_bytes,
        );
        let (ws, io) = start(config, url, outlet, true)?;
        batches.shared = Some(Arc::clone(&ws.shared));
        let handler = Arc::new(HandlerCell::new(handler));
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let cb_ws = ws.clone();
        let cb_handler = Arc::clone(&handler);
        let spawned = thread::Builder::new()
            .name("nwebsocket-cb".into())
            .spawn(move || {
                let _done = done_tx;
                callback_loop(&cb_ws, &cb_handler, &batches);
            });
        let owner = Owner {
            ws: ws.clone(),
            handler,
            threads: Mutex::new(Threads {
                io: Some(io),
                callback: None,
            }),
        };
        match spawned {
            Ok(handle) => {
                let _ = ws.shared.callback_thread.set(handle.thread().id());
                owner
                    .threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .callback = Some((handle, done_rx));
                Ok(WebSocket {
                    owner: Arc::new(owner),
                })
            }
            // Dropping `owner` stops and joins the I/O thread.
            Err(e) => Err(Error::io(e)),
        }
    }
}

impl<H> WebSocket<H> {
    /// Locks and returns the handler, so your thread can read (or change) the state the
    /// callbacks fill in, with no locking of your own. Callbacks wait while you hold it:
    /// keep it briefly. You wait at most for the callback that is running: the callback
    /// thread keeps the lock from one event to the next only while nobody asks for it.
    ///
    /// ```
    /// # use nwebsocket::{Handler, Message, WebSocket, WebSocketRef};
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let addr = server.local_addr()?;
    /// # std::thread::spawn(move || {
    /// #     let mut ws = tungstenite::accept(server.accept().unwrap().0).unwrap();
    /// #     ws.send("hello".into()).unwrap();
    /// #     while ws.read().is_ok() {}
    /// # });
    /// #[derive(Default)]
    /// struct Log { messages: Vec<String> }
    ///
    /// impl Handler for Log {
    ///     fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
    ///         self.messages.extend(msg.as_text().map(str::to_owned));
    ///     }
    /// }
    ///
    /// let ws = WebSocket::connect(&format!("ws://{addr}/"), Log::default())?;
    /// # let start = std::time::Instant::now();
    /// # while ws.handler().messages.is_empty() && start.elapsed().as_secs() < 10 {
    /// #     std::thread::yield_now();
    /// # }
    /// let first = ws.handler().messages.first().cloned();
    /// assert_eq!(first.as_deref(), Some("hello"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// On the callback thread (inside a callback, through a handle the handler keeps:
    /// the callback thread holds the handler while a callback runs), and on a thread that
    /// holds the guard already: either would wait for itself for ever. In a callback the
    /// panic is caught and reported to `onerror` (rule 8); [`try_handler`](Self::try_handler)
    /// returns [`Error::WouldDeadlock`] instead.
    pub fn handler(&self) -> HandlerGuard<'_, H> {
        match self.try_handler() {
            Ok(guard) => guard,
            Err(e) => panic!("{e}"),
        }
    }

    /// As [`handler`](Self::handler), with [`Error::WouldDeadlock`] where that would
    /// wait for itself (on the callback thread, or on a thread that holds the guard).
    pub fn try_handler(&self) -> Result<HandlerGuard<'_, H>> {
        match self.owner.ws.shared.held_here() {
            Some(Holder::CallbackThread) => {
                return Err(Error::WouldDeadlock(
                    "WebSocket::handler on the callback thread (which holds the handler)",
                ))
            }
            Some(Holder::ThisThread) => {
                return Err(Error::WouldDeadlock(
                    "WebSocket::handler on a thread that holds the handler already",
                ))
            }
            None => {}
        }
        let cell = &*self.owner.handler;
        cell.wanted.fetch_add(1, SeqCst);
        let guard = cell.lock();
        cell.wanted.fetch_sub(1, SeqCst);
        let holder = &self.owner.ws.shared.handler_holder;
        *holder.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread::current().id());
        Ok(HandlerGuard(guard, holder))
    }

    /// A non-owning handle to the same connection, to store in handlers or other threads.
    pub fn downgrade(&self) -> WebSocketRef {
        self.owner.ws.clone()
    }
}

/// The locked handler, from [`WebSocket::handler`]. Callbacks wait until it is dropped.
pub struct HandlerGuard<'a, H>(MutexGuard<'a, H>, &'a Mutex<Option<ThreadId>>);

impl<H> Drop for HandlerGuard<'_, H> {
    fn drop(&mut self) {
        *self.1.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The handler, shared by the callback thread and [`WebSocket::handler`].
///
/// The callback thread keeps the lock across a batch of events instead of taking it per
/// event (a lock and an unlock per message were 4-5 % of stream_small's time on one
/// core), and lets go between two events as soon as another thread asks for it.
struct HandlerCell<H> {
    state: Mutex<H>,
    /// Threads in [`WebSocket::handler`] waiting for the lock.
    wanted: AtomicUsize,
}

impl<H> HandlerCell<H> {
    fn new(handler: H) -> Self {
        HandlerCell {
            state: Mutex::new(handler),
            wanted: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, H> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_wanted(&self) -> bool {
        self.wanted.load(SeqCst) > 0
    }
}

impl<H> Deref for HandlerGuard<'_, H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.0
    }
}

impl<H> DerefMut for HandlerGuard<'_, H> {
    fn deref_mut(&mut self) -> &mut H {
        &mut self.0
    }
}

impl<H> fmt::Debug for HandlerGuard<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerGuard { .. }")
    }
}

impl<H> Deref for WebSocket<H> {
    type Target = WebSocketRef;
    fn deref(&self) -> &WebSocketRef {
        &self.owner.ws
    }
}

impl<H> Clone for WebSocket<H> {
    fn clone(&self) -> Self {
        WebSocket {
            owner: Arc::clone(&self.owner),
        }
    }
}

impl<H> fmt::Debug for WebSocket<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("url", &self.url())
            .field("ready_state", &self.ready_state())
            .field("buffered_amount", &self.buffered_amount())
            .finish()
    }
}

impl<H> Drop for Owner<H> {
    fn drop(&mut self) {
        let shared = &self.ws.shared;
        let now = Instant::now();
        let _ = shared
            .callbacks_until
            .set(crate::protocol::saturating_deadline(
                now,
                shared.config.close_timeout,
            ));
        shared.enqueue(Command::Drop);
        let threads = std::mem::take(
            self.threads
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if shared.callback_thread.get() == Some(&thread::current().id()) {
            // Dropped from inside a callback: joining would wait for ourselves. Both
            // threads end on their own, bounded by the close timeout.
            log::debug!("last handle dropped on the callback thread; threads detached");
            return;
        }
        let config = &shared.config;
        let bound = config.close_timeout.checked_add(Duration::from_secs(1));
        let deadline =
            crate::protocol::saturating_deadline(Instant::now(), bound.unwrap_or(Duration::MAX));
        for (name, joined) in [("I/O", threads.io), ("callback", threads.callback)] {
            let Some((handle, done)) = joined else {
                continue;
            };
            // `done` disconnects when the thread's closure returns.
            match done.recv_deadline(deadline) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    log::warn!("the {name} thread did not stop within the close timeout; detached");
                }
                _ => {
                    let _ = handle.join();
                }
            }
        }
    }
}

/// How many times the callback thread yields, after letting go of the handler for another
/// thread, before it takes the lock again regardless (a few tens of microseconds).
const HANDOVER_YIELDS: usize = 50;

/// How a send is refused in `state`, if it is.
fn refused(state: ReadyState) -> Option<fn(Message) -> SendError> {
    match state {
        ReadyState::Open => None,
        ReadyState::Connecting => Some(SendError::NotOpen),
        ReadyState::Closing | ReadyState::Closed => Some(SendError::Closed),
    }
}

/// The callback thread: runs the handler for each event until the I/O thread has ended
/// (after the last connection's `Close`; with reconnect there is one per connection), then
/// publishes CLOSED, so that `wait_closed` returns with the handler's state final.
fn callback_loop<H: Handler>(ws: &WebSocketRef, handler: &HandlerCell<H>, batches: &Batches) {
    let mut last = None;
    let mut skipped = 0;
    while let Some(mut batch) = batches.next() {
        let mut held = None;
        for event in batch.drain(..) {
            match &event {
                Event::Open => ws.shared.open_taken(),
                Event::Close(c) => last = Some(c.clone()),
                _ => {}
            }
            if !matches!(event, Event::Error(_) | Event::Close(_)) && past_callbacks(ws) {
                skipped += 1;
                continue;
            }
            if held.is_some() && handler.is_wanted() {
                held = None;
                // Give the waiter (woken by the unlock) a chance to take it first.
                for _ in 0..HANDOVER_YIELDS {
                    if !handler.is_wanted() {
                        break;
                    }
                    thread::yield_now();
                }
            }
            let h = held.get_or_insert_with(|| handler.lock());
            dispatch(ws, &mut **h, event);
        }
        drop(held); // never held while waiting for events
        batches.recycle(batch);
    }
    if skipped > 0 {
        log::warn!(
            "{}: {skipped} events were not handed to the handler: the last handle was \
             dropped, and the close timeout passed",
            ws.url()
        );
    }
    ws.shared
        .set_closed(last.unwrap_or_else(CloseEvent::abnormal));
}

/// Whether the last handle was dropped a close timeout ago: the handler gets only the
/// end from now on (see `Shared::callbacks_until`).
fn past_callbacks(ws: &WebSocketRef) -> bool {
    ws.shared
        .callbacks_until
        .get()
        .is_some_and(|until| Instant::now() >= *until)
}

/// A spawned thread and the channel that disconnects when it has finished.
type Joinable = (JoinHandle<()>, Receiver<()>);

/// Checks the URL, builds the shared state and spawns the I/O thread, which hands its
/// events to `outlet`.
fn start(
    config: Config,
    url: &str,
    outlet: Outlet,
    callback_mode: bool,
) -> Result<(WebSocketRef, Joinable)> {
    let target = crate::url::parse(url)?;
    // Built again for each attempt by the I/O thread; built here to refuse bad headers now.
    crate::io::build_request(&target, &config, true)?;
    let poll = mio::Poll::new().map_err(Error::io)?;
    let waker = mio::Waker::new(poll.registry(), crate::io::WAKER).map_err(Error::io)?;
    let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        target,
        config,
        state: Padded(AtomicU8::new(ReadyState::Connecting as u8)),
        commands: commands_tx,
        waker,
        io_sleeping: AtomicBool::new(false),
        io_looking: AtomicBool::new(false),
        buffered: Padded(AtomicUsize::new(0)),
        drain_waiters: AtomicUsize::new(0),
        drained: (Mutex::new(()), Condvar::new()),
        opens: Mutex::new(Opens::default()),
        opens_untaken: AtomicUsize::new(0),
        status: Mutex::new(Status::default()),
        status_changed: Condvar::new(),
        outbox: Padded(Mutex::new(Outbox::default())),
        deflate: protocol::SendDeflate::default(),
        ping: Mutex::new(VecDeque::new()),
        requests: Mutex::new(HashMap::new()),
        pending_requests: AtomicUsize::new(0),
        next_request_id: AtomicU64::new(1),
        callback_mode,
        callback_thread: OnceLock::new(),
        callbacks_until: OnceLock::new(),
        handler_holder: Mutex::new(None),
        close_requested: AtomicBool::new(false),
    });
    // Boxed: on the I/O thread's stack, under the handshake's deep frames, its 1.2 KiB
    // would keep one more stack page resident for the connection's life.
    let io = Box::new(IoThread::new(
        Arc::clone(&shared),
        poll,
        commands_rx,
        outlet,
    ));
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let handle = thread::Builder::new()
        .name("nwebsocket-io".into())
        .spawn(move || {
            let _done = done_tx;
            io.run();
        })
        .map_err(Error::io)?;
    Ok((WebSocketRef { shared }, (handle, done_rx)))
}
