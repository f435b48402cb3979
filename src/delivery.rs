//! How events get from the I/O thread to whoever consumes them.
//!
//! The I/O thread gathers the events of a read burst in its `pending` queue, then hands
//! them over through an [`Outlet`]:
//! - **pull style**: the caller's [`Events`], in whole bursts as below into a buffer of
//!   its own, until the caller uses the crossbeam `Receiver<Event>` inside it (to
//!   `select!` on it): from then on one channel slot per event, and its takes wake the
//!   I/O thread when it waits for room (see [`Lane`] and [`Room`]);
//! - **callback style**, and **pull style in batches** ([`EventBatches`]): the receiver is
//!   the crate's own callback thread or a caller who asked for batches, so a whole burst
//!   goes over as one `Vec<Event>`. One channel operation (and at most one wake-up) per
//!   burst instead of per message; the emptied vectors come back for reuse, and nothing is
//!   allocated for the queue until events flow.
//!
//! Both are bounded, in events and in payload bytes: when the outlet is full the I/O
//! thread stops reading the socket.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{
    fence, AtomicBool, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvError, RecvTimeoutError, Select, Sender, TryRecvError, TrySendError,
};

use crate::io::Command;
use crate::message::Event;
use crate::websocket::Shared;

/// Events per read burst in pull style: the I/O thread reads no more while this many are
/// pending, and hands them over together.
///
/// Handing over whole bursts keeps a consumer on the other core a burst behind: the
/// messages it drops then belong to an older read buffer than the one the I/O thread is
/// splitting, and the two threads stop taking turns on one reference count (unpinned
/// stream_small: 64 → 256 measured 8.6–8.9 → 9.7–10.0 M messages/s).
pub(crate) const BURST: usize = 256;

/// Payload bytes per batch in callback style: a batch of large messages closes early, so
/// that memory stays near three batches of this size whatever the message size. In pull
/// style, the payload bytes that may wait in the caller's channel and in one read burst.
///
/// Two messages of 1 MiB fit: with room for only one, pull style's I/O thread found the
/// channel full (and napped) whenever the consumer was a moment late, and stream_large
/// unpinned measured 0.84x of raw tungstenite against 0.99x with 2 MiB (paired runs;
/// see `benches/compare/README.md`). More gains nothing: 4 MiB measured 0.95x (and,
/// before large buffers were reused, 0.55x: the buffers in flight left the cache).
pub(crate) const BATCH_BYTES: usize = 2 << 20; // the default of `incoming_queue_bytes`

pub(crate) enum Outlet {
    /// Pull style: the caller's channel.
    Events(Pull),
    /// Callback style and pull style in batches: at most one batch waits in `tx` while
    /// the consumer works through another; `spare` brings the emptied vectors back.
    Batches {
        tx: Sender<Vec<Event>>,
        spare: Receiver<Vec<Event>>,
        /// Events per batch: the I/O thread reads no more once this many are pending
        /// (the configured incoming queue).
        limit: usize,
        /// Payload bytes per batch.
        bytes_limit: usize,
        /// The connection's last events, when a batch still waits in `tx` at the end: the
        /// consumer finds them once `tx` has disconnected (see [`Batches::next`]), so the
        /// end never waits for the consumer.
        tail: Arc<Mutex<Vec<Event>>>,
        /// Set while a batch waits in `tx` and the I/O thread gathers the next one, reading
        /// the socket on: the consumer's next take wakes it (see
        /// [`wake_on_take`](Outlet::wake_on_take)).
        take_wanted: Arc<AtomicBool>,
        /// Set when the consumer's end ([`Batches`]) is dropped.
        gone: Arc<AtomicBool>,
        /// Set once [`EventBatches::receiver`] was used: takes through it wake nobody.
        raw: Arc<AtomicBool>,
        /// Pull style ([`Events`]), until the caller first uses the raw receiver: then
        /// this outlet turns into [`Outlet::Events`] (see [`Lane`]).
        lane: Option<LaneEnd>,
    },
}

/// Pull style's two ways over, shared by the I/O thread and the caller's [`Events`].
///
/// Until the caller uses the raw receiver, whole read bursts go over as in callback style
/// ([`Outlet::Batches`], over an unbounded channel, bounded by [`LaneEnd`]'s count of
/// what waits there), into a buffer in each `Events`, whose takes then cost no atomic
/// operation. The caller's first use of the raw receiver (`select!`) moves all that
/// waits (its buffer, what a dropped clone left, the bursts in the channel) into the
/// per-event channel under `state`'s lock, and marks the lane raw; the I/O thread sends
/// its batches under the same lock, so it sees the mark before it could send another, and
/// from then on sends one event per channel slot ([`Outlet::Events`]). So the raw
/// receiver sees every event not yet taken, in order.
///
/// Events a clone still held in its buffer when dropped wait in `front` for the next
/// taker (a clone blocked on the bursts is woken through `wake`), or, once the lane is
/// raw, go into the raw channel. A clone whose first use of the raw receiver comes after
/// the raw channel has ended gets one of its own for what it holds.
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    room: Arc<Room>,
    /// Set while `LaneState::front` holds events (checked without the lock).
    front_waiting: AtomicBool,
    /// Wakes an `Events` clone blocked on the bursts' channel when another leaves events
    /// in `front` (bounded to one: a wake-up not yet taken stands for any number).
    wake: Sender<()>,
    woken: Receiver<()>,
    /// Events in the batches that wait in the channel (for `Events::len`).
    in_channel: AtomicUsize,
    /// The per-event channel's bounds, once raw: `incoming_queue` and its bytes.
    limit: usize,
    bytes_limit: usize,
}

struct LaneState {
    /// The caller has used the raw receiver: one event per slot from now on.
    raw: bool,
    /// The per-event channel's sender: the I/O thread's once raw; `None` once that thread
    /// has ended raw, or a move after its end is done (the raw receiver then disconnects).
    tx: Option<Sender<Event>>,
    /// The I/O thread has ended.
    io_done: bool,
    /// Events that an `Events` clone had taken in a burst and not handed out when it was
    /// dropped: the next taker's, before anything in the channel. (Once the lane is raw,
    /// they go into the raw channel instead while it lasts.)
    front: VecDeque<Event>,
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The I/O thread's hold on the [`Lane`]: when that thread ends (dropping its outlet), the
/// lane learns it, and a raw lane's channel disconnects once the I/O thread's own sender
/// goes too.
pub(crate) struct LaneEnd {
    lane: Arc<Lane>,
    /// The batches in the channel, oldest first: (events, payload bytes) of each; the
    /// channel's length tells how many of the oldest the caller has taken.
    sent: VecDeque<(usize, usize)>,
    /// Their sums.
    events: usize,
    bytes: usize,
    /// Batches sent so far.
    batches: u64,
    /// Since the caller's last take (counted in batches): see [`Pull::busy_since`].
    unread: Option<Unread>,
}

impl LaneEnd {
    /// Events and payload bytes waiting in the channel.
    fn waiting(&mut self, tx: &Sender<Vec<Event>>) -> (usize, usize) {
        let left = tx.len();
        while self.sent.len() > left {
            let (events, bytes) = self.sent.pop_front().unwrap_or_default();
            self.events -= events;
            self.bytes -= bytes;
        }
        (self.events, self.bytes)
    }

    /// Whether the channel holds the bound (`incoming_queue` events or their bytes).
    fn full(&mut self, tx: &Sender<Vec<Event>>) -> bool {
        let (events, bytes) = self.waiting(tx);
        events >= self.lane.limit || bytes >= self.lane.bytes_limit
    }

    /// Notes a batch sent: a delivery, as [`Pull::push`] counts them.
    fn delivered(&mut self, tx: &Sender<Vec<Event>>) {
        let taken = self.batches - (tx.len() as u64).min(self.batches);
        self.batches += 1;
        match &mut self.unread {
            Some(unread) if unread.taken == taken => unread.again = true,
            _ => {
                self.unread = Some(Unread {
                    taken,
                    since: Instant::now(),
                    again: false,
                })
            }
        }
    }

    /// As [`Pull::busy_since`]: since when the caller has taken nothing while batches
    /// keep coming for it.
    fn busy_since(&self, tx: &Sender<Vec<Event>>) -> Option<Instant> {
        let unread = self.unread?;
        let taken = self.batches - (tx.len() as u64).min(self.batches);
        (unread.again && !tx.is_empty() && taken == unread.taken).then_some(unread.since)
    }

    /// Whether more than half of the bound waits.
    fn crowded(&mut self, tx: &Sender<Vec<Event>>) -> bool {
        let (events, bytes) = self.waiting(tx);
        events * 2 > self.lane.limit || bytes * 2 > self.lane.bytes_limit
    }
}

impl Drop for LaneEnd {
    fn drop(&mut self) {
        let mut state = self.lane.lock();
        state.io_done = true;
        if state.raw {
            state.tx = None;
        }
    }
}

/// Pull style's outlet: the caller's channel, and what waits in it.
///
/// The channel is crossbeam's unbounded one, and the bound is the I/O thread's own: it puts
/// no more in while `limit` events, or [`BATCH_BYTES`] of payload, wait there. A bounded
/// channel allocates all its slots up front, so its capacity is paid for by every idle
/// connection; this one allocates blocks of slots while events wait and frees them as
/// they are taken. So the limit can be thousands of events, and on a shared core the I/O
/// thread and the consumer trade the core once per thousands of messages rather than once
/// per hundred (a consumer that finds the channel empty spins for microseconds in
/// crossbeam's `recv` first).
///
/// The price: a crossbeam channel wakes nobody when the caller takes a message. The I/O
/// thread can tell how many are left (`len`), so it knows which of the messages it sent
/// are gone; while the channel is full it asks the caller's [`Events`] to wake it once
/// half of them are (see [`Room`]). Events taken through the raw receiver (`select!`)
/// wake nobody: once the caller has used it, the I/O thread also looks again after a nap
/// (see [`Level`]). And when the caller drops the receiver, crossbeam discards what waits
/// in the channel (since 0.5.15, to free it eagerly): the channel looks empty, and the
/// next send finds the receiver gone.
pub(crate) struct Pull {
    tx: Sender<Event>,
    /// Where the I/O thread asks the consumer's [`Events`] to wake it.
    room: Arc<Room>,
    /// Events that may wait in the channel.
    limit: usize,
    /// Payload bytes that may wait there ([`Builder::incoming_queue_bytes`]).
    ///
    /// [`Builder::incoming_queue_bytes`]: crate::Builder::incoming_queue_bytes
    bytes_limit: usize,
    /// Events sent so far, and their payload bytes.
    sent: u64,
    sent_bytes: u64,
    /// (events sent, bytes sent) at least every [`MARK_EVERY`] bytes, oldest first: the
    /// points not yet known to be taken.
    marks: VecDeque<(u64, u64)>,
    /// The bytes sent up to the last point known to be taken.
    taken_bytes: u64,
    /// Since the caller's last take: see [`Unread`] and [`Pull::busy_since`].
    unread: Option<Unread>,
    /// Pull style's lane, once switched to this outlet (see [`Lane`]): held to the end.
    _lane: Option<LaneEnd>,
}

/// The deliveries to a pull-style caller since its last take.
#[derive(Clone, Copy)]
struct Unread {
    /// The events it had taken then.
    taken: u64,
    /// The first delivery since.
    since: Instant,
    /// Whether there was another after it since the I/O thread last stopped watching the
    /// socket for the caller ([`Pull::moderating`]).
    again: bool,
}

/// Pull style's wake-up, shared by the I/O thread and the caller's [`Events`]: finding the
/// channel full, the I/O thread stores how few events must be left for it to be worth
/// waking (half of what waits), then sleeps on its command channel; each take through
/// [`Events`] compares, and the take that gets there sends `Command::Room`, once.
///
/// No wake-up can be lost: the I/O thread stores `below` and then reads the channel's
/// length; a take moves the channel's head and then reads `below`; all four are
/// sequentially consistent (crossbeam's head moves and `len` loads are `SeqCst`), so
/// either the take sees `below` or the I/O thread sees the take.
///
/// On a cache line of its own: the caller reads it after every take, and nothing else
/// nearby should make that read miss.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct Room {
    /// Wake the I/O thread once this many events or fewer wait; `usize::MAX` while it
    /// does not wait.
    below: AtomicUsize,
    /// The caller used the raw receiver, whose takes wake nobody.
    raw: AtomicBool,
    /// The caller's `Events` (clones count): the last one's drop tells the I/O thread.
    receivers: AtomicUsize,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            below: AtomicUsize::new(usize::MAX),
            raw: AtomicBool::new(false),
            receivers: AtomicUsize::new(1), // the one `Events` made with it
        }
    }
}

/// How often [`Pull`] marks the bytes it sent: the payload bytes counted as waiting are
/// exact when the channel is empty, and at most this much (plus one message) too many
/// otherwise.
const MARK_EVERY: u64 = 64 << 10;

/// How full pull style's channel is, for the I/O thread's naps while it is held: a
/// consumer that had nearly caught up is looked at again sooner, one that took little
/// later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Less than a quarter of the limit waits, in events and in bytes.
    Low,
    Middle,
    /// More than half of the limit waits, in events or in bytes.
    High,
}

impl Pull {
    pub fn new(tx: Sender<Event>, room: Arc<Room>, limit: usize, bytes_limit: usize) -> Self {
        Pull {
            tx,
            room,
            limit: limit.max(1),
            bytes_limit: bytes_limit.max(1),
            sent: 0,
            sent_bytes: 0,
            marks: VecDeque::new(),
            taken_bytes: 0,
            unread: None,
            _lane: None,
        }
    }

    /// The outlet after the caller's first use of the raw receiver, which put what waited
    /// into `tx` (counted as sent, their bytes not).
    fn switched(tx: Sender<Event>, lane: LaneEnd) -> Self {
        let mut pull = Pull::new(
            tx,
            Arc::clone(&lane.lane.room),
            lane.lane.limit,
            lane.lane.bytes_limit,
        );
        pull.sent = pull.tx.len() as u64;
        pull._lane = Some(lane);
        pull
    }

    /// Events the caller has taken so far. (Saturating: an `Events` clone that uses the
    /// raw receiver after the switch puts its buffer in too, uncounted.)
    fn taken(&self) -> u64 {
        self.sent.saturating_sub(self.tx.len() as u64)
    }

    /// Since when the caller has taken nothing while events wait for it (the first
    /// delivery it has not touched), if so. A caller that computes and takes events
    /// between chunks sees a message no sooner for the I/O thread waking for each one as
    /// it arrives (see `Io::moderation`). `None` once the raw receiver was used: its takes
    /// wake nobody.
    ///
    /// Only once this thread has delivered again since that first delivery: events keep
    /// coming for a caller that does not look. One event left unread while nothing else
    /// comes (the `Open` of a program that only sends) is no reason: this thread then wakes
    /// for the caller's sends, not for messages, and moderating would only add work to
    /// each of those wake-ups. And once a wait without the socket brought nothing, not
    /// again until something comes: else a caller that computes for an hour with two
    /// events unread would have this thread wake every millisecond of it.
    pub fn busy_since(&self) -> Option<Instant> {
        let unread = self.unread?;
        (unread.again && !self.tx.is_empty() && self.taken() == unread.taken && !self.raw())
            .then_some(unread.since)
    }

    /// The I/O thread stops watching the socket for a busy caller: the next wait without
    /// it needs a delivery first (see [`Pull::busy_since`]).
    pub fn moderating(&mut self) {
        if let Some(unread) = &mut self.unread {
            unread.again = false;
        }
    }

    /// Asks [`Events`] to wake this thread at the caller's next take; `false` if it took
    /// one meanwhile.
    pub fn wake_on_take(&mut self) -> bool {
        let below = self.tx.len().saturating_sub(1);
        self.room.below.store(below, SeqCst);
        if self.tx.len() <= below {
            self.room.below.store(usize::MAX, Relaxed);
            return false;
        }
        true
    }

    /// The events and payload bytes waiting in the channel.
    fn waiting(&mut self) -> (usize, usize) {
        let events = self.tx.len();
        if events == 0 {
            self.marks.clear();
            self.taken_bytes = self.sent_bytes;
            return (0, 0);
        }
        let taken = self.sent.saturating_sub(events as u64);
        while let Some(&(sent, bytes)) = self.marks.front() {
            if sent > taken {
                break;
            }
            self.taken_bytes = bytes;
            self.marks.pop_front();
        }
        (
            events,
            self.sent_bytes.saturating_sub(self.taken_bytes) as usize,
        )
    }

    /// Asks [`Events`] to wake this thread once the caller has taken half of what waits;
    /// `false` if it already has (then there is no waiting to do).
    pub fn wake_on_room(&mut self) -> bool {
        let (events, _) = self.waiting();
        let below = events / 2;
        self.room.below.store(below, SeqCst);
        if self.tx.len() <= below {
            self.room.below.store(usize::MAX, Relaxed);
            return false;
        }
        true
    }

    /// The wait for room is over (woken, or for another reason).
    pub fn stop_waiting(&self) {
        self.room.below.store(usize::MAX, Relaxed);
    }

    /// Whether the caller took events through the raw receiver, which wakes nobody. (Read
    /// after [`wake_on_room`](Self::wake_on_room): see `Events::first_raw_use`.)
    pub fn raw(&self) -> bool {
        self.room.raw.load(SeqCst)
    }

    /// Whether the channel is full, in events or in bytes.
    pub fn held(&mut self) -> bool {
        let (events, bytes) = self.waiting();
        events >= self.limit || bytes >= self.bytes_limit
    }

    pub fn level(&mut self) -> Level {
        let (events, bytes) = self.waiting();
        // (Multiplied, not divided: with a limit of 1 to 3, `limit / 4` would be 0 and
        // the channel never `Low`, so the naps could only grow.)
        if events * 2 > self.limit || bytes * 2 > self.bytes_limit {
            Level::High
        } else if events * 4 < self.limit && bytes * 4 < self.bytes_limit {
            Level::Low
        } else {
            Level::Middle
        }
    }

    /// Moves events from the front of `pending` into the channel, in order: as many as
    /// fit if `bounded`, else all. Returns their payload bytes; `Err` carries the events
    /// dropped because the receiver is gone.
    #[inline(never)] // one copy of the loop (see below)
    fn push(&mut self, pending: &mut VecDeque<Event>, bounded: bool) -> Result<usize, Vec<Event>> {
        let sent_before = self.sent;
        let sent_bytes_before = self.sent_bytes;
        let (mut room, mut bytes, bytes_limit) = if bounded {
            let (events, bytes) = self.waiting();
            (self.limit.saturating_sub(events), bytes, self.bytes_limit)
        } else {
            (usize::MAX, 0, usize::MAX)
        };
        while room > 0 && bytes < bytes_limit {
            let Some(event) = pending.pop_front() else {
                break;
            };
            let len = payload_len(&event);
            // Unbounded: a send fails only when the receiver is gone. (The only call of
            // `try_send`: the compiler inlines it, and moves each event once, straight
            // into its slot; measured 5 % faster in a flood than with two call sites.)
            match self.tx.try_send(event) {
                Ok(()) => self.sent_one(len),
                Err(e) => return Err(missed(e.into_inner(), pending)),
            }
            bytes += len;
            room -= 1;
        }
        if self.sent > sent_before {
            // A delivery: the caller's takes since the first one it has not touched (the
            // count taken does not change with what this thread sends). Nothing that fit
            // is no delivery: a full channel is not a caller falling behind again.
            let taken = self.taken();
            match &mut self.unread {
                Some(unread) if unread.taken == taken => unread.again = true,
                _ => {
                    self.unread = Some(Unread {
                        taken,
                        since: Instant::now(),
                        again: false,
                    })
                }
            }
        }
        Ok((self.sent_bytes - sent_bytes_before) as usize)
    }

    /// Counts an event of `len` payload bytes just sent.
    fn sent_one(&mut self, len: usize) {
        self.sent += 1;
        self.sent_bytes += len as u64;
        let marked = self.marks.back().map_or(self.taken_bytes, |m| m.1);
        if self.sent_bytes - marked >= MARK_EVERY {
            self.mark();
        }
    }

    #[cold]
    fn mark(&mut self) {
        self.marks.push_back((self.sent, self.sent_bytes));
    }
}

fn payload_len(event: &Event) -> usize {
    match event {
        Event::Message(m) => m.len(),
        _ => 0,
    }
}

/// `event` and the rest of `pending` after it, in order: what a gone consumer missed.
fn missed(event: Event, pending: &mut VecDeque<Event>) -> Vec<Event> {
    let mut gone = vec![event];
    gone.extend(pending.drain(..));
    gone
}

/// Pull style's events, from [`connect_pull`](crate::Builder::connect_pull): the
/// connection's [`Event`]s, in order, with a crossbeam [`Receiver<Event>`] inside for
/// `select!`.
///
/// `Open`, the messages, `Ping`/`Pong` if asked for, then `Error` on failure and `Close`,
/// last; after `Close` (the last connection's, with reconnect on) the channel disconnects.
/// Take them with [`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout),
/// [`try_recv`](Self::try_recv), the iterators, or
/// [`dispatch_pending`](crate::WebSocketRef::dispatch_pending), which runs your
/// [`Handler`](crate::Handler) on your thread.
///
/// The I/O thread hands events over a whole read burst at a time (up to 512), which
/// `Events` keeps in a buffer of its own and hands out one by one: a take costs no atomic
/// operation, so a flood of small messages costs about what raw tungstenite's own loop
/// does. That is why `Events` is `Send` but not `Sync`: to take events on several threads,
/// give each a [`clone`](Clone::clone) (each event goes to one of them; a clone dropped
/// with events in its buffer leaves them to the next one that takes, at once even if it
/// is blocked in `recv`, and once the raw receiver was used, to the raw receiver).
///
/// At most [`incoming_queue`](crate::Builder::incoming_queue) events (4,096 by default) or
/// [`incoming_queue_bytes`](crate::Builder::incoming_queue_bytes) of payload wait in the
/// channel, besides the burst you are taking; while that much does, the I/O thread stops
/// reading the socket (TCP slows the server down) and sleeps until you take the next
/// burst: a program that computes for seconds between takes costs that thread nothing
/// meanwhile. A caller that has taken nothing for 300 µs while events keep coming is
/// taken to be busy elsewhere: the I/O thread then reads the socket at your next take or
/// after 1 ms, whichever comes first, all that came in one go, instead of waking for each
/// message (a ping's pong waits at most that millisecond more).
///
/// It dereferences to the raw [`Receiver`], so `select!` takes it beside your own
/// channels. The first use of the raw receiver (through `Deref` or
/// [`receiver`](Self::receiver)) moves what waits for this `Events` into it, in order,
/// and from then on the I/O thread puts each event in a slot of its own (35–40 ns an
/// event more). Events taken that way, past the crate's methods, wake nobody: once you
/// have used the raw receiver, a full queue is also looked at again after a nap (0.1 to
/// 5 ms).
///
/// ```
/// # let addr = nwebsocket_doc_server();
/// use std::time::Duration;
/// use nwebsocket::crossbeam_channel::{select, unbounded};
/// use nwebsocket::{Event, WebSocket};
///
/// let (ws, events) = WebSocket::connect_pull(&format!("ws://{addr}/"))?;
/// assert!(matches!(events.recv_timeout(Duration::from_secs(5)), Ok(Event::Open)));
/// ws.send("hello")?;
/// let (_stop_tx, stop) = unbounded::<()>();
/// select! {
///     recv(events) -> event => match event {
///         Ok(Event::Message(m)) => assert_eq!(m.as_text(), Some("hello")),
///         other => panic!("{other:?}"),
///     },
///     recv(stop) -> _ => unreachable!(),
/// }
/// # fn nwebsocket_doc_server() -> std::net::SocketAddr {
/// #     let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// #     let a = l.local_addr().unwrap();
/// #     std::thread::spawn(move || {
/// #         let mut ws = tungstenite::accept(l.accept().unwrap().0).unwrap();
/// #         while let Ok(m) = ws.read() { if m.is_text() || m.is_binary() { let _ = ws.send(m); } }
/// #     });
/// #     a
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Events {
    /// The per-event channel: the raw receiver, fed once a caller has used it.
    rx: Receiver<Event>,
    room: Arc<Room>,
    shared: Arc<Shared>,
    /// The bursts' end, shared by the clones.
    end: Arc<PullEnd>,
    /// Events of a burst this clone took and has not handed out yet, oldest first.
    buf: RefCell<VecDeque<Event>>,
    /// This clone has used the raw receiver (and moved its buffer there).
    moved: Cell<bool>,
    /// A raw channel of this clone's own, made by its first use of the raw receiver
    /// when the shared one had ended already (after the connection's end, once another
    /// clone used it): what this clone held, then its end.
    own: OnceCell<Receiver<Event>>,
}

/// What [`Events::took_burst`] found.
enum Next {
    Event(Event),
    /// Nothing yet: look again.
    Again,
    /// The connection has ended and everything was taken.
    Ended,
}

/// The caller's end of pull style's bursts (see [`Lane`]), shared by its `Events` clones;
/// dropped with the last one (its `Batches` then tells the I/O thread).
pub(crate) struct PullEnd {
    batches: Batches,
    lane: Arc<Lane>,
}

impl Events {
    pub(crate) fn new(
        rx: Receiver<Event>,
        room: Arc<Room>,
        shared: Arc<Shared>,
        mut batches: Batches,
        lane: Arc<Lane>,
    ) -> Self {
        batches.shared = Some(Arc::clone(&shared));
        Events {
            rx,
            room,
            shared,
            end: Arc::new(PullEnd { batches, lane }),
            buf: RefCell::new(VecDeque::new()),
            moved: Cell::new(false),
            own: OnceCell::new(),
        }
    }

    /// Blocks until an event arrives; an error once the connection has ended and every
    /// event was taken.
    #[inline(always)]
    pub fn recv(&self) -> Result<Event, RecvError> {
        let mut buf = self.buf.borrow_mut();
        match buf.front() {
            Some(event) => {
                self.took(event);
                buf.pop_front().ok_or(RecvError)
            }
            None => {
                drop(buf);
                self.wait(None).map_err(|_| RecvError)
            }
        }
    }

    /// As [`recv`](Self::recv), for at most `timeout` (`Duration::MAX`: no limit).
    #[inline]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        match self.pop() {
            Some(event) => Ok(event),
            None => self.wait(Some(crate::protocol::saturating_deadline(
                Instant::now(),
                timeout,
            ))),
        }
    }

    /// As [`recv`](Self::recv), until `deadline`.
    #[inline]
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Event, RecvTimeoutError> {
        match self.pop() {
            Some(event) => Ok(event),
            None => self.wait(Some(deadline)),
        }
    }

    /// An event if one is waiting, without blocking.
    #[inline(always)]
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        // The event goes from its slot straight into the result: taken out first (an
        // `Option`) and wrapped again, it was copied through stack slots whose loads
        // waited on stores of other widths (`perf`: two thirds of the caller's loop).
        let mut buf = self.buf.borrow_mut();
        match buf.front() {
            Some(event) => {
                self.took(event);
                buf.pop_front().ok_or(TryRecvError::Empty)
            }
            None => {
                drop(buf);
                self.refill_now()
            }
        }
    }

    /// The next event of this clone's buffer.
    #[inline]
    fn pop(&self) -> Option<Event> {
        let event = self.buf.borrow_mut().pop_front()?;
        self.took(&event);
        Some(event)
    }

    /// The buffer is empty: the next burst (or, once raw, the next event), waiting for it
    /// until `deadline` (`None`: for ever).
    #[inline(never)]
    fn wait(&self, deadline: Option<Instant>) -> Result<Event, RecvTimeoutError> {
        loop {
            // (Whether or not it took any now: a turn below may have taken them.)
            self.take_front();
            if let Some(event) = self.pop() {
                return Ok(event);
            }
            if self.is_raw() {
                return self.recv_raw(deadline);
            }
            let batches = &self.end.batches;
            let batch = match batches.look(deadline) {
                Some(Ok(batch)) => Some(batch),
                Some(Err(RecvError)) => None,
                None => match self.block(deadline) {
                    Ok(Some(batch)) => Some(batches.took(batch)),
                    // Woken: a clone left events in front.
                    Ok(None) => continue,
                    Err(RecvTimeoutError::Timeout) => return Err(RecvTimeoutError::Timeout),
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            match self.took_burst(batch) {
                Next::Event(event) => return Ok(event),
                Next::Again => {}
                Next::Ended => return Err(RecvTimeoutError::Disconnected),
            }
        }
    }

    /// As [`wait`](Self::wait), without waiting.
    #[inline(never)]
    fn refill_now(&self) -> Result<Event, TryRecvError> {
        loop {
            self.take_front();
            if let Some(event) = self.pop() {
                return Ok(event);
            }
            if self.is_raw() {
                let event = self.raw_rx().try_recv();
                if let Ok(e) = &event {
                    self.took(e);
                }
                return event;
            }
            let batches = &self.end.batches;
            let batch = match batches.rx.try_recv() {
                Ok(batch) => Some(batches.took(batch)),
                Err(TryRecvError::Empty) => return Err(TryRecvError::Empty),
                Err(TryRecvError::Disconnected) => None,
            };
            match self.took_burst(batch) {
                Next::Event(event) => return Ok(event),
                Next::Again => {}
                Next::Ended => return Err(TryRecvError::Disconnected),
            }
        }
    }

    /// After a take from the bursts' channel (`None`: it had disconnected): the burst's
    /// first event, or whether to look again or report the end.
    fn took_burst(&self, batch: Option<Vec<Event>>) -> Next {
        match batch {
            Some(batch) => {
                // What a dropped clone left came before anything in the channel.
                self.take_front();
                self.fill(batch);
                self.pop().map_or(Next::Again, Next::Event)
            }
            // The bursts' channel disconnected: the connection ended, or the I/O thread
            // switched to the raw channel (then the caller's loop takes from it).
            None if self.is_raw() || self.take_front() => Next::Again,
            None => Next::Ended,
        }
    }

    /// Blocks for the next burst until `deadline`; `Ok(None)` when woken instead because
    /// another clone left events in front (see [`Lane`]'s `wake`). Without other clones
    /// (none can be made meanwhile: this one is busy here), on the bursts alone.
    fn block(&self, deadline: Option<Instant>) -> Result<Option<Vec<Event>>, RecvTimeoutError> {
        let rx = &self.end.batches.rx;
        if self.room.receivers.load(SeqCst) == 1 {
            return recv_until(rx, deadline).map(Some);
        }
        let woken = &self.end.lane.woken;
        let mut select = Select::new();
        let bursts = select.recv(rx);
        select.recv(woken);
        let op = match deadline {
            Some(d) => select
                .select_deadline(d)
                .map_err(|_| RecvTimeoutError::Timeout)?,
            None => select.select(),
        };
        if op.index() == bursts {
            return op
                .recv(rx)
                .map(Some)
                .map_err(|_| RecvTimeoutError::Disconnected);
        }
        let _ = op.recv(woken);
        Ok(None)
    }

    /// The raw receiver: the shared one, or this clone's own (see `own`).
    fn raw_rx(&self) -> &Receiver<Event> {
        self.own.get().unwrap_or(&self.rx)
    }

    /// Once raw: the next event of the per-event channel.
    fn recv_raw(&self, deadline: Option<Instant>) -> Result<Event, RecvTimeoutError> {
        let rx = self.raw_rx();
        if rx.is_empty() && deadline.is_none_or(|d| Instant::now() < d) {
            Self::before_blocking();
        }
        let event = recv_until(rx, deadline);
        if let Ok(e) = &event {
            self.took(e);
        }
        event
    }

    /// Puts a burst taken from the channel behind what the buffer holds; an emptied
    /// buffer's allocation goes back to the I/O thread for its next burst.
    fn fill(&self, batch: Vec<Event>) {
        self.end.lane.in_channel.fetch_sub(batch.len(), SeqCst);
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            let emptied = std::mem::replace(&mut *buf, VecDeque::from(batch));
            self.end.batches.recycle(Vec::from(emptied));
        } else {
            buf.extend(batch);
        }
    }

    /// Takes the events a dropped clone left (see [`Lane`]'s `front`) into the buffer;
    /// `false` if there were none.
    fn take_front(&self) -> bool {
        let lane = &self.end.lane;
        if !lane.front_waiting.load(SeqCst) {
            return false;
        }
        let mut state = lane.lock();
        lane.front_waiting.store(false, SeqCst);
        if state.front.is_empty() {
            return false;
        }
        self.buf.borrow_mut().extend(state.front.drain(..));
        true
    }

    /// Whether events go one per slot of the raw channel now (a clone used it).
    fn is_raw(&self) -> bool {
        self.room.raw.load(SeqCst)
    }

    /// Finding the channel empty, the caller yields the thread once before it blocks in
    /// crossbeam's `recv`, as the callback thread does (`Batches::look`). On a shared core
    /// that runs the I/O thread (and a server on the same machine) while the answer is
    /// on its way, where the caller would first spin in crossbeam's `recv` on `pause`
    /// and then park, for the I/O thread to wake it with a futex. Measured 2026-12-07
    /// (release, 3 rounds of 3, alternating, against raw tungstenite in the same run): rtt
    /// pull on one core 0.59 → 0.71× at 2.19 → 1.60× the CPU per round trip, split 1.36 →
    /// 1.60× at 1.77 → 1.52×, unpinned 3.16 → 3.40× at 1.09 → 1.05×; stream_small pull
    /// within noise (0.67–0.73 → 0.70–0.75×).
    #[cold]
    fn before_blocking() {
        std::thread::yield_now();
    }

    /// The events as they come, blocking for each, until the channel disconnects.
    pub fn iter(&self) -> EventsIter<'_> {
        EventsIter(self)
    }

    /// The events waiting now, without blocking.
    pub fn try_iter(&self) -> EventsTryIter<'_> {
        EventsTryIter(self)
    }

    /// How many events wait for this receiver: those it took in a burst and has not
    /// handed out, those a dropped clone left, and those waiting in the channel.
    pub fn len(&self) -> usize {
        // Counted, not taken: a clone that only counts must not keep them from the others.
        let lane = &self.end.lane;
        let front = if lane.front_waiting.load(SeqCst) {
            lane.lock().front.len()
        } else {
            0
        };
        self.buf.borrow().len() + front + lane.in_channel.load(SeqCst) + self.raw_rx().len()
    }

    /// Whether no event waits for this receiver.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw crossbeam receiver, for `select!` and the rest of its API. Its first use
    /// moves the events that wait into it, and from then on the I/O thread hands events
    /// over one per channel slot (see above). Takes through it wake nobody: from now on a
    /// full queue is also looked at after naps, and with reconnect, callbacks see the
    /// latest connection's [`protocol`](crate::WebSocketRef::protocol) rather than their
    /// own.
    pub fn receiver(&self) -> &Receiver<Event> {
        if !self.moved.get() {
            self.first_raw_use();
        }
        self.raw_rx()
    }

    /// Moves what waits for this receiver into the raw channel, in order (its buffer, the
    /// events a dropped clone left, the bursts in the channel),
    /// and marks the lane raw, under the lane's lock (see [`Lane`]); then tells the I/O
    /// thread, which switches to one event per slot.
    ///
    /// From now on takes may wake nobody: an I/O thread that waits for room without a
    /// nap is woken to wait again with one. (It reads `raw` after storing `below`, and
    /// this swaps `below` after storing `raw`: either it sees `raw`, or this sees it wait.)
    #[cold]
    fn first_raw_use(&self) {
        self.moved.set(true);
        self.shared.untrack_opens();
        let lane = &self.end.lane;
        {
            let mut state = lane.lock();
            state.raw = true;
            self.room.raw.store(true, SeqCst);
            let mut waiting: Vec<Event> = self.buf.borrow_mut().drain(..).collect();
            waiting.extend(state.front.drain(..));
            lane.front_waiting.store(false, SeqCst);
            if let Some(tx) = state.tx.clone() {
                let batches = &self.end.batches;
                while let Ok(batch) = batches.rx.try_recv() {
                    lane.in_channel.fetch_sub(batch.len(), SeqCst);
                    waiting.extend(batches.took(batch));
                }
                // Unbounded, and this receiver lives: the sends cannot fail.
                for event in waiting {
                    let _ = tx.send(event);
                }
                if state.io_done {
                    // Nothing more comes: the raw receiver disconnects after these.
                    state.tx = None;
                }
            } else if !waiting.is_empty() {
                // The shared raw channel has ended (another clone used it after the end):
                // one of this clone's own, that ends after what it held.
                let (tx, rx) = crossbeam_channel::unbounded();
                for event in waiting {
                    let _ = tx.send(event);
                }
                let _ = self.own.set(rx);
            }
        }
        if self.room.below.swap(usize::MAX, SeqCst) != usize::MAX {
            self.shared.enqueue(Command::Room);
        }
        // The I/O thread switches now, rather than at its next delivery.
        self.shared.enqueue(Command::Room);
    }

    /// After each take: notes an `Open` (see [`Shared::open_taken`]), and wakes the I/O
    /// thread if it waits for the queue to come down this far (see [`Room`]). Two
    /// compares when neither.
    #[inline]
    fn took(&self, event: &Event) {
        if matches!(event, Event::Open) {
            self.shared.open_taken();
        }
        let below = self.room.below.load(SeqCst);
        if below != usize::MAX {
            self.made_room(below);
        }
    }

    #[cold]
    fn made_room(&self, below: usize) {
        if self.raw_rx().len() <= below
            && self
                .room
                .below
                .compare_exchange(below, usize::MAX, SeqCst, Relaxed)
                .is_ok()
        {
            self.shared.enqueue(Command::Room);
        }
    }
}

impl Clone for Events {
    /// Another receiver of the same events, with a buffer of its own: each event goes to
    /// one of them.
    fn clone(&self) -> Self {
        self.room.receivers.fetch_add(1, SeqCst);
        Events {
            rx: self.rx.clone(),
            room: Arc::clone(&self.room),
            shared: Arc::clone(&self.shared),
            end: Arc::clone(&self.end),
            buf: RefCell::new(VecDeque::new()),
            moved: Cell::new(false),
            own: OnceCell::new(),
        }
    }
}

impl Deref for Events {
    type Target = Receiver<Event>;

    /// The raw receiver: see [`Events::receiver`].
    fn deref(&self) -> &Receiver<Event> {
        self.receiver()
    }
}

impl Drop for Events {
    /// Events this receiver took in a burst and did not hand out go to the next clone
    /// that takes. The I/O thread learns at once that this receiver is gone: a full
    /// queue's, rather than when the caller would have made room; and if it was the last,
    /// the connection closes with 1001 (and reconnecting ends) even when it is idle,
    /// rather than at the next delivery.
    fn drop(&mut self) {
        let left = std::mem::take(self.buf.get_mut());
        if !left.is_empty() && self.room.receivers.load(SeqCst) > 1 {
            let lane = &self.end.lane;
            let mut state = lane.lock();
            match state.tx.as_ref().filter(|_| state.raw) {
                // Raw: where every other clone takes from now on, `select!` too (behind
                // what waits there already). This receiver lives: the sends cannot fail.
                Some(tx) => {
                    for event in left {
                        let _ = tx.send(event);
                    }
                }
                None => {
                    state.front.extend(left);
                    lane.front_waiting.store(true, SeqCst);
                    // A clone blocked on the bursts' channel looks at them now.
                    let _ = lane.wake.try_send(());
                }
            }
        }
        drop(std::mem::replace(&mut self.rx, crossbeam_channel::never()));
        let waited = self.room.below.swap(usize::MAX, SeqCst) != usize::MAX;
        // The last receiver: an I/O thread waiting to reconnect learns at once that
        // nobody takes events any more (see `Outlet::receiver_gone`). Counted down before
        // the command goes, so the thread it wakes sees it.
        let last = self.room.receivers.fetch_sub(1, SeqCst) == 1;
        if waited || last {
            self.shared.enqueue(Command::Room);
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("buffered", &self.buf.borrow().len())
            .field("waiting", &self.raw_rx().len())
            .finish()
    }
}

/// [`Events::iter`]: blocks for each event.
#[derive(Debug)]
pub struct EventsIter<'a>(&'a Events);

impl Iterator for EventsIter<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.0.recv().ok()
    }
}

/// [`Events::try_iter`]: the events waiting now.
#[derive(Debug)]
pub struct EventsTryIter<'a>(&'a Events);

impl Iterator for EventsTryIter<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = Event;
    type IntoIter = EventsIter<'a>;

    fn into_iter(self) -> EventsIter<'a> {
        self.iter()
    }
}

/// [`Events`] by value, blocking for each event.
#[derive(Debug)]
pub struct EventsIntoIter(Events);

impl Iterator for EventsIntoIter {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.0.recv().ok()
    }
}

impl IntoIterator for Events {
    type Item = Event;
    type IntoIter = EventsIntoIter;

    fn into_iter(self) -> EventsIntoIter {
        EventsIntoIter(self)
    }
}

/// The consumer's end of [`Outlet::Batches`]: the callback thread's, or yours through
/// [`EventBatches`].
pub(crate) struct Batches {
    pub rx: Receiver<Vec<Event>>,
    pub spare: Sender<Vec<Event>>,
    /// The number of events in the last batch taken (see [`Batches::next`]).
    last: AtomicUsize,
    /// See [`Outlet::Batches`]: taken once `rx` has disconnected.
    tail: Arc<Mutex<Vec<Event>>>,
    /// See [`Outlet::Batches`]: the I/O thread asks to be woken at the next take.
    take_wanted: Arc<AtomicBool>,
    /// Where that wake-up goes; set once the connection is made.
    pub shared: Option<Arc<Shared>>,
    /// See [`Outlet::Batches`]: set when this is dropped.
    gone: Arc<AtomicBool>,
    /// See [`Outlet::Batches`]: set once the raw receiver was used.
    raw: Arc<AtomicBool>,
}

impl Drop for Batches {
    /// The I/O thread learns at once that nobody takes the events any more (the last
    /// connection closes with 1001, and reconnecting ends), as when the last [`Events`]
    /// is dropped, rather than at its next delivery: an idle connection has none.
    /// (Only a dropped [`EventBatches`]: the callback thread's drops its own once the I/O
    /// thread has ended.)
    fn drop(&mut self) {
        self.gone.store(true, SeqCst);
        if let Some(shared) = &self.shared {
            shared.enqueue(Command::Room);
        }
    }
}

/// A batch of at least this many events means a flood (see [`Batches::next`]).
const FLOOD: usize = 64;

/// How many times a consumer in a flood yields, looking for the next batch between, before
/// it blocks (about 30 µs on an idle core).
const FLOOD_YIELDS: usize = 64;

/// The longest a consumer yields on, looking, while the I/O thread is awake (see
/// [`Batches::look`]); as long as the I/O thread looks for an answer after a write.
const AWAKE_LOOK: Duration = Duration::from_micros(50);

/// Whether a consumer looks on while the I/O thread is `awake`: for [`AWAKE_LOOK`] from
/// the first time it asks (`since`), however long the I/O thread stays awake.
fn look_on(awake: bool, since: &mut Option<Instant>) -> bool {
    awake && since.get_or_insert_with(Instant::now).elapsed() < AWAKE_LOOK
}

/// Pull style in batches: the events of a connection as whole read bursts, each a
/// `Vec<Event>` in order, from [`Builder::connect_batches`](crate::Builder::connect_batches).
///
/// The same events as [`connect_pull`](crate::Builder::connect_pull)'s channel, in the same
/// order (`Open`, the messages, then `Error` on failure and `Close`, last), but one
/// channel operation per burst rather than per event: for a consumer that takes floods of
/// small messages, this costs what callback style costs (see the README's figures),
/// without a callback thread. After `Close` (the last connection's, with reconnect on)
/// the channel disconnects and `recv` returns an error.
///
/// A batch holds up to [`incoming_queue`](crate::Builder::incoming_queue) events (512 by
/// default) or 2 MiB of payload; one batch waits while the I/O thread gathers the next,
/// and while both are full it stops reading the socket, so TCP slows the server down.
/// Until then it reads on (pongs and the server's Close do not wait for you), and while
/// you leave a batch untaken it reads at most once a millisecond, and at your next take,
/// all that came in one go, rather than waking for each message.
/// Handing an emptied batch back with [`recycle`](Self::recycle) lets the I/O thread reuse
/// its allocation.
///
/// After a batch of 64 events or more (a flood), `recv` and `recv_timeout` yield the
/// thread up to 64 times, looking for the next batch in between, before they block (about
/// 30 µs on an idle core): the next batch of a flood is usually that close, and blocking
/// would cost the I/O thread a wake-up per batch. The callback thread waits the same way.
///
/// ```
/// # let addr = nwebsocket_doc_server();
/// use std::time::Duration;
/// use nwebsocket::{Event, WebSocket};
///
/// let (ws, batches) = WebSocket::builder().connect_batches(&format!("ws://{addr}/"))?;
/// for i in 0..3 {
///     ws.send(format!("message {i}"))?;
/// }
/// let mut got = Vec::new();
/// while got.len() < 3 {
///     let mut batch = batches.recv_timeout(Duration::from_secs(5)).expect("a batch");
///     for event in batch.drain(..) {
///         if let Event::Message(m) = event {
///             got.push(m.as_text().unwrap_or_default().to_owned());
///         }
///     }
///     batches.recycle(batch);
/// }
/// assert_eq!(got, ["message 0", "message 1", "message 2"]);
/// # fn nwebsocket_doc_server() -> std::net::SocketAddr {
/// #     let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// #     let a = l.local_addr().unwrap();
/// #     std::thread::spawn(move || {
/// #         let mut ws = tungstenite::accept(l.accept().unwrap().0).unwrap();
/// #         while let Ok(m) = ws.read() { if m.is_text() || m.is_binary() { let _ = ws.send(m); } }
/// #     });
/// #     a
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventBatches(pub(crate) Batches);

impl EventBatches {
    /// Blocks until a batch arrives; an error once the connection has ended and every
    /// batch was taken.
    pub fn recv(&self) -> Result<Vec<Event>, RecvError> {
        self.0.next().map(|b| self.taken(b)).ok_or(RecvError)
    }

    /// As [`recv`](Self::recv), for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<Event>, RecvTimeoutError> {
        let deadline = crate::protocol::saturating_deadline(Instant::now(), timeout);
        let batch = match self.0.look(Some(deadline)) {
            Some(Ok(batch)) => Ok(batch),
            Some(Err(RecvError)) => Err(RecvTimeoutError::Disconnected),
            None => match self.0.rx.recv_deadline(deadline) {
                Ok(batch) => Ok(self.0.took(batch)),
                Err(RecvTimeoutError::Disconnected) => {
                    self.0.tail().ok_or(RecvTimeoutError::Disconnected)
                }
                Err(e) => Err(e),
            },
        };
        batch.map(|b| self.taken(b))
    }

    /// A batch if one is waiting, without blocking.
    pub fn try_recv(&self) -> Result<Vec<Event>, TryRecvError> {
        self.try_recv_untracked().map(|b| self.taken(b))
    }

    /// As [`try_recv`](Self::try_recv), its `Open` events not noted: for a caller that
    /// notes each as it handles it (`dispatch_batches`).
    pub(crate) fn try_recv_untracked(&self) -> Result<Vec<Event>, TryRecvError> {
        match self.0.rx.try_recv() {
            Ok(batch) => Ok(self.0.took(batch)),
            Err(TryRecvError::Disconnected) => self.0.tail().ok_or(TryRecvError::Disconnected),
            Err(e) => Err(e),
        }
    }

    /// Notes the `Open` events of a batch taken (see [`Shared::open_taken`]); none to look
    /// for unless one was handed over and not taken yet (a flood's batches are not walked).
    fn taken(&self, batch: Vec<Event>) -> Vec<Event> {
        if let Some(shared) = self
            .0
            .shared
            .as_ref()
            .filter(|s| s.opens_untaken.load(SeqCst) > 0)
        {
            for _ in batch.iter().filter(|e| matches!(e, Event::Open)) {
                shared.open_taken();
            }
        }
        batch
    }

    /// The underlying channel, to `select!` on beside your own. When it disconnects, call
    /// [`try_recv`](Self::try_recv) once more: the connection's last events may have
    /// been set aside for you (when a batch still waited as it ended). With reconnect,
    /// callbacks then see the latest connection's
    /// [`protocol`](crate::WebSocketRef::protocol) rather than their own.
    pub fn receiver(&self) -> &Receiver<Vec<Event>> {
        if !self.0.raw.load(Relaxed) {
            self.first_raw_use();
        }
        &self.0.rx
    }

    /// From now on takes may wake nobody: an I/O thread waiting for the next take is
    /// woken to wait again with a timer. (It reads `raw` after arming `take_wanted`, and
    /// this swaps `take_wanted` after storing `raw`: either it sees `raw`, or this sees it
    /// wait. As `Events::first_raw_use`.)
    #[cold]
    fn first_raw_use(&self) {
        self.0.raw.store(true, SeqCst);
        if let Some(shared) = &self.0.shared {
            shared.untrack_opens();
            if self.0.take_wanted.swap(false, SeqCst) {
                shared.enqueue(Command::Room);
            }
        }
    }

    /// Hands an emptied batch back (its events are dropped if any are left), so that
    /// the I/O thread fills the same allocation again.
    pub fn recycle(&self, batch: Vec<Event>) {
        self.0.recycle(batch);
    }
}

impl fmt::Debug for EventBatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBatches")
            .field("waiting", &self.0.rx.len())
            .finish()
    }
}

impl Batches {
    /// The next batch, or `None` once the I/O thread is gone.
    pub fn next(&self) -> Option<Vec<Event>> {
        match self.look(None) {
            Some(batch) => batch.ok(),
            None => self.rx.recv().ok().map(|b| self.took(b)),
        }
    }

    /// A batch (or the end) if one comes soon (and before `deadline`), else `None`, for
    /// the caller to block.
    ///
    /// When none is waiting, the thread yields before it blocks: once after a small batch,
    /// [`FLOOD_YIELDS`] times after a large one, looking for the next batch in between. On
    /// a shared core a yield runs the I/O thread, which is what fills the channel, where
    /// crossbeam's `recv` would first spin on `pause` for microseconds that nobody else
    /// can use. On a core of its own, in a flood, the next batch is usually microseconds
    /// away, and blocking would make the I/O thread, the busier of the two, pay a futex
    /// wake-up per batch (8 % of its time; unpinned stream_small 0.85–0.89× → 1.05×).
    /// After a small batch, it yields on for up to [`AWAKE_LOOK`] while the I/O thread is
    /// awake or looks for an answer after a write (a round trip: the answer is on its
    /// way): on a shared core each yield runs it or the server, and the answer is handed
    /// over without a futex wake-up (rtt on one core, CPU per round trip 1.58–1.60 →
    /// 1.48–1.50× raw tungstenite's, with the I/O thread's own change of the same
    /// stop: see the bench notes, stop 25).
    fn look(&self, deadline: Option<Instant>) -> Option<Result<Vec<Event>, RecvError>> {
        let flood = self.last.load(Relaxed) >= FLOOD;
        let mut yields = if flood { FLOOD_YIELDS } else { 1 };
        let mut awake_since = None;
        loop {
            match self.rx.try_recv() {
                Ok(batch) => return Some(Ok(self.took(batch))),
                Err(TryRecvError::Disconnected) => return Some(self.tail().ok_or(RecvError)),
                Err(TryRecvError::Empty)
                    if yields == 0 && (flood || !self.io_awake(&mut awake_since)) =>
                {
                    return None
                }
                Err(TryRecvError::Empty) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            yields = yields.saturating_sub(1);
            std::thread::yield_now();
        }
    }

    /// Whether the I/O thread is awake (looking for an answer after a write, or at work)
    /// and has been for less than [`AWAKE_LOOK`] of this look: what it hands over next
    /// is then usually microseconds away, and the consumer yields on rather than block,
    /// which would cost the I/O thread a futex wake-up and both a switch.
    fn io_awake(&self, since: &mut Option<Instant>) -> bool {
        let awake = self.shared.as_ref().is_some_and(|shared| {
            shared.io_looking.load(Relaxed) || !shared.io_sleeping.load(Relaxed)
        });
        look_on(awake, since)
    }

    /// Notes the size of a batch being handed to the consumer.
    /// The last events, set aside at the end of the connection, once.
    fn tail(&self) -> Option<Vec<Event>> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        (!tail.is_empty()).then(|| std::mem::take(&mut *tail))
    }

    fn took(&self, batch: Vec<Event>) -> Vec<Event> {
        self.last.store(batch.len(), Relaxed);
        // Pairs with the fence in `Outlet::wake_on_take`: either this sees the request, or
        // the I/O thread sees the room this take made.
        fence(SeqCst);
        if self.take_wanted.load(Relaxed) && self.take_wanted.swap(false, SeqCst) {
            if let Some(shared) = &self.shared {
                shared.enqueue(Command::Room);
            }
        }
        batch
    }

    /// Returns an emptied batch for reuse (dropped if one is already waiting).
    pub fn recycle(&self, mut batch: Vec<Event>) {
        batch.clear();
        let _ = self.spare.try_send(batch);
    }
}

/// An outlet for callback style, in batches of up to `limit` events, and the callback
/// thread's end of it.
pub(crate) fn batches(limit: usize, bytes_limit: usize) -> (Outlet, Batches) {
    batches_over(crossbeam_channel::bounded(1), limit, bytes_limit)
}

/// As [`batches`], over `channel`: bounded to one batch (callback style, batches), or
/// unbounded (pull style's lane: the connection's last events go over without waiting,
/// as in its raw channel, and the I/O thread's own rule, no batch while one waits, bounds
/// the rest).
fn batches_over(
    (tx, rx): (Sender<Vec<Event>>, Receiver<Vec<Event>>),
    limit: usize,
    bytes_limit: usize,
) -> (Outlet, Batches) {
    let (spare_tx, spare) = crossbeam_channel::bounded(1);
    let tail = Arc::new(Mutex::new(Vec::new()));
    let take_wanted = Arc::new(AtomicBool::new(false));
    let gone = Arc::new(AtomicBool::new(false));
    let raw = Arc::new(AtomicBool::new(false));
    let outlet = Outlet::Batches {
        tx,
        spare,
        limit: limit.max(1),
        bytes_limit: bytes_limit.max(1),
        tail: Arc::clone(&tail),
        take_wanted: Arc::clone(&take_wanted),
        gone: Arc::clone(&gone),
        raw: Arc::clone(&raw),
        lane: None,
    };
    (
        outlet,
        Batches {
            rx,
            spare: spare_tx,
            last: AtomicUsize::new(0),
            tail,
            take_wanted,
            shared: None,
            gone,
            raw,
        },
    )
}

/// Pull style's outlet and the caller's end of it (see [`Lane`]): batches of up to
/// [`PULL_BATCH`] events while fewer than `limit` events and `bytes_limit` bytes wait in
/// the channel, then, once the raw receiver is used, one event per slot of `tx`'s
/// channel under the same bounds.
pub(crate) fn pull_lanes(
    tx: Sender<Event>,
    room: Arc<Room>,
    limit: usize,
    bytes_limit: usize,
) -> (Outlet, Batches, Arc<Lane>) {
    let (mut outlet, batches) = batches_over(
        crossbeam_channel::unbounded(),
        limit.clamp(1, PULL_BATCH),
        bytes_limit.max(1),
    );
    let (wake, woken) = crossbeam_channel::bounded(1);
    let lane = Arc::new(Lane {
        state: Mutex::new(LaneState {
            raw: false,
            tx: Some(tx),
            io_done: false,
            front: VecDeque::new(),
        }),
        room,
        front_waiting: AtomicBool::new(false),
        wake,
        woken,
        in_channel: AtomicUsize::new(0),
        limit: limit.max(1),
        bytes_limit: bytes_limit.max(1),
    });
    if let Outlet::Batches { lane: end, .. } = &mut outlet {
        *end = Some(LaneEnd {
            lane: Arc::clone(&lane),
            sent: VecDeque::new(),
            events: 0,
            bytes: 0,
            batches: 0,
            unread: None,
        });
    }
    (outlet, batches, lane)
}

/// The most events in one of pull style's batches: callback style's default batch.
const PULL_BATCH: usize = 512;

/// What [`Outlet::lane_send`] did.
enum LaneSent {
    /// The batch went over (or nothing was pending).
    Sent,
    /// A batch still waits in the channel: nothing went.
    Full,
    /// The caller had used the raw receiver: the outlet is [`Outlet::Events`] now, and
    /// nothing went yet.
    Switched,
    /// The consumer is gone: the events, dropped.
    Gone(Vec<Event>),
}

/// What [`Outlet::push_wait`] saw first.
pub(crate) enum Waited {
    /// Some or all of the pending events went over.
    Sent,
    /// The consumer is gone; the events were dropped (returned for logging).
    Gone(Vec<Event>),
    /// The deadline passed; the events are still pending.
    TimedOut,
    /// A command arrived (`None`: the command channel is closed); the events are still
    /// pending.
    Command(Option<Command>),
}

impl Outlet {
    /// Whether `pending` (`events` events, `bytes` bytes of payload) holds a whole burst:
    /// then the I/O thread reads no more until some of it is handed over.
    pub fn burst_full(&self, events: usize, bytes: usize) -> bool {
        match self {
            Outlet::Events(pull) => events >= BURST || bytes >= pull.bytes_limit,
            Outlet::Batches {
                limit, bytes_limit, ..
            } => events >= *limit || bytes >= *bytes_limit,
        }
    }

    /// Whether the consumer's end is gone for good: every `Events` dropped (pull style),
    /// or the batches' receiver. Nobody would take this or another connection's events.
    /// Each drop sends `Command::Room` after it counts here.
    pub fn receiver_gone(&self) -> bool {
        match self {
            Outlet::Events(pull) => pull.room.receivers.load(SeqCst) == 0,
            Outlet::Batches { gone, .. } => gone.load(SeqCst),
        }
    }

    /// In batches, while a batch waits untaken and the next is being gathered with room
    /// to spare (so the socket is read on): asks the consumer to wake this thread with
    /// [`Command::Room`] at its next take. `false` when there is room already (the batch
    /// was taken meanwhile): then nothing is asked, and the caller hands over at once.
    pub fn wake_on_take(&mut self) -> bool {
        let Outlet::Batches {
            tx,
            take_wanted,
            lane,
            ..
        } = self
        else {
            return false;
        };
        take_wanted.store(true, SeqCst);
        // Pairs with the fence in `Batches::took` (see there).
        fence(SeqCst);
        let waits = match lane {
            Some(lane) => lane.full(tx),
            None => !tx.is_empty(),
        };
        if waits {
            return true;
        }
        take_wanted.store(false, Relaxed);
        false
    }

    /// Asks the consumer's next take to wake this thread, in either style: `Some(false)`
    /// if it took something meanwhile, `None` if its takes cannot wake anyone (pull
    /// style's raw receiver was used).
    pub fn wake_when_taken(&mut self) -> Option<bool> {
        // Armed first, `raw` read after (see `Events::first_raw_use`).
        let armed = match self {
            Outlet::Events(pull) => pull.wake_on_take(),
            Outlet::Batches { .. } => self.wake_on_take(),
        };
        let raw = match self {
            Outlet::Events(pull) => pull.raw(),
            Outlet::Batches { raw, .. } => raw.load(SeqCst),
        };
        if raw {
            self.stop_waking_on_take();
            return None;
        }
        Some(armed)
    }

    /// The wait for the consumer's take is over (woken, or for another reason).
    pub fn stop_waking_on_take(&self) {
        match self {
            Outlet::Events(pull) => pull.stop_waiting(),
            Outlet::Batches { take_wanted, .. } => take_wanted.store(false, Relaxed),
        }
    }

    /// Pull style in bursts: since when the caller has taken nothing while bursts keep
    /// coming for it (see [`Pull::busy_since`]).
    pub fn lane_busy_since(&self) -> Option<Instant> {
        match self {
            Outlet::Batches {
                tx,
                lane: Some(lane),
                ..
            } => lane.busy_since(tx),
            _ => None,
        }
    }

    /// Pull style in bursts: this thread stops watching the socket for a busy caller (see
    /// [`Pull::moderating`]).
    pub fn lane_moderating(&mut self) {
        if let Outlet::Batches {
            lane: Some(lane), ..
        } = self
        {
            if let Some(unread) = &mut lane.unread {
                unread.again = false;
            }
        }
    }

    /// In batches: asks the consumer to wake this thread at its next take; `false` if it
    /// has taken all that was handed over meanwhile.
    pub fn wake_on_next_take(&mut self) -> bool {
        let Outlet::Batches {
            tx, take_wanted, ..
        } = self
        else {
            return false;
        };
        take_wanted.store(true, SeqCst);
        // Pairs with the fence in `Batches::took` (see there).
        fence(SeqCst);
        if !tx.is_empty() {
            return true;
        }
        take_wanted.store(false, Relaxed);
        false
    }

    /// Pull style before its raw receiver is used: batches into the caller's `Events`.
    pub fn is_lane(&self) -> bool {
        matches!(self, Outlet::Batches { lane: Some(_), .. })
    }

    /// In batches: whether the consumer has yet to take the batch handed over last.
    pub fn batch_untaken(&self) -> bool {
        matches!(self, Outlet::Batches { tx, .. } if !tx.is_empty())
    }

    /// Whether the consumer has taken everything handed over so far.
    pub fn is_empty(&self) -> bool {
        match self {
            Outlet::Events(pull) => pull.tx.is_empty(),
            Outlet::Batches { tx, .. } => tx.is_empty(),
        }
    }

    /// Whether the consumer has yet to make room enough to be worth a refill: the channel
    /// is more than half full (in events or in bytes), or a batch still waits.
    pub fn crowded(&mut self) -> bool {
        match self {
            Outlet::Events(pull) => pull.level() == Level::High,
            Outlet::Batches {
                tx,
                lane: Some(lane),
                ..
            } => lane.crowded(tx),
            Outlet::Batches { tx, .. } => !tx.is_empty(),
        }
    }

    /// Moves events from the front of `pending` over, in order, as many as fit now, and
    /// returns their payload bytes (in batches all go, or none: then 0, and `pending` is
    /// empty or as it was). `Err` carries the events dropped because the consumer is gone.
    pub fn push(&mut self, pending: &mut VecDeque<Event>) -> Result<usize, Vec<Event>> {
        match self {
            Outlet::Events(pull) => pull.push(pending, true),
            Outlet::Batches { lane: Some(_), .. } => match self.lane_send(pending, false) {
                LaneSent::Switched => self.push(pending),
                LaneSent::Sent | LaneSent::Full => Ok(0),
                LaneSent::Gone(events) => Err(events),
            },
            Outlet::Batches { tx, spare, .. } => {
                // Only this thread sends: once there is room, `try_send` cannot find it full.
                if pending.is_empty() || !tx.is_empty() {
                    return Ok(0);
                }
                let batch = take_batch(spare, pending);
                match tx.try_send(batch) {
                    Ok(()) => Ok(0),
                    Err(TrySendError::Full(batch)) => {
                        put_back(pending, batch);
                        Ok(0)
                    }
                    Err(TrySendError::Disconnected(mut batch)) => {
                        batch.extend(pending.drain(..));
                        Err(batch)
                    }
                }
            }
        }
    }

    /// Blocks until the front of `pending` (which must not be empty) can go over, a command
    /// arrives, or `deadline` passes; whichever is first.
    ///
    /// Pull style's channel never blocks a send: there this hands over all of `pending`
    /// at once, whatever the limit. Only the connection's last events go this way
    /// (`Io::deliver_all`): at most a burst and the closing events past the limit.
    /// Hands over the last events of the last connection, without waiting: pull style's
    /// channel takes them all whatever its bound; in batches, if a batch still waits,
    /// they are set aside for the consumer to find after it (see [`Batches::tail`]).
    /// `Err` carries the events dropped because the receiver is gone.
    pub fn push_last(&mut self, pending: &mut VecDeque<Event>) -> Result<(), Vec<Event>> {
        match self {
            Outlet::Events(pull) => pull.push(pending, false).map(drop),
            Outlet::Batches { lane: Some(_), .. } => match self.lane_send(pending, true) {
                LaneSent::Switched => self.push_last(pending),
                LaneSent::Sent | LaneSent::Full => Ok(()),
                LaneSent::Gone(events) => Err(events),
            },
            Outlet::Batches {
                tx, spare, tail, ..
            } => {
                if pending.is_empty() {
                    return Ok(());
                }
                let batch = take_batch(spare, pending);
                match tx.try_send(batch) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(batch)) => {
                        tail.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(batch);
                        Ok(())
                    }
                    Err(TrySendError::Disconnected(batch)) => Err(batch),
                }
            }
        }
    }

    pub fn push_wait(
        &mut self,
        pending: &mut VecDeque<Event>,
        commands: &Receiver<Command>,
        deadline: Option<Instant>,
    ) -> Waited {
        match self {
            Outlet::Events(pull) => match pull.push(pending, false) {
                Ok(_) => Waited::Sent,
                Err(gone) => Waited::Gone(gone),
            },
            // As the raw channel: all goes over at once (an unbounded channel).
            Outlet::Batches { lane: Some(_), .. } => match self.lane_send(pending, true) {
                LaneSent::Switched => self.push_wait(pending, commands, deadline),
                LaneSent::Sent | LaneSent::Full => Waited::Sent,
                LaneSent::Gone(events) => Waited::Gone(events),
            },
            Outlet::Batches { tx, spare, .. } => {
                if pending.is_empty() {
                    return Waited::Sent;
                }
                let batch = take_batch(spare, pending);
                match select_send(tx, commands, batch, deadline) {
                    Selected::Sent => Waited::Sent,
                    Selected::Disconnected(mut batch) => {
                        batch.extend(pending.drain(..));
                        Waited::Gone(batch)
                    }
                    Selected::TimedOut(batch) => {
                        put_back(pending, batch);
                        Waited::TimedOut
                    }
                    Selected::Command(batch, command) => {
                        put_back(pending, batch);
                        Waited::Command(command)
                    }
                }
            }
        }
    }
}

impl Outlet {
    /// Pull style in bursts: hands `pending` over as one batch if none waits in the
    /// channel (`last`: whatever waits), under the lane's lock, unless the caller has used the raw receiver: then switches
    /// to one event per slot (see [`Lane`]).
    fn lane_send(&mut self, pending: &mut VecDeque<Event>, last: bool) -> LaneSent {
        let Outlet::Batches {
            tx,
            spare,
            lane: Some(end),
            ..
        } = self
        else {
            unreachable!("pull style's outlet")
        };
        let lane = Arc::clone(&end.lane);
        let state = lane.lock();
        if state.raw {
            let raw_tx = state
                .tx
                .clone()
                .expect("the sender stays while this thread runs");
            drop(state);
            let end = end_of(self);
            // Drops the batches' sender: a caller blocked on it wakes, and finds the lane raw.
            *self = Outlet::Events(Pull::switched(raw_tx, end));
            return LaneSent::Switched;
        }
        if pending.is_empty() {
            return LaneSent::Sent;
        }
        // Up to the bound, but for the connection's last events: as many as fit, whole
        // if they do (the pending queue's buffer goes as it is).
        let (events, bytes) = end.waiting(tx);
        let (room, bytes_room) = if last {
            (usize::MAX, usize::MAX)
        } else {
            (
                lane.limit.saturating_sub(events),
                lane.bytes_limit.saturating_sub(bytes),
            )
        };
        let mut n = 0;
        let mut batch_bytes = 0;
        for event in pending.iter() {
            if n == room || batch_bytes >= bytes_room {
                break;
            }
            n += 1;
            batch_bytes += payload_len(event);
        }
        if n == 0 {
            return LaneSent::Full;
        }
        let batch = if n == pending.len() {
            take_batch(spare, pending)
        } else {
            let mut batch = spare.try_recv().unwrap_or_default();
            batch.extend(pending.drain(..n));
            batch
        };
        end.sent.push_back((n, batch_bytes));
        end.events += n;
        end.bytes += batch_bytes;
        lane.in_channel.fetch_add(n, SeqCst);
        end.delivered(tx);
        match tx.try_send(batch) {
            Ok(()) => LaneSent::Sent,
            // (Unbounded: never full.)
            Err(TrySendError::Full(mut batch) | TrySendError::Disconnected(mut batch)) => {
                lane.in_channel.fetch_sub(n, SeqCst);
                batch.extend(pending.drain(..));
                LaneSent::Gone(batch)
            }
        }
    }
}

/// Takes the lane's end out of a pull-style batches outlet about to be replaced.
fn end_of(outlet: &mut Outlet) -> LaneEnd {
    match outlet {
        Outlet::Batches { lane, .. } => lane.take().expect("pull style's outlet"),
        Outlet::Events(_) => unreachable!("pull style in bursts"),
    }
}

/// All of `pending` as a batch, leaving a reused (empty) vector in its place if one came
/// back. No event is copied: `pending` only ever grows at the back and is emptied whole,
/// so its buffer starts at the front and turns into a `Vec` as it is.
fn take_batch(spare: &Receiver<Vec<Event>>, pending: &mut VecDeque<Event>) -> Vec<Event> {
    let next = spare
        .try_recv()
        .map(|mut v| {
            claim(&mut v);
            VecDeque::from(v)
        })
        .unwrap_or_default();
    Vec::from(std::mem::replace(pending, next))
}

/// Writes once over the whole of an emptied vector that came back from the consumer,
/// before any event goes in.
///
/// The consumer's core read every cache line of it last, and a write to a line another
/// core holds waits until that core lets go of it. Spread over a burst, one event at a
/// time between the reads and parsing of each message, those waits come one after another:
/// about a quarter of the I/O thread's time when the consumer runs on the other core
/// (unpinned stream_small, 0.77–0.87× → 0.88–0.96× of raw tungstenite). Written in one
/// pass, the lines are fetched many at a time. (After a flood this is up to 512 events'
/// worth, a microsecond or two, per batch.)
fn claim(batch: &mut Vec<Event>) {
    batch.resize_with(batch.capacity(), || Event::Open);
    batch.clear();
}

/// Undoes [`take_batch`]: the batch's events go back to the front of `pending`, in order.
fn put_back(pending: &mut VecDeque<Event>, batch: Vec<Event>) {
    let later = std::mem::replace(pending, VecDeque::from(batch));
    pending.extend(later);
}

/// The next item of `rx`, waiting until `deadline` (`None`: for as long as it takes).
pub(crate) fn recv_until<T>(
    rx: &Receiver<T>,
    deadline: Option<Instant>,
) -> Result<T, RecvTimeoutError> {
    match deadline {
        Some(d) => rx.recv_deadline(d),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

/// What [`select_send`] saw first.
enum Selected<T> {
    Sent,
    Disconnected(T),
    TimedOut(T),
    /// A command arrived first (`None`: the command channel is closed); the item is back.
    Command(T, Option<Command>),
}

/// Waits until `item` fits in `tx` or a command arrives, whichever is first.
fn select_send<T>(
    tx: &Sender<T>,
    commands: &Receiver<Command>,
    item: T,
    deadline: Option<Instant>,
) -> Selected<T> {
    let mut select = Select::new();
    let send = select.send(tx);
    select.recv(commands);
    let selected = match deadline {
        Some(d) => select.select_deadline(d).ok(),
        None => Some(select.select()),
    };
    match selected {
        None => Selected::TimedOut(item),
        Some(op) if op.index() == send => match op.send(tx, item) {
            Ok(()) => Selected::Sent,
            Err(e) => Selected::Disconnected(e.into_inner()),
        },
        Some(op) => Selected::Command(item, op.recv(commands).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Binary, Message};

    fn msg(i: u8, len: usize) -> Event {
        let mut payload = vec![0; len.max(1)];
        payload[0] = i;
        Event::Message(Message::Binary(Binary::from(payload)))
    }

    fn first_byte(e: &Event) -> u8 {
        match e {
            Event::Message(m) => m.as_bytes()[0],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_callback_batch_closes_at_its_event_limit_or_at_two_mebibytes() {
        let (outlet, _end) = batches(256, BATCH_BYTES);
        assert!(!outlet.burst_full(255, BATCH_BYTES - 1));
        assert!(outlet.burst_full(256, 0));
        assert!(outlet.burst_full(1, BATCH_BYTES));
        let (tx, _rx) = crossbeam_channel::unbounded();
        let pull = Outlet::Events(Pull::new(tx, Arc::default(), 4, BATCH_BYTES));
        assert!(!pull.burst_full(BURST - 1, BATCH_BYTES - 1));
        assert!(pull.burst_full(BURST, 0));
        assert!(pull.burst_full(1, BATCH_BYTES));
    }

    fn pull(limit: usize) -> (Outlet, Receiver<Event>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Outlet::Events(Pull::new(tx, Arc::default(), limit, BATCH_BYTES)),
            rx,
        )
    }

    fn is_held(outlet: &mut Outlet) -> bool {
        match outlet {
            Outlet::Events(pull) => pull.held(),
            Outlet::Batches { .. } => unreachable!(),
        }
    }

    fn level(outlet: &mut Outlet) -> Level {
        match outlet {
            Outlet::Events(pull) => pull.level(),
            Outlet::Batches { .. } => unreachable!(),
        }
    }

    #[test]
    fn the_pull_channel_takes_up_to_its_limit_and_opens_as_events_are_taken() {
        let (mut outlet, rx) = pull(8);
        let mut pending: VecDeque<Event> = (0..12).map(|i| msg(i, 8)).collect();
        outlet.push(&mut pending).unwrap();
        assert_eq!((rx.len(), pending.len()), (8, 4));
        assert!(is_held(&mut outlet) && outlet.crowded());
        assert_eq!(level(&mut outlet), Level::High);
        for i in 0..4 {
            assert_eq!(first_byte(&rx.try_recv().unwrap()), i);
        }
        assert!(!is_held(&mut outlet));
        assert_eq!(level(&mut outlet), Level::Middle, "4 of 8 wait");
        outlet.push(&mut pending).unwrap();
        assert_eq!(
            (rx.len(), pending.len()),
            (8, 0),
            "the other four went over"
        );
        assert!(is_held(&mut outlet));
        let taken: Vec<u8> = rx.try_iter().take(7).map(|e| first_byte(&e)).collect();
        assert_eq!(taken, [4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(level(&mut outlet), Level::Low, "1 of 8 waits");
        assert!(!outlet.is_empty());
        assert_eq!(first_byte(&rx.try_recv().unwrap()), 11);
        assert!(outlet.is_empty());
    }

    fn busy_since(outlet: &Outlet) -> Option<Instant> {
        match outlet {
            Outlet::Events(pull) => pull.busy_since(),
            Outlet::Batches { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_pull_caller_is_busy_once_events_keep_coming_while_it_takes_none() {
        let (mut outlet, rx) = pull(64);
        let mut pending: VecDeque<Event> = VecDeque::from([Event::Open]);
        outlet.push(&mut pending).unwrap();
        assert_eq!(
            busy_since(&outlet),
            None,
            "one event left unread (a program that only sends) is no reason"
        );
        let first = Instant::now();
        pending.push_back(msg(1, 8));
        outlet.push(&mut pending).unwrap();
        let since = busy_since(&outlet).expect("a second delivery, nothing taken");
        assert!(
            since <= first,
            "since the first delivery it has not touched"
        );
        pending.push_back(msg(2, 8));
        outlet.push(&mut pending).unwrap();
        assert_eq!(busy_since(&outlet), Some(since));
        let Outlet::Events(p) = &mut outlet else {
            unreachable!()
        };
        p.moderating();
        assert_eq!(
            busy_since(&outlet),
            None,
            "a wait without the socket needs a delivery since the last one"
        );
        pending.push_back(msg(9, 8));
        outlet.push(&mut pending).unwrap();
        assert_eq!(busy_since(&outlet), Some(since), "still since the first");

        rx.try_recv().unwrap();
        assert_eq!(busy_since(&outlet), None, "it took one");
        pending.push_back(msg(3, 8));
        outlet.push(&mut pending).unwrap();
        assert_eq!(busy_since(&outlet), None, "one delivery since its take");
        pending.push_back(msg(4, 8));
        outlet.push(&mut pending).unwrap();
        assert!(busy_since(&outlet).is_some_and(|s| s >= first));

        while rx.try_recv().is_ok() {}
        assert_eq!(busy_since(&outlet), None, "nothing waits");
    }

    #[test]
    fn a_pull_channel_of_one_event_is_high_when_full_and_low_when_empty() {
        let (mut outlet, rx) = pull(1);
        let mut pending: VecDeque<Event> = (0..2).map(|i| msg(i, 8)).collect();
        outlet.push(&mut pending).unwrap();
        assert_eq!(level(&mut outlet), Level::High);
        rx.try_recv().unwrap();
        assert_eq!(level(&mut outlet), Level::Low, "else the naps only grow");
    }

    #[test]
    fn the_pull_channel_shuts_at_two_mebibytes_of_payload_and_opens_as_it_is_taken() {
        let (mut outlet, rx) = pull(64);
        let mut pending: VecDeque<Event> = (0..4).map(|i| msg(i, 1200 << 10)).collect();
        pending.push_front(msg(9, 8));
        outlet.push(&mut pending).unwrap();
        assert_eq!(rx.len(), 3, "the small one and two of 1,200 KiB went over");
        assert_eq!(pending.len(), 2);
        assert!(is_held(&mut outlet) && outlet.crowded());
        assert_eq!(first_byte(&rx.try_recv().unwrap()), 9);
        assert!(
            is_held(&mut outlet),
            "taking a small one frees too few bytes"
        );
        assert_eq!(first_byte(&rx.try_recv().unwrap()), 0);
        assert!(!is_held(&mut outlet));
        assert!(outlet.crowded(), "1,200 KiB is more than half of the limit");
        assert_eq!(first_byte(&rx.try_recv().unwrap()), 1);
        assert!(!outlet.crowded());
        outlet.push(&mut pending).unwrap();
        assert!(pending.is_empty());
        let order: Vec<u8> = rx.try_iter().map(|e| first_byte(&e)).collect();
        assert_eq!(order, [2, 3]);
    }

    #[test]
    fn the_pull_channel_counts_the_bytes_of_small_messages_too() {
        let (mut outlet, rx) = pull(1 << 20);
        let mut pending: VecDeque<Event> = (0..6000).map(|i| msg(i as u8, 500)).collect();
        outlet.push(&mut pending).unwrap();
        // 4,195 messages of 500 bytes reach 2 MiB.
        assert_eq!(rx.len(), BATCH_BYTES.div_ceil(500));
        assert!(is_held(&mut outlet));
        // Taken in part, counted within a mark (64 KiB) of the truth...
        let half = rx.len() / 2;
        rx.try_iter().take(half).for_each(drop);
        assert!(!is_held(&mut outlet));
        let Outlet::Events(p) = &mut outlet else {
            unreachable!()
        };
        let (events, bytes) = p.waiting();
        let exact = events * 500;
        assert!(
            bytes >= exact && bytes <= exact + MARK_EVERY as usize + 500,
            "{bytes} for {exact}"
        );
        // ... and exactly none once all is taken.
        rx.try_iter().for_each(drop);
        assert_eq!(p.waiting(), (0, 0));
    }

    #[test]
    fn a_dropped_receiver_empties_the_pull_channel_and_the_next_push_finds_it_gone() {
        let (mut outlet, rx) = pull(4);
        let mut pending: VecDeque<Event> = (0..6).map(|i| msg(i, 8)).collect();
        outlet.push(&mut pending).unwrap();
        assert!(is_held(&mut outlet));
        drop(rx);
        assert!(
            !is_held(&mut outlet),
            "crossbeam discards what waited when the receiver went"
        );
        match outlet.push(&mut pending) {
            Err(events) => assert_eq!(events.len(), 2, "the two that were pending"),
            Ok(_) => panic!("the receiver is gone"),
        }
        let (commands_tx, commands) = crossbeam_channel::unbounded();
        drop(commands_tx);
        pending.push_back(Event::Open);
        assert!(matches!(
            outlet.push_wait(&mut pending, &commands, None),
            Waited::Gone(ref e) if e.len() == 1
        ));
    }

    #[test]
    fn the_last_events_go_over_whatever_the_limit() {
        let (mut outlet, rx) = pull(2);
        let (_commands_tx, commands) = crossbeam_channel::unbounded();
        let mut pending: VecDeque<Event> = (0..5).map(|i| msg(i, 8)).collect();
        assert!(matches!(
            outlet.push_wait(&mut pending, &commands, None),
            Waited::Sent
        ));
        let order: Vec<u8> = rx.try_iter().map(|e| first_byte(&e)).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn batches_go_over_in_order_and_wait_when_one_is_queued() {
        let (mut outlet, end) = batches(3, BATCH_BYTES);
        let mut pending: VecDeque<Event> = (0..3).map(|i| msg(i, 8)).collect();
        outlet.push(&mut pending).unwrap();
        assert!(pending.is_empty());
        assert!(outlet.crowded());
        pending.extend((3..5).map(|i| msg(i, 8)));
        outlet.push(&mut pending).unwrap();
        assert_eq!(pending.len(), 2, "a second batch went into a full queue");
        let first = end.rx.try_recv().unwrap();
        assert_eq!(first.iter().map(first_byte).collect::<Vec<_>>(), [0, 1, 2]);
        end.recycle(first);
        assert!(outlet.is_empty());
        outlet.push(&mut pending).unwrap();
        assert!(pending.is_empty());
        let second = end.rx.try_recv().unwrap();
        assert_eq!(second.iter().map(first_byte).collect::<Vec<_>>(), [3, 4]);
        assert!(
            second.capacity() >= 3,
            "the emptied vector came back for reuse"
        );
    }

    #[test]
    fn a_consumer_looks_on_while_the_io_thread_is_awake_for_a_bounded_while_only() {
        let mut since = None;
        assert!(!super::look_on(false, &mut since), "asleep: block at once");
        assert!(super::look_on(true, &mut since), "awake: look on");
        let started = since.expect("the look's start");
        // Awake all along: the look ends once its time is up.
        while super::look_on(true, &mut since) {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a look without end"
            );
        }
        assert!(started.elapsed() >= super::AWAKE_LOOK);
    }

    #[test]
    fn the_consumer_notes_each_batch_size_and_reports_the_end() {
        let (mut outlet, end) = batches(512, BATCH_BYTES);
        assert!(
            end.look(None).is_none(),
            "nothing waiting: the caller blocks"
        );
        let mut pending: VecDeque<Event> = (0..100).map(|i| msg(i, 8)).collect();
        outlet.push(&mut pending).unwrap();
        let batch = end.next().expect("a batch");
        assert_eq!(batch.len(), 100);
        assert!(
            end.last.load(Relaxed) >= FLOOD,
            "a flood: the next wait looks longer"
        );
        end.recycle(batch);
        pending.push_back(msg(7, 8));
        outlet.push(&mut pending).unwrap();
        let one = EventBatches(end);
        assert_eq!(one.try_recv().map(|b| b.len()), Ok(1));
        assert_eq!(one.0.last.load(Relaxed), 1);
        let waited = one.recv_timeout(Duration::from_millis(1)).map(|b| b.len());
        assert_eq!(waited, Err(RecvTimeoutError::Timeout));
        drop(outlet);
        let end = one.recv().map(|b| b.len());
        assert_eq!(end, Err(RecvError), "the I/O thread is gone");
    }

    #[test]
    fn a_batch_that_times_out_goes_back_in_front_in_order() {
        let (mut outlet, end) = batches(2, BATCH_BYTES);
        let (_commands_tx, commands) = crossbeam_channel::unbounded();
        let mut pending: VecDeque<Event> = (0..2).map(|i| msg(i, 8)).collect();
        outlet.push(&mut pending).unwrap();
        pending.extend((2..4).map(|i| msg(i, 8)));
        let waited = outlet.push_wait(&mut pending, &commands, Some(Instant::now()));
        assert!(matches!(waited, Waited::TimedOut));
        assert_eq!(pending.iter().map(first_byte).collect::<Vec<_>>(), [2, 3]);
        drop(end);
        match outlet.push_wait(&mut pending, &commands, None) {
            Waited::Gone(events) => assert_eq!(events.len(), 2),
            _ => panic!("the callback thread is gone"),
        }
        assert!(pending.is_empty());
    }
}
