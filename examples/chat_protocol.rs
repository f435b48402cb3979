//! A chat client, `ChatProtocol`, against a small chat server that this program starts
//! itself (see `mod server` at the end). It shows the three things a chat client needs:
//!
//! - **State filled in by callbacks.** `onmessage` appends each chat line to `messages`
//!   on the connection's callback thread; the main thread reads the list whenever it
//!   likes, through `ws.handler()`, without writing any locking of its own.
//! - **Sending JSON and answering the server.** `post` sends `{"type": "message", ...}`;
//!   when the server sends a binary payload, `onmessage` sends the same bytes back
//!   ("reflects" them) and the server confirms it got them back unchanged.
//! - **A question whose answer arrives among unrelated traffic.** With a plain blocking
//!   socket, "send a query, then `recv()`" gets whatever comes next: chat lines and other
//!   broadcasts, any number of them, before the answer. `request` solves this by stamping
//!   the query with an id that the server copies into its answer; the answer is handed to
//!   the thread that asked, and everything else still goes to `onmessage`.
//!
//! The class comes from the article that introduced the Python `nwebsocket` package
//! ("WebSockets in Python for Practitioners"), whose `ChatProtocol` keeps a `messages`
//! list, posts JSON and reflects binary payloads; that article calls the id the server
//! copies back a "reflect header", and shows the problem above in Jupyter notebook cells.
//!
//! ```text
//! cargo run --example chat_protocol                      # demo against an embedded server
//! cargo run --example chat_protocol -- --interactive     # type lines to post, /quit to leave
//! cargo run --example chat_protocol -- --url ws://host:port/chat [--interactive] [--name me]
//! ```

use std::io::BufRead;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nwebsocket::{CloseEvent, Error, Handler, Message, WebSocket, WebSocketRef};
use serde::Deserialize;
use serde_json::{json, Value};

/// What the callbacks keep: the handler of one chat connection. Its methods run on the
/// connection's callback thread; the main thread reads it through `ws.handler()`.
struct ChatState {
    name: String,
    /// Chat lines, as "from: text".
    messages: Vec<String>,
    /// The server's confirmations that our reflected binary payload came back intact.
    reflected: Vec<String>,
    /// Messages that are neither chat lines nor confirmations (the server's "ticker"
    /// broadcasts), counted as `onmessage` handles them.
    unrelated: usize,
    print_live: bool,
    /// Ticks once per message, so the main thread can wait for news without polling.
    news: Sender<()>,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    data: Value,
}

impl Handler for ChatState {
    fn onopen(&mut self, ws: &WebSocketRef) {
        log::info!("{} connected to {}", self.name, ws.url());
    }

    fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
        match &msg {
            // The server sends each client a binary payload when it joins; sending it
            // back unchanged ("reflecting" it) is how this chat proves it is listening.
            Message::Binary(payload) => {
                if let Err(e) = ws.send(payload.clone()) {
                    log::warn!("could not reflect: {e}");
                }
            }
            Message::Text(_) => match msg.json::<Incoming>() {
                Ok(m) if m.kind == "message" => {
                    let line = format!("{}: {}", m.from, m.data.as_str().unwrap_or_default());
                    if self.print_live {
                        println!("  {line}");
                    }
                    self.messages.push(line);
                }
                Ok(m) if m.kind == "reflected" => self.reflected.push(m.data.to_string()),
                Ok(_) => self.unrelated += 1,
                Err(e) => log::warn!("not chat JSON: {e}"),
            },
        }
        let _ = self.news.send(());
    }

    fn onerror(&mut self, _ws: &WebSocketRef, err: Error) {
        eprintln!("{}: error: {}", self.name, err.chain());
    }

    fn onclose(&mut self, _ws: &WebSocketRef, event: CloseEvent) {
        log::info!("{} closed: {event:?}", self.name);
        let _ = self.news.send(());
    }
}

/// A chat client: a connection plus the chat verbs (join, post, ask who is online).
struct ChatProtocol {
    ws: WebSocket<ChatState>,
    news: Receiver<()>,
}

impl ChatProtocol {
    fn join(server: &str, name: &str, print_live: bool) -> Result<Self, Error> {
        let (tx, news) = crossbeam_channel::unbounded();
        let state = ChatState {
            name: name.to_owned(),
            messages: Vec::new(),
            reflected: Vec::new(),
            unrelated: 0,
            print_live,
            news: tx,
        };
        let url = format!("{server}?name={name}");
        let ws = WebSocket::builder()
            .connect_timeout(Duration::from_secs(5))
            .connect(&url, state)?;
        Ok(ChatProtocol { ws, news })
    }

    /// Posts `{"type": "message", "data": text}`.
    fn post(&self, text: &str) -> Result<(), Error> {
        self.ws.send_json(&json!({"type": "message", "data": text}))
    }

    /// Asks who is online and blocks until the answer. `request` adds an `"id"` field to
    /// the query; the server copies it into its answer, which is how the answer is told
    /// apart from the chat traffic around it. That traffic still goes to `onmessage`.
    fn users(&self) -> Result<Vec<String>, Error> {
        let reply: Value = self.ws.request(
            &json!({"type": "query", "what": "users"}),
            Duration::from_secs(5),
        )?;
        Ok(reply["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn messages(&self) -> Vec<String> {
        self.ws.handler().messages.clone()
    }

    /// Waits (bounded) until the callbacks' state satisfies `done`.
    fn wait_until(&self, done: impl Fn(&ChatState) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.ws.handler()) {
            if self.news.recv_deadline(deadline).is_err() {
                return false;
            }
        }
        true
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().position(|a| a == f);
    let value = |f: &str| flag(f).and_then(|i| args.get(i + 1)).cloned();
    let interactive = flag("--interactive").is_some();

    let url = match value("--url") {
        Some(url) => url,
        None => {
            let addr = server::start()?;
            let url = format!("ws://{addr}/chat");
            println!("chat server listening on {url}");
            url
        }
    };
    if interactive {
        let name = value("--name").unwrap_or_else(|| "me".into());
        return run_interactive(&url, &name);
    }
    run_demo(&url)
}

fn run_demo(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let names = ["alice", "bob", "carol"];
    let users = names
        .iter()
        .map(|n| ChatProtocol::join(url, n, false))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{} joined", names.join(", "));

    let lines = [
        (0, "hello everyone"),
        (1, "hi alice! numbers are crunching over here"),
        (2, "same, my simulation is at step 40,000"),
        (0, "who else is online?"),
    ];
    for (who, text) in lines {
        println!("[{}] posts: {text}", names[who]);
        users[who].post(text)?;
    }

    // A question whose answer arrives among unrelated traffic: before it answers, the
    // server broadcasts `CHATTER_BEFORE_ANSWER` "ticker" messages to everyone. `request`
    // picks the answer out by its id and returns it here; the tickers go to `onmessage`.
    // The answer is handed straight to the thread that asked, so it can overtake tickers
    // that arrived before it but still wait for the callback thread: the count below is
    // how many `onmessage` had handled by the time the answer was back, anywhere from 0
    // to all of them.
    println!(
        "alice asks who is online; the server sends {} unrelated messages first, then the answer",
        server::CHATTER_BEFORE_ANSWER
    );
    let handled_before = users[0].ws.handler().unrelated;
    let asked = Instant::now();
    let online = users[0].users()?;
    let waited = asked.elapsed();
    let handled_meanwhile = users[0].ws.handler().unrelated - handled_before;
    println!(
        "  answer in {:.1} ms; by then onmessage had handled {handled_meanwhile} of them \
         (the answer goes straight to the asking thread, so it can overtake messages still queued for onmessage)",
        waited.as_secs_f64() * 1e3,
    );
    println!(
        "  alice's answer, kept apart from the unrelated messages that went to onmessage: users: {}",
        online.join(", ")
    );

    for (user, name) in users.iter().zip(names) {
        if !user.wait_until(|s| s.messages.len() >= lines.len() && !s.reflected.is_empty()) {
            return Err(format!("{name} did not receive the whole conversation in time").into());
        }
        println!(
            "{name} reflected a binary payload; server says {}",
            user.ws.handler().reflected[0]
        );
    }

    println!("transcript as bob saw it:");
    for line in users[1].messages() {
        println!("  {line}");
    }

    for (user, name) in users.iter().zip(names) {
        user.ws.close_with(1000, "bye")?;
        let closed = user
            .ws
            .wait_closed_timeout(Duration::from_secs(10))
            .ok_or("close timed out")?;
        println!(
            "{name} closed cleanly: {} (code {}, reason {:?})",
            closed.was_clean, closed.code, closed.reason
        );
        if !closed.was_clean {
            return Err(format!("{name} did not close cleanly").into());
        }
    }
    Ok(())
}

fn run_interactive(url: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let chat = ChatProtocol::join(url, name, true)?;
    println!(
        "joined as {name}; type a line to post it, /users to ask who is online, /quit to leave"
    );
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        match line.trim() {
            "/quit" => break,
            "/users" => println!("online: {}", chat.users()?.join(", ")),
            "" => {}
            text => chat.post(text)?,
        }
    }
    chat.ws.close();
    let closed = chat.ws.wait_closed_timeout(Duration::from_secs(10));
    println!("closed: {closed:?}");
    Ok(())
}

/// The embedded chat server: plain tungstenite, one thread per client. What it speaks:
///
/// - a client joins with `?name=NAME` in the URL, and at once gets a binary payload (its
///   name reversed, then the bytes 0 to 7) that it is expected to send back;
/// - a binary message from the client is compared with that payload and answered with
///   `{"type": "reflected", "data": {"bytes": N, "ok": true|false}}`;
/// - `{"type": "message", "data": TEXT}` is broadcast to everyone as
///   `{"type": "message", "from": NAME, "data": TEXT}`;
/// - `{"type": "query", "what": "users", "id": ID}` first broadcasts
///   `CHATTER_BEFORE_ANSWER` `{"type": "ticker", ...}` messages to everyone, then answers the
///   asker with `{"type": "answer", "id": ID, "users": [...]}`, the id copied from the query.
mod server {
    use std::collections::HashMap;
    use std::io;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::Duration;

    use crossbeam_channel::{Receiver, Sender};
    use serde_json::{json, Value};
    use tungstenite::handshake::server::{Request, Response};
    use tungstenite::Message;

    type Clients = Arc<Mutex<HashMap<String, Sender<Message>>>>;

    /// How many unrelated broadcasts the server sends before answering a query.
    pub const CHATTER_BEFORE_ANSWER: usize = 25;

    pub fn start() -> io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let clients = Clients::default();
        thread::Builder::new()
            .name("chat-server".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let clients = Arc::clone(&clients);
                    let _ = thread::Builder::new()
                        .name("chat-client".into())
                        .spawn(move || serve(stream, &clients));
                }
            })?;
        Ok(addr)
    }

    // The handshake callback's error type is tungstenite's `ErrorResponse`, not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn serve(stream: TcpStream, clients: &Clients) {
        // Answers go out at once, not behind the client's delayed ACK (Nagle's algorithm
        // held each for about 40 ms, which the demo printed as the request's latency).
        let _ = stream.set_nodelay(true);
        let mut name = String::from("anonymous");
        let mut joined = false;
        let (tx, outbox): (Sender<Message>, Receiver<Message>) = crossbeam_channel::unbounded();
        let accepted = tungstenite::accept_hdr(stream, |req: &Request, resp: Response| {
            if let Some(n) = req.uri().query().and_then(|q| q.strip_prefix("name=")) {
                name = n.to_owned();
            }
            // Joined before the client sees the 101: a broadcast sent once its `connect`
            // returns must reach it.
            lock(clients).insert(name.clone(), tx);
            joined = true;
            Ok(resp)
        });
        let Ok(mut ws) = accepted else {
            if joined {
                lock(clients).remove(&name);
            }
            return;
        };
        // A short read timeout lets this thread also forward broadcasts to its client.
        let _ = ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(5)));
        // The payload the client must send back (see the module's docs).
        let challenge: Vec<u8> = name.bytes().rev().chain(0u8..8).collect();
        let _ = ws.send(Message::Binary(challenge.clone().into()));

        'serve: loop {
            for msg in outbox.try_iter() {
                // Once the client's Close is in, only the reply may go (the flush below
                // sends it): a broadcast written then failed, and the thread hung up
                // without the reply (the client saw 1006, about 1 run in 15).
                if !ws.can_write() {
                    continue;
                }
                if ws.write(msg).is_err() {
                    break 'serve;
                }
            }
            let _ = ws.flush();
            match ws.read() {
                Ok(Message::Text(text)) => {
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    match v["type"].as_str() {
                        Some("message") => broadcast(
                            clients,
                            json!({
                                "type": "message", "from": name, "data": v["data"],
                            }),
                        ),
                        Some("query") => {
                            for i in 0..CHATTER_BEFORE_ANSWER {
                                broadcast(clients, json!({"type": "ticker", "seq": i}));
                            }
                            let mut users: Vec<String> = lock(clients).keys().cloned().collect();
                            users.sort();
                            let answer = json!({
                                "type": "answer", "id": v["id"], "what": v["what"], "users": users,
                            });
                            // Through the outbox, so it queues behind the chatter.
                            send_to(clients, &name, answer);
                        }
                        _ => {}
                    }
                }
                Ok(Message::Binary(b)) => {
                    let ok = b[..] == challenge[..];
                    send_to(
                        clients,
                        &name,
                        json!({"type": "reflected", "data": {"bytes": b.len(), "ok": ok}}),
                    );
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        lock(clients).remove(&name);
    }

    fn broadcast(clients: &Clients, v: Value) {
        let text = v.to_string();
        for tx in lock(clients).values() {
            let _ = tx.send(Message::text(text.clone()));
        }
    }

    fn send_to(clients: &Clients, name: &str, v: Value) {
        if let Some(tx) = lock(clients).get(name) {
            let _ = tx.send(Message::text(v.to_string()));
        }
    }

    fn lock(clients: &Clients) -> std::sync::MutexGuard<'_, HashMap<String, Sender<Message>>> {
        clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
