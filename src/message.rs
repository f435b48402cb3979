//! What travels over a connection: messages, and the events the I/O thread reports.

use std::fmt;
use std::ops::Deref;

use tungstenite::{Bytes, Utf8Bytes};

use crate::error::Error;

/// A complete WebSocket message: text or binary.
///
/// Build one from `&str`, `String`, `&[u8]` or `Vec<u8>` with `.into()` (every `send`
/// takes `impl Into<Message>`). A received payload of more than 512 bytes is not copied
/// on its way from the socket to you: its [`Text`] or [`Binary`] shares the I/O thread's
/// read buffer (16 KiB or more), and so do the small ones of a flood past the first few of
/// each read burst. Every other payload, which is every message of a connection that is
/// not flooded, is copied once into an allocation of its own size. (A fragmented or
/// compressed message is assembled or inflated into a buffer of its own.) A message you
/// keep holds on to what it shares: to keep a few messages out of a flood for long, keep
/// copies (`to_vec`, `to_owned`).
///
/// ```
/// use nwebsocket::Message;
///
/// let m: Message = "hello".into();
/// assert_eq!(m.as_text(), Some("hello"));
/// let b: Message = vec![1u8, 2, 3].into();
/// assert_eq!(b.as_bytes(), &[1, 2, 3]);
/// assert!(b.is_binary());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A UTF-8 text message.
    Text(Text),
    /// A binary message.
    Binary(Binary),
}

impl Message {
    /// `true` for a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// `true` for a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }

    /// The payload as bytes (UTF-8 for text).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// `true` when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        match self {
            Message::Text(t) if t.len() > SHOWN => {
                let cut = (0..=SHOWN)
                    .rev()
                    .find(|&i| t.is_char_boundary(i))
                    .unwrap_or(0);
                write!(f, "Text({:?}… {} bytes)", &t[..cut], t.len())
            }
            Message::Text(t) => write!(f, "Text({:?})", &**t),
            Message::Binary(b) if b.len() > SHOWN => {
                write!(f, "Binary({:?}… {} bytes)", &b[..SHOWN], b.len())
            }
            Message::Binary(b) => write!(f, "Binary({:?})", &**b),
        }
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(Text(Utf8Bytes::from(s)))
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(Text(Utf8Bytes::from(s)))
    }
}

impl From<&String> for Message {
    fn from(s: &String) -> Self {
        Message::from(s.as_str())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(Binary(Bytes::copy_from_slice(b)))
    }
}

impl<const N: usize> From<&[u8; N]> for Message {
    fn from(b: &[u8; N]) -> Self {
        Message::from(&b[..])
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(Binary(Bytes::from(b)))
    }
}

impl From<&Vec<u8>> for Message {
    fn from(b: &Vec<u8>) -> Self {
        Message::from(b.as_slice())
    }
}

impl From<Text> for Message {
    fn from(t: Text) -> Self {
        Message::Text(t)
    }
}

impl From<Binary> for Message {
    fn from(b: Binary) -> Self {
        Message::Binary(b)
    }
}

/// The payload of a text message: a cheaply clonable, immutable UTF-8 string.
///
/// It dereferences to `&str`; [`into_string`](Text::into_string) gives an owned `String`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Text(pub(crate) Utf8Bytes);

impl Text {
    /// The text as `&str`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// An owned `String` (one copy).
    pub fn into_string(self) -> String {
        self.0.as_str().to_owned()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s.into())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.into())
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The payload of a binary message, or of a ping or pong: cheaply clonable, immutable bytes.
///
/// It dereferences to `&[u8]`; [`to_vec`](slice::to_vec) or [`into_vec`](Binary::into_vec)
/// give an owned `Vec<u8>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Binary(pub(crate) Bytes);

impl Binary {
    /// An owned `Vec<u8>`: copies, unless this is the only reference to a whole buffer of
    /// its own. (A large received message, 16 KiB and up, lives in a buffer that the
    /// connection reads its next large message into once you drop it: that one is copied.)
    pub fn into_vec(self) -> Vec<u8> {
        Vec::from(self.0)
    }
}

impl Deref for Binary {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Binary {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl From<Vec<u8>> for Binary {
    fn from(v: Vec<u8>) -> Self {
        Binary(v.into())
    }
}

impl From<&[u8]> for Binary {
    fn from(v: &[u8]) -> Self {
        Binary(Bytes::copy_from_slice(v))
    }
}

impl PartialEq<[u8]> for Binary {
    fn eq(&self, other: &[u8]) -> bool {
        &**self == other
    }
}

/// How a connection ended: what [`Handler::onclose`](crate::Handler::onclose) receives.
///
/// As in the browser, `code` is the code from the server's Close frame (1005 if it had
/// none) after a closing handshake, and 1006 with `was_clean == false` when the
/// connection failed or was lost without one.
///
/// `#[non_exhaustive]`: only this crate makes one, and the browser's `CloseEvent` may
/// gain fields here too without a breaking release. Compare its fields, not whole values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseEvent {
    /// The close code.
    pub code: u16,
    /// The close reason (may be empty).
    pub reason: String,
    /// `true` when the closing handshake completed.
    pub was_clean: bool,
}

impl CloseEvent {
    pub(crate) fn abnormal() -> Self {
        CloseEvent {
            code: 1006,
            reason: String::new(),
            was_clean: false,
        }
    }
}

/// What the I/O thread reports, in order, once each: the pull-style view of the callbacks.
///
/// A connection yields `Open` once (unless it fails first), then any number of
/// `Message`s (and `Ping`/`Pong` if asked for), then, if it fails, one `Error`, and
/// always exactly one `Close`, last. Nothing follows `Close`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The opening handshake succeeded; the state is OPEN.
    Open,
    /// A complete message arrived.
    Message(Message),
    /// The connection failed; a `Close` with code 1006 follows.
    Error(Error),
    /// The connection is CLOSED. The connection's last event (with
    /// [`reconnect`](crate::Builder::reconnect) on, a new connection's `Open` may follow;
    /// after the last connection's, nothing does).
    Close(CloseEvent),
    /// A ping arrived (already answered). Only with
    /// [`Builder::ping_events`](crate::Builder::ping_events).
    Ping(Binary),
    /// A pong arrived. Only with [`Builder::ping_events`](crate::Builder::ping_events).
    Pong(Binary),
}
