//! A synchronous, browser-style WebSocket client: no async anywhere.
//!
//! TODO: crate docs.

mod config;
mod error;
mod handler;
mod io_thread;
mod message;
mod state;
mod transport;
mod url;
mod websocket;

pub use crate::config::Builder;
pub use crate::error::{Error, Result, SendError, Timeout, UrlError};
pub use crate::handler::Handler;
pub use crate::message::{Binary, CloseEvent, Event, Message, Text};
pub use crate::state::ReadyState;
pub use crate::websocket::{HandlerGuard, WebSocket, WebSocketRef};

/// The channel crate the event receiver comes from, re-exported so that `select!` and
/// `Receiver` match the version this crate uses.
pub use crossbeam_channel;
