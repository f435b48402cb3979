//! Threads: concurrent senders, where callbacks run, handler state, no thread left behind,
//! no CPU while idle.
//!
//! Tests that count or measure the crate's threads take `exclusive()`: every other test
//! takes `shared()`, so no other connection's threads start or stop while they look.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel;
use nwebsocket::{CloseEvent, Event, Handler, Message, ReadyState, WebSocket, WebSocketRef};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

use crate::support::*;

#[test]
fn eight_threads_sending_at_once_keep_per_thread_order() {
    let _g = shared();
    const THREADS: usize = 8;
    const EACH: usize = 2000;
    let server = server(|mut ws| {
        let (messages, close) = read_until_close(&mut ws);
        assert!(close.is_some(), "server: Close after the messages");
        let mut next = [0usize; THREADS];
        for m in &messages {
            let (t, seq) = match m {
                tungstenite::Message::Text(s) => {
                    let (t, seq) = s.split_once(':').expect("t:seq");
                    (t.parse::<usize>().unwrap(), seq.parse::<usize>().unwrap())
                }
                tungstenite::Message::Binary(b) => (
                    b[0] as usize,
                    u32::from_be_bytes(b[1..5].try_into().unwrap()) as usize,
                ),
                other => panic!("server: {other:?}"),
            };
            assert_eq!(seq, next[t], "thread {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [EACH; THREADS]);
        messages.len()
    });
    let ws = WebSocket::connect(&server.url(), ()).expect("connect");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            // Half the threads use owning clones, half non-owning refs.
            let owned = ws.clone();
            let weak = ws.downgrade();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                for seq in 0..EACH {
                    let r = if t % 2 == 0 {
                        owned.send(format!("{t}:{seq}"))
                    } else {
                        let mut b = vec![t as u8];
                        b.extend((seq as u32).to_be_bytes());
                        weak.send(b)
                    };
                    r.expect("send");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    ws.close();
    let c = ws.wait_closed_timeout(WAIT).expect("closed");
    assert!(c.was_clean, "{c:?}");
    drop(ws);
    assert_eq!(server.join(), THREADS * EACH);
}

/// `close` from one sending thread while three others send as fast as they can: every
/// send that returned `Ok` reaches the server before our Close, and none after it is
/// accepted. Repeated, with the close at a different point each time: a send that saw
/// OPEN and was appended after our Close was queued would be dropped, and counted here.
#[test]
fn close_racing_senders_loses_no_accepted_message() {
    let _g = shared();
    const THREADS: usize = 4;
    for round in 0..10 {
        let server = server(|mut ws| {
            let (messages, close) = read_until_close(&mut ws);
            let mut per_thread = [0usize; THREADS];
            for m in &messages {
                let text = m.to_text().expect("server: text");
                let (t, seq) = text.split_once(':').expect("t:seq");
                let t: usize = t.parse().unwrap();
                assert_eq!(seq.parse::<usize>().unwrap(), per_thread[t], "thread {t}");
                per_thread[t] += 1;
            }
            (per_thread, close.is_some())
        });
        let (ws, _events) = WebSocket::connect_pull(&server.url()).expect("connect");
        let barrier = Arc::new(std::sync::Barrier::new(THREADS + 1));
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let ws = ws.downgrade();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait(); // `connect_pull` returned OPEN
                    let mut accepted = 0;
                    while ws.send(format!("{t}:{accepted}")).is_ok() {
                        accepted += 1;
                        if t == 0 && accepted == 1 + 200 * round {
                            ws.close(); // a different point in each round
                        }
                    }
                    assert!(ws.ready_state() >= ReadyState::Closing);
                    accepted
                })
            })
            .collect();
        barrier.wait();
        let c = ws.wait_closed_timeout(WAIT).expect("closed");
        assert!(c.was_clean, "{c:?}");
        let accepted: Vec<usize> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        drop(ws);
        let (received, got_close) = server.join();
        assert!(got_close, "round {round}: the server saw our Close");
        assert_eq!(
            received.to_vec(),
            accepted,
            "round {round}: accepted = received"
        );
    }
}

/// Callback style runs the handler on `nwebsocket-cb`; pull style's `dispatch_pending`
/// runs it on the caller's thread, with a handler that is not `Send`.
#[test]
fn dispatch_pending_runs_the_handler_on_the_callers_thread() {
    #[derive(Default)]
    struct Local {
        // Rc: not Send, which pull style allows.
        seen: Rc<RefCell<Vec<(String, thread::ThreadId)>>>,
    }
    impl Handler for Local {
        fn onopen(&mut self, _ws: &WebSocketRef) {
            self.seen
                .borrow_mut()
                .push(("open".into(), thread::current().id()));
        }
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            let text = msg.as_text().unwrap_or("?").to_owned();
            self.seen.borrow_mut().push((text, thread::current().id()));
        }
        fn onclose(&mut self, _ws: &WebSocketRef, _event: CloseEvent) {
            self.seen
                .borrow_mut()
                .push(("close".into(), thread::current().id()));
        }
    }
    let _g = shared();
    let server = server(|mut ws| {
        for i in 0..10 {
            ws.send(tungstenite::Message::text(format!("m{i}")))
                .unwrap();
        }
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
        read_until_close(&mut ws);
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let mut handler = Local::default();
    let seen = handler.seen.clone();
    let mut total = 0;
    let got_all = eventually(WAIT, || {
        total += ws.dispatch_pending(&events, &mut handler);
        seen.borrow().last().is_some_and(|(s, _)| s == "close")
    });
    assert!(got_all, "{:?}", seen.borrow());
    assert_eq!(total, 12);
    let me = thread::current().id();
    let seen = seen.borrow();
    let names: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    let mut expected = vec!["open".to_owned()];
    expected.extend((0..10).map(|i| format!("m{i}")));
    expected.push("close".into());
    assert_eq!(names, expected);
    assert!(
        seen.iter().all(|(_, id)| *id == me),
        "all on the caller's thread"
    );
    assert_eq!(
        ws.dispatch_pending(&events, &mut handler),
        0,
        "nothing after Close"
    );
    drop(ws);
    server.join();
}

/// `handler()` gives the caller's thread the handler's state, both ways.
#[test]
fn handler_state_is_reachable_through_handler() {
    #[derive(Default)]
    struct Chat {
        messages: Vec<String>,
        prefix: String,
    }
    impl Handler for Chat {
        fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
            let text = msg.as_text().unwrap_or_default().to_owned();
            if text == "reply please" {
                ws.send(format!("{}reply", self.prefix)).unwrap();
            }
            self.messages.push(text);
        }
    }
    let _g = shared();
    let server = server(|mut ws| {
        for i in 0..50 {
            ws.send(tungstenite::Message::text(format!("chat {i}")))
                .unwrap();
        }
        // Wait for the test to change the handler's state, then ask for a reply.
        let go = ws.read().expect("server: go");
        assert_eq!(go, tungstenite::Message::text("go"));
        ws.send(tungstenite::Message::text("reply please")).unwrap();
        let reply = ws.read().expect("server: reply");
        read_until_close(&mut ws);
        reply
    });
    let ws = WebSocket::connect(&server.url(), Chat::default()).expect("connect");
    assert!(
        eventually(WAIT, || ws.handler().messages.len() == 50),
        "{}",
        ws.handler().messages.len()
    );
    {
        let h = ws.handler();
        let want: Vec<String> = (0..50).map(|i| format!("chat {i}")).collect();
        assert_eq!(h.messages, want);
    }
    ws.handler().prefix = "changed by the caller: ".into();
    ws.send("go").unwrap();
    // onmessage sends the reply before it records "reply please".
    assert!(eventually(WAIT, || ws.handler().messages.len() == 51));
    assert_eq!(ws.handler().messages[50], "reply please");
    ws.close();
    let c = ws.wait_closed_timeout(WAIT).expect("closed");
    assert!(c.was_clean, "{c:?}");
    drop(ws);
    assert_eq!(
        server.join(),
        tungstenite::Message::text("changed by the caller: reply")
    );
}

/// The callback thread keeps the handler locked across a batch of events, but lets go
/// between two callbacks when the caller's thread asks for it: during a flood of slow
/// callbacks `handler()` waits about one callback, not a batch of them.
///
/// The wait is counted in callbacks, not timed: how many callbacks ran between asking for
/// the handler and getting it. A batch here is up to 512 callbacks; handing over between
/// two of them lets one finish, and a few more run when the asking thread is descheduled
/// just before it asks. (This was a median wait under 2 ms, which a loaded machine, with
/// the callback thread preempted in the middle of a callback, can exceed without anything
/// being wrong; a count does not change with the load.)
#[test]
fn handler_is_handed_over_between_callbacks_during_a_flood() {
    // 4000 × 50 µs: 0.2 s of callbacks, enough for dozens of looks on a loaded machine.
    const N: usize = 4000;
    const WORK: Duration = Duration::from_micros(50);
    struct Slow {
        count: usize,
        ran: Arc<AtomicUsize>,
    }
    impl Handler for Slow {
        fn onmessage(&mut self, _ws: &WebSocketRef, _msg: Message) {
            let start = Instant::now();
            while start.elapsed() < WORK {
                std::hint::spin_loop();
            }
            self.count += 1;
            self.ran.store(self.count, Ordering::SeqCst);
        }
    }
    let _g = shared();
    let server = server(|mut ws| {
        for i in 0..N {
            ws.send(tungstenite::Message::binary(vec![i as u8; 64]))
                .unwrap();
        }
        read_until_close(&mut ws);
    });
    let ran = Arc::new(AtomicUsize::new(0));
    let ws = WebSocket::connect(
        &server.url(),
        Slow {
            count: 0,
            ran: Arc::clone(&ran),
        },
    )
    .expect("connect");
    let deadline = Instant::now() + WAIT;
    // Callbacks that ran while the caller waited for the handler, per look.
    let mut waits = Vec::new();
    loop {
        let asked = ran.load(Ordering::SeqCst);
        let count = ws.handler().count;
        if count == N {
            break;
        }
        if count > 0 {
            waits.push(count - asked);
        }
        assert!(Instant::now() < deadline, "{count} of {N} callbacks ran");
        thread::yield_now();
    }
    assert!(
        waits.len() >= 20,
        "only {} looks during the flood",
        waits.len()
    );
    waits.sort_unstable();
    let median = waits[waits.len() / 2];
    // Holding the handler for whole batches would make the median wait hundreds of
    // callbacks (half a batch of up to 512); 16 is 32 times less.
    assert!(
        median <= 16,
        "median wait {median} callbacks over {} looks: {waits:?}",
        waits.len()
    );
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).is_some_and(|c| c.was_clean));
    drop(ws);
    server.join();
}

/// A handler whose `onmessage` blocks on the message "slow" until released (bounded by
/// `WAIT`), saying when it has started.
struct Slow {
    entered: crossbeam_channel::Sender<()>,
    release: crossbeam_channel::Receiver<()>,
}

impl Handler for Slow {
    fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
        if msg.as_text() == Some("slow") {
            self.entered.send(()).unwrap();
            let _ = self.release.recv_timeout(WAIT);
        }
    }
}

/// A callback that blocks does not stall the I/O thread: pings are still answered.
#[test]
fn a_blocked_callback_does_not_stall_pongs() {
    let _g = shared();
    let (ping_tx, ping_rx) = crossbeam_channel::bounded::<()>(1);
    let (pong_tx, pong_rx) = crossbeam_channel::bounded(1);
    let server = server(move |mut ws| {
        ws.send(tungstenite::Message::text("slow")).unwrap();
        ping_rx
            .recv_timeout(SOCKET_TIMEOUT)
            .expect("server: ping now");
        ws.send(tungstenite::Message::Ping(b"still there?".to_vec().into()))
            .unwrap();
        let pong = ws.read().expect("server: pong");
        pong_tx.send(pong).unwrap();
        read_until_close(&mut ws);
    });
    let (entered_tx, entered_rx) = crossbeam_channel::bounded(1);
    let (release_tx, release_rx) = crossbeam_channel::bounded(1);
    let ws = WebSocket::connect(
        &server.url(),
        Slow {
            entered: entered_tx,
            release: release_rx,
        },
    )
    .expect("connect");
    entered_rx.recv_timeout(WAIT).expect("the callback started");
    ping_tx.send(()).unwrap();
    // The callback stays blocked until the server has its pong.
    let pong = pong_rx.recv_timeout(WAIT);
    release_tx.send(()).unwrap();
    let pong = pong.expect("no pong while a callback was blocked");
    assert!(
        matches!(&pong, tungstenite::Message::Pong(p) if &p[..] == b"still there?"),
        "{pong:?}"
    );
    ws.close();
    drop(ws);
    server.join();
}

/// A callback that blocks while a batch waits for it and more messages come (far fewer than
/// the incoming queue): the socket is still read, and pings answered. (Until 2026-12-07 the
/// I/O thread stopped reading once one batch waited and a single event more was pending,
/// so a slow callback stalled pongs with a nearly empty queue.)
#[test]
fn a_blocked_callback_with_a_batch_waiting_does_not_stall_pongs() {
    let _g = shared();
    let (ping_tx, ping_rx) = crossbeam_channel::bounded::<()>(1);
    let (pong_tx, pong_rx) = crossbeam_channel::bounded(1);
    let server = server(move |mut ws| {
        ws.send(tungstenite::Message::text("slow")).unwrap();
        ping_rx.recv_timeout(SOCKET_TIMEOUT).expect("server: go on");
        // A batch for the blocked callback thread, then an event more, each read on its
        // own (the pauses only let the I/O thread read them apart), then the ping.
        for text in ["waits in a batch", "pending"] {
            ws.send(tungstenite::Message::text(text)).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        ws.send(tungstenite::Message::Ping(b"still there?".to_vec().into()))
            .unwrap();
        let started = Instant::now();
        let pong = ws.read().expect("server: pong");
        pong_tx.send((pong, started.elapsed())).unwrap();
        read_until_close(&mut ws);
    });
    let (entered_tx, entered_rx) = crossbeam_channel::bounded(1);
    let (release_tx, release_rx) = crossbeam_channel::bounded(1);
    let ws = WebSocket::connect(
        &server.url(),
        Slow {
            entered: entered_tx,
            release: release_rx,
        },
    )
    .expect("connect");
    entered_rx.recv_timeout(WAIT).expect("the callback started");
    ping_tx.send(()).unwrap();
    // The callback stays blocked until the server has its pong (or gives up waiting).
    let pong = pong_rx.recv_timeout(Duration::from_secs(3));
    release_tx.send(()).unwrap();
    let (pong, after) = pong.expect("no pong while a callback was blocked");
    assert!(
        matches!(&pong, tungstenite::Message::Pong(p) if &p[..] == b"still there?"),
        "{pong:?}"
    );
    assert!(
        after < Duration::from_secs(2),
        "the pong came after {after:?}"
    );
    ws.close();
    drop(ws);
    server.join();
}

/// Dropping every handle stops and joins the connection's threads (callback style: I/O and
/// callback thread; pull style: I/O thread), for open and for failed connections.
#[test]
fn dropping_all_handles_leaves_no_thread_behind() {
    let _g = exclusive();
    let gone = |ours: &[(u32, String)]| {
        eventually(Duration::from_secs(5), || {
            ours.iter().all(|(tid, _)| !thread_alive(*tid))
        })
    };

    // Callback style, handles on two threads.
    let server = echo_server();
    let before = crate_threads();
    let ws = WebSocket::connect(&server.url(), ()).expect("connect");
    let ours = new_crate_threads(&before, 2);
    let mut names: Vec<&str> = ours.iter().map(|(_, n)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["nwebsocket-cb", "nwebsocket-io"], "{ours:?}");
    let other = ws.clone();
    let weak = ws.downgrade();
    thread::spawn(move || drop(other)).join().unwrap();
    assert!(
        ours.iter().all(|(tid, _)| thread_alive(*tid)),
        "a handle remains"
    );
    drop(ws);
    assert!(gone(&ours), "threads left behind: {:?}", crate_threads());
    assert_eq!(weak.ready_state(), ReadyState::Closed);
    drop(weak);
    server.join();

    // Pull style, event receiver kept after the handle is dropped.
    let server = echo_server();
    let before = crate_threads();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let ours = new_crate_threads(&before, 1);
    assert_eq!(ours[0].1, "nwebsocket-io");
    drop(ws);
    assert!(gone(&ours), "threads left behind: {:?}", crate_threads());
    let evs = leftover_events(&events);
    assert!(matches!(evs.last(), Some(Event::Close(_))), "{evs:?}");
    server.join();

    // A server that never answers the Close: the drop waits at most about the close timeout.
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let server = crate::support::server(move |ws| {
        let _ = done_rx.recv_timeout(SOCKET_TIMEOUT);
        drop(ws);
    });
    let before = crate_threads();
    let ws = WebSocket::builder()
        .close_timeout(Duration::from_millis(300))
        .connect(&server.url(), ())
        .expect("connect");
    let ours = new_crate_threads(&before, 2);
    let start = std::time::Instant::now();
    drop(ws);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "drop took {:?}",
        start.elapsed()
    );
    assert!(gone(&ours), "threads left behind: {:?}", crate_threads());
    done_tx.send(()).unwrap();
    server.join();

    // A failed connection.
    let before = crate_threads();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    drop(listener);
    assert!(WebSocket::connect(&url, ()).is_err());
    let left = || {
        crate_threads()
            .difference(&before)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(5), || left().is_empty()),
        "threads left behind: {:?}",
        left()
    );
    // A synchronous error starts no thread at all.
    assert!(WebSocket::open_pull("ftp://127.0.0.1/").is_err());
    assert!(WebSocket::builder()
        .subprotocol("")
        .open("ws://127.0.0.1:1/", ())
        .is_err());
    assert!(left().is_empty(), "{:?}", left());
}

/// Dropping the last handle joins the callback thread within its bound even while a slow
/// handler has thousands of messages queued: once the close timeout has passed since the
/// drop, the rest of the messages are not handed to it (a warning says how many), only
/// the end. (Until 2026-12-07 the drop gave up after the close timeout and a second, and
/// left the callback thread running `onmessage` for seconds more.)
#[test]
fn dropping_the_last_handle_with_a_slow_handler_behind_a_flood_joins_its_threads() {
    let _g = exclusive();
    struct Slow {
        messages: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }
    impl Handler for Slow {
        fn onmessage(&mut self, _ws: &WebSocketRef, _msg: Message) {
            self.messages.fetch_add(1, Ordering::SeqCst);
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(2) {} // busy, not blocked
        }
        fn onclose(&mut self, _ws: &WebSocketRef, _event: CloseEvent) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (server, _blocked) = flooding_server(5_000, 64);
    let before = crate_threads();
    let (messages, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ws = WebSocket::builder()
        .close_timeout(Duration::from_millis(300))
        .connect(
            &server.url(),
            Slow {
                messages: Arc::clone(&messages),
                closed: Arc::clone(&closed),
            },
        )
        .expect("connect");
    let ours = new_crate_threads(&before, 2);
    assert!(eventually(WAIT, || messages.load(Ordering::SeqCst) > 0));
    let started = Instant::now();
    drop(ws);
    let took = started.elapsed();
    let alive = alive_after_join(&ours);
    assert!(
        alive.is_empty(),
        "alive after the drop returned ({took:?}): {alive:?}"
    );
    assert!(took < Duration::from_millis(1300), "the drop took {took:?}");
    assert!(messages.load(Ordering::SeqCst) < 5_000);
    assert_eq!(closed.load(Ordering::SeqCst), 1, "onclose once");
    let _ = server.join();
}

/// An idle connection (no ping interval) does not wake up: its threads use no CPU and
/// are not scheduled at all over 2 s.
#[test]
fn an_idle_connection_costs_no_cpu() {
    let _g = exclusive();
    let server = server(|mut ws| read_until_close(&mut ws));
    let before = crate_threads();
    let ws = WebSocket::connect(&server.url(), ()).expect("connect");
    // One round trip first, so start-up work is over.
    ws.send("warm up").unwrap();
    assert!(eventually(WAIT, || ws.buffered_amount() == 0));
    let ours = new_crate_threads(&before, 2);
    // Asleep before the window starts (this was a fixed 100 ms, which a loaded machine
    // can make too short for the start-up callbacks to have run).
    let tids: Vec<u32> = ours.iter().map(|(tid, _)| *tid).collect();
    assert!(
        settled(&tids, Duration::from_millis(100)),
        "the threads never went to sleep"
    );
    let start: Vec<(u64, u64)> = ours
        .iter()
        .map(|(tid, _)| (thread_cpu_ticks(*tid), thread_switches(*tid)))
        .collect();
    thread::sleep(Duration::from_secs(2));
    for ((tid, name), (ticks0, switches0)) in ours.iter().zip(start) {
        let ticks = thread_cpu_ticks(*tid) - ticks0;
        let switches = thread_switches(*tid) - switches0;
        // Ticks are 10 ms: 2 ticks is at most 1% of the 2 s.
        assert!(ticks <= 2, "{name} used {ticks} ticks of CPU while idle");
        assert!(switches <= 1, "{name} woke up {switches} times while idle");
    }
    assert_eq!(ws.ready_state(), ReadyState::Open);
    ws.close();
    drop(ws);
    server.join();
}

/// A final binary frame carrying `payload`, unmasked, with a 64-bit length.
fn binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x82, 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A large message that stops arriving halfway (the fast path's own buffer holds half a
/// frame): the I/O thread sleeps until the rest comes, and the message arrives whole.
#[test]
fn a_large_message_stalled_halfway_lets_the_io_thread_sleep() {
    let _g = exclusive();
    let payload = flood_payload(7, 1 << 20);
    let frame = binary_frame(&payload);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    let (half_tx, half_rx) = crossbeam_channel::bounded::<()>(1);
    let server = server(move |mut ws| {
        let half = frame.len() / 2;
        ws.get_mut().write_all(&frame[..half]).unwrap();
        until_acked(ws.get_ref());
        half_tx.send(()).unwrap();
        go_rx.recv_timeout(SOCKET_TIMEOUT).expect("server: go");
        ws.get_mut().write_all(&frame[half..]).unwrap();
        read_until_close(&mut ws)
    });
    let before = crate_threads();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let (tid, name) = new_crate_threads(&before, 1).remove(0);
    // The first half is all in the client's socket (a server thread preempted in the
    // middle of writing it would otherwise wake the I/O thread inside the window)...
    half_rx
        .recv_timeout(WAIT)
        .expect("the first half reached the client");
    // ... and read (until the thread has slept for 100 ms in a row, rather than a fixed
    // 100 ms, which a loaded machine can make too short), then a window in which nothing
    // arrives.
    assert!(
        settled(&[tid], Duration::from_millis(100)),
        "{name} never went to sleep on the half frame"
    );
    let (ticks0, switches0) = (thread_cpu_ticks(tid), thread_switches(tid));
    thread::sleep(Duration::from_secs(1));
    let ticks = thread_cpu_ticks(tid) - ticks0;
    let switches = thread_switches(tid) - switches0;
    // Ticks are 10 ms: 2 ticks is at most 2 % of the second.
    assert!(
        ticks <= 2,
        "{name} used {ticks} ticks of CPU while the frame stalled"
    );
    assert!(
        switches <= 1,
        "{name} woke up {switches} times while the frame stalled"
    );
    go_tx.send(()).unwrap();
    match next_event(&events) {
        Event::Message(m) => assert!(m.as_bytes() == payload.as_slice(), "payload differs"),
        other => panic!("expected the message, got {other:?}"),
    }
    close_cleanly(&ws, &events);
    server.join();
}

/// While the rest of a large frame is awaited, the I/O thread raises the socket's
/// low-water mark so that it sleeps until a good part of it is there; once the frame is
/// whole the mark is back at one byte, so a small message that comes alone afterwards
/// still wakes it at once.
#[test]
fn a_small_message_after_a_stalled_large_one_arrives_at_once() {
    // Exclusive: the I/O thread is watched going to sleep on the half frame.
    let _g = exclusive();
    let payload = flood_payload(3, 1 << 20);
    let frame = binary_frame(&payload);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(2);
    let (half_tx, half_rx) = crossbeam_channel::bounded::<()>(1);
    let server = server(move |mut ws| {
        let half = frame.len() / 2;
        ws.get_mut().write_all(&frame[..half]).unwrap();
        until_acked(ws.get_ref());
        half_tx.send(()).unwrap();
        go_rx.recv_timeout(SOCKET_TIMEOUT).expect("server: go");
        ws.get_mut().write_all(&frame[half..]).unwrap();
        go_rx.recv_timeout(SOCKET_TIMEOUT).expect("server: go");
        ws.send(tungstenite::Message::text("after")).unwrap();
        read_until_close(&mut ws)
    });
    let before = crate_threads();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let (tid, name) = new_crate_threads(&before, 1).remove(0);
    // The first half read and the rest waited for, asleep (this was a fixed 100 ms, which
    // a loaded machine can make too short: the test then no longer raised the mark).
    half_rx
        .recv_timeout(WAIT)
        .expect("the first half reached the client");
    assert!(
        settled(&[tid], Duration::from_millis(100)),
        "{name} never went to sleep on the half frame"
    );
    go_tx.send(()).unwrap();
    match next_event(&events) {
        Event::Message(m) => assert!(m.as_bytes() == payload.as_slice(), "payload differs"),
        other => panic!("expected the large message, got {other:?}"),
    }
    go_tx.send(()).unwrap();
    match events.recv_timeout(Duration::from_secs(2)) {
        Ok(Event::Message(m)) => assert_eq!(m.as_text(), Some("after")),
        other => panic!("expected the small message at once, got {other:?}"),
    }
    close_cleanly(&ws, &events);
    server.join();
}

/// The buffers of large messages are kept for reuse for a second after the last one
/// (see `recycle` in the crate), then dropped: the I/O thread wakes for that once, and
/// otherwise sleeps.
#[test]
fn after_large_messages_stop_the_io_thread_sleeps() {
    let _g = exclusive();
    let server = server(move |mut ws| {
        for i in 0..4 {
            ws.send(tungstenite::Message::binary(flood_payload(i, 1 << 20)))
                .unwrap();
        }
        read_until_close(&mut ws)
    });
    let before = crate_threads();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let (tid, name) = new_crate_threads(&before, 1).remove(0);
    for i in 0..4 {
        match next_event(&events) {
            Event::Message(m) => assert!(m.as_bytes() == flood_payload(i, 1 << 20)),
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    let (ticks0, switches0) = (thread_cpu_ticks(tid), thread_switches(tid));
    thread::sleep(Duration::from_secs(2));
    let ticks = thread_cpu_ticks(tid) - ticks0;
    let switches = thread_switches(tid) - switches0;
    assert!(
        ticks <= 2,
        "{name} used {ticks} ticks of CPU after the large messages"
    );
    assert!(
        switches <= 3,
        "{name} woke up {switches} times after the large messages"
    );
    close_cleanly(&ws, &events);
    server.join();
}

/// The last handle dropped inside a callback (the threads cannot join themselves): the
/// connection still closes with 1001 and both threads end on their own.
#[test]
fn dropping_the_last_handle_inside_a_callback_ends_both_threads() {
    type Slot = std::sync::Arc<std::sync::Mutex<Option<WebSocket<Dropper>>>>;
    struct Dropper {
        slot: Slot,
        closed: crossbeam_channel::Sender<CloseEvent>,
    }
    impl Handler for Dropper {
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            if msg.as_text() == Some("drop me") {
                let last = self.slot.lock().unwrap().take();
                drop(last);
            }
        }
        fn onclose(&mut self, _ws: &WebSocketRef, event: CloseEvent) {
            let _ = self.closed.send(event);
        }
    }
    let _g = exclusive();
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    let server = server(move |mut ws| {
        go_rx.recv_timeout(SOCKET_TIMEOUT).expect("server: go");
        ws.send(tungstenite::Message::text("drop me")).unwrap();
        read_until_close(&mut ws).1.map(|f| f.code)
    });
    let slot: Slot = Default::default();
    let (closed_tx, closed_rx) = crossbeam_channel::unbounded();
    let before = crate_threads();
    let ws = WebSocket::open(
        &server.url(),
        Dropper {
            slot: slot.clone(),
            closed: closed_tx,
        },
    )
    .expect("open");
    let ours = new_crate_threads(&before, 2);
    *slot.lock().unwrap() = Some(ws);
    go_tx.send(()).unwrap();
    let c = closed_rx.recv_timeout(WAIT).expect("onclose ran");
    assert_eq!((c.code, c.was_clean), (1001, true));
    assert_eq!(server.join(), Some(CloseCode::Away));
    assert!(
        eventually(WAIT, || ours.iter().all(|(tid, _)| !thread_alive(*tid))),
        "threads left behind: {:?}",
        crate_threads()
    );
}

/// `drop` of the last handle returns only once the threads are joined: by then the
/// callback thread has dropped the handler, and the I/O thread its end of the event
/// channel. Checked at once, with no waiting.
#[test]
fn drop_returns_after_the_threads_are_joined() {
    struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Handler for Flag {}
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _g = shared();
    for _ in 0..3 {
        let server = echo_server();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ws = WebSocket::connect(&server.url(), Flag(dropped.clone())).expect("connect");
        ws.send("x").unwrap();
        drop(ws);
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "drop returned before the callback thread was joined"
        );
        server.join();

        let server = echo_server();
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        drop(ws);
        loop {
            match events.try_recv() {
                Ok(_) => continue,
                Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    panic!("drop returned before the I/O thread was joined")
                }
            }
        }
        server.join();
    }
}

/// A server rejects the handshake with a body it announces and never sends: dropping
/// the last handle (or `close`) while the I/O thread waits for that body ends the
/// connection at once, and the drop joins both threads. (Until 2026-12-07 that wait
/// slept in `poll` without the waker armed: the drop gave up joining after the close
/// timeout and a second, and the threads lived on until the handshake timeout, 30 s
/// here; `close` came to `onclose` only then too.)
#[test]
fn dropping_while_a_rejection_body_is_awaited_joins_the_threads_at_once() {
    let _g = exclusive();
    for close_first in [false, true] {
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        let (head_tx, head_rx) = crossbeam_channel::bounded::<()>(1);
        let server = raw_server(move |mut tcp| {
            let _ = read_http_head(&mut tcp);
            tcp.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100000\r\n\r\nthe start")
                .unwrap();
            head_tx.send(()).unwrap();
            let _ = done_rx.recv_timeout(SOCKET_TIMEOUT);
        });
        let before = crate_threads();
        let (rec, rx) = recorder();
        let ws = WebSocket::builder()
            .handshake_timeout(Duration::from_secs(30))
            .close_timeout(Duration::from_millis(300))
            .open(&server.url(), rec)
            .expect("open");
        let ours = new_crate_threads(&before, 2);
        head_rx.recv_timeout(WAIT).expect("the server answered");
        // Asleep (on the rest of the body), the head read.
        let tids: Vec<u32> = ours.iter().map(|(tid, _)| *tid).collect();
        assert!(settled(&tids, Duration::from_millis(100)), "never slept");
        assert_eq!(ws.ready_state(), ReadyState::Connecting);
        let started = Instant::now();
        if close_first {
            ws.close();
            let recs = recs_until_close(&rx);
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "onclose {took:?} after close: {recs:?}"
            );
            assert_failure_tail(&recs, |_| true);
        }
        drop(ws);
        let took = started.elapsed();
        let alive = alive_after_join(&ours);
        assert!(
            alive.is_empty(),
            "close first: {close_first}: alive after the drop returned ({took:?}): {alive:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "close first: {close_first}: the drop took {took:?}"
        );
        done_tx.send(()).unwrap();
        server.join();
    }
}

/// A consumer that computes for a while on every message, with the server sending faster:
/// the I/O thread waits for room in the event channel asleep. (It does give the CPU away
/// for up to 50 µs when the channel fills, hoping the consumer drains it; once that fails
/// it stops trying until the consumer shows it keeps up, or that would be 50 µs of
/// yielding for every message here, a quarter of the I/O thread's time.)
#[test]
fn the_io_thread_sleeps_while_a_slow_consumer_catches_up() {
    let _g = exclusive();
    const N: usize = 4000;
    const WORK: Duration = Duration::from_micros(200);
    let server = server(|mut ws| {
        for i in 0..N {
            ws.write(tungstenite::Message::binary(vec![i as u8; 64]))
                .unwrap();
        }
        ws.flush().unwrap();
        read_until_close(&mut ws);
    });
    let before = crate_threads();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let io = new_crate_threads(&before, 1)[0].0;
    let ticks0 = thread_cpu_ticks(io);
    let started = Instant::now();
    let mut received = 0;
    while received < N {
        match next_event(&events) {
            Event::Message(_) => {
                received += 1;
                let t = Instant::now();
                while t.elapsed() < WORK {
                    std::hint::spin_loop();
                }
            }
            Event::Open => {}
            other => panic!("{other:?}"),
        }
    }
    let wall = started.elapsed();
    let ticks = thread_cpu_ticks(io) - ticks0;
    // Ticks are 10 ms; the consumer computed for N × 200 µs = 0.8 s. Waking for each
    // free slot measured 8-9 %; yielding for 50 µs per message would be over 25 %.
    let share = ticks as f64 * 10.0 / wall.as_millis() as f64;
    assert!(
        share < 0.18,
        "the I/O thread used {ticks} ticks of CPU in {wall:?} ({:.0} %)",
        share * 100.0
    );
    ws.close();
    drop(ws);
    server.join();
}

/// A server that sends the texts "0" to "{n - 1}", one every 200 µs on a schedule, then
/// reads until the client closes. A message whose time came late (a sleep overshot, the
/// thread waited for a core) goes at once, so load does not stretch the sending. (It slept
/// 100 µs after each message, so the sending took as long as the load made it: with two
/// CPU burners beside, 574 and 691 switches against a bound of 1,500; and once the sending
/// of N messages takes N/2 ms, reading once a millisecond is as many wake-ups as the
/// bound, a correct crate failing.)
fn paced_server(n: usize) -> Server<()> {
    server(move |mut ws| {
        let start = Instant::now();
        for i in 0..n {
            let due = start + Duration::from_micros(200) * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait); // the pace, not a wait for anything
            }
            ws.send(tungstenite::Message::text(i.to_string())).unwrap();
        }
        read_until_close(&mut ws);
    })
}

/// Pull style, a caller that computes and takes its events between chunks (every 20 ms)
/// while the server sends a message every 200 µs: the I/O thread reads for it in
/// batches (once a millisecond at most, and at its takes), not once per message, and
/// every message still arrives, in order.
#[test]
fn a_busy_pull_caller_does_not_make_the_io_thread_wake_per_message() {
    let _g = exclusive();
    const N: usize = 3000;
    let server = paced_server(N);
    let before = crate_threads();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let io = new_crate_threads(&before, 1)[0].0;
    assert!(matches!(next_event(&events), Event::Open));
    let switches0 = thread_switches(io);
    let mut next = 0;
    let deadline = Instant::now() + WAIT;
    while next < N {
        assert!(Instant::now() < deadline, "{next} of {N} messages");
        // A chunk of computation, then whatever waits.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Message(m) => {
                    assert_eq!(m.as_text(), Some(next.to_string().as_str()));
                    next += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let switches = thread_switches(io) - switches0;
    // Over 0.6 s of sending (on a schedule: load does not stretch it): waking per message
    // is about N; reading once a millisecond at most is about 600, and the takes 30.
    assert!(
        switches < N as u64 / 2,
        "the I/O thread was switched {switches} times for {N} messages"
    );
    ws.close();
    drop(ws);
    server.join();
}

/// The same in batches (`connect_batches`, `dispatch_batches` between chunks): with one
/// batch untaken and room in the next, the I/O thread reads the socket on (for pongs and
/// the server's Close), but for a busy caller at most once a millisecond, not once per
/// message. (The first version of that reading, on 2026-12-07, woke per message: the
/// co-run benchmark's batches measured 13.8 µs of CPU a message against 2.0 before.)
#[test]
fn a_busy_batches_caller_does_not_make_the_io_thread_wake_per_message() {
    #[derive(Default)]
    struct Texts(Vec<String>);
    impl Handler for Texts {
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            self.0.push(msg.as_text().unwrap_or_default().to_owned());
        }
    }
    let _g = exclusive();
    const N: usize = 3000;
    let server = paced_server(N);
    let before = crate_threads();
    let (ws, batches) = WebSocket::builder()
        .connect_batches(&server.url())
        .expect("connect");
    let io = new_crate_threads(&before, 1)[0].0;
    let switches0 = thread_switches(io);
    let mut texts = Texts::default();
    let deadline = Instant::now() + WAIT;
    while texts.0.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} messages",
            texts.0.len()
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        ws.dispatch_batches(&batches, &mut texts);
    }
    let switches = thread_switches(io) - switches0;
    assert!(
        switches < N as u64 / 2,
        "the I/O thread was switched {switches} times for {N} messages"
    );
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(texts.0, want);
    ws.close();
    drop(ws);
    server.join();
}

/// Pull style, a caller that leaves its events unread for a long computation while the
/// server sends now and then (every 50 ms): the I/O thread wakes for those messages, not
/// every millisecond of the computation (the reading in batches of the test above stops
/// once a millisecond without the socket brought nothing).
#[test]
fn a_busy_pull_caller_with_sparse_messages_does_not_make_the_io_thread_tick() {
    let _g = exclusive();
    const N: usize = 8;
    let (sent_tx, sent) = crossbeam_channel::bounded(1);
    let server = server(move |mut ws| {
        for i in 0..N {
            ws.send(tungstenite::Message::text(i.to_string())).unwrap();
            thread::sleep(Duration::from_millis(50)); // the pace, not a wait for anything
        }
        sent_tx.send(()).unwrap();
        read_until_close(&mut ws);
    });
    let before = crate_threads();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let io = new_crate_threads(&before, 1)[0].0;
    let switches0 = thread_switches(io);
    // The caller is busy elsewhere (it takes nothing, not even `Open`) until the server
    // has sent all and paused 50 ms: about 400 ms.
    sent.recv_timeout(WAIT).expect("the server sent them all");
    let switches = thread_switches(io) - switches0;
    assert!(matches!(next_event(&events), Event::Open));
    for i in 0..N {
        match next_event(&events) {
            Event::Message(m) => assert_eq!(m.as_text(), Some(i.to_string().as_str())),
            other => panic!("{other:?}"),
        }
    }
    // Waking every millisecond is about 350; a few per message is under 50.
    assert!(
        switches < 60,
        "the I/O thread was switched {switches} times for {N} messages in about 400 ms"
    );
    ws.close();
    drop(ws);
    server.join();
}

/// A `request` waits while the consumer takes nothing and the server keeps sending, one
/// message a millisecond: the I/O thread reads past the consumer's bound for the reply,
/// waking for the socket and to look for room every 5 ms, not every millisecond. (Until
/// 2026-12-07 the busy-caller moderation ran in that state too: 860 switches a second.)
#[cfg(feature = "json")]
#[test]
fn a_waiting_request_with_the_consumer_stalled_does_not_make_the_io_thread_tick() {
    let _g = exclusive();
    let server = server(|mut ws| {
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if ws.send(tungstenite::Message::text("tick")).is_err() {
                return;
            }
            match ws.read() {
                Ok(m) if m.is_close() => return,
                _ => {}
            }
        }
    });
    let before = crate_threads();
    let (ws, _events) = WebSocket::builder()
        .incoming_queue(16)
        .close_timeout(Duration::from_millis(300))
        .connect_pull(&server.url())
        .expect("connect");
    let io = new_crate_threads(&before, 1)[0].0;
    let switches0 = thread_switches(io);
    let t = Instant::now();
    // Nobody answers: the request runs its whole timeout.
    let r = ws
        .request::<_, serde_json::Value>(&serde_json::json!({"q": 1}), Duration::from_millis(1000));
    let took = t.elapsed();
    let switches = thread_switches(io) - switches0;
    assert!(matches!(r, Err(nwebsocket::Error::Timeout(_))), "{r:?}");
    // Measured: about 240 a second; with the moderation, about 840.
    let per_s = switches as f64 / took.as_secs_f64();
    assert!(per_s < 500.0, "{switches} switches in {took:?}");
    drop(ws);
    server.join();
}

/// Batches (`connect_batches`), a caller busy elsewhere that takes nothing, not even the
/// first batch, while a few messages wait behind it and the server then says nothing: the
/// I/O thread has nothing to do until the caller takes or the server sends. It must not
/// wake every millisecond meanwhile (DESIGN rule 13: no CPU while idle); pull style stops
/// once a wait without the socket brought nothing (`Pull::busy_since`), batches do not.
#[test]
fn a_batches_caller_that_takes_nothing_does_not_make_an_idle_io_thread_tick() {
    let _g = exclusive();
    let (sent_tx, sent) = crossbeam_channel::bounded(1);
    let server = server(move |mut ws| {
        for i in 0..3 {
            ws.send(tungstenite::Message::text(i.to_string())).unwrap();
        }
        sent_tx.send(()).unwrap();
        read_until_close(&mut ws);
    });
    let before = crate_threads();
    let (ws, batches) = WebSocket::builder()
        .connect_batches(&server.url())
        .expect("connect");
    let (io, name) = new_crate_threads(&before, 1).remove(0);
    sent.recv_timeout(WAIT).expect("the server sent");
    // A batch waits untaken (its `Debug` shows the channel's length).
    assert!(
        eventually(WAIT, || format!("{batches:?}").contains("waiting: 1")),
        "no batch came"
    );
    // Reading the 3 messages behind it: well under this.
    thread::sleep(Duration::from_millis(200));
    let switches0 = thread_switches(io);
    thread::sleep(Duration::from_secs(1)); // the window measured
    let switches = thread_switches(io) - switches0;
    // Waking every millisecond (`MODERATE`) is about 1000; idle is a handful.
    assert!(
        switches < 20,
        "{name} woke up {switches} times in 1 s with nothing to do but wait for the caller"
    );
    ws.close();
    drop(batches);
    server.join();
}
