//! The connection's ready state, as the browser names it.

/// Where a connection is in its life, as in the browser's `WebSocket.readyState`.
///
/// Within one connection it only moves forward: CONNECTING → OPEN → CLOSING → CLOSED
/// (CONNECTING may go straight to CLOSED when the connection fails). With reconnect on,
/// CLOSED goes back to CONNECTING for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ReadyState {
    /// The connection is being made (DNS, TCP, TLS, opening handshake).
    Connecting = 0,
    /// The connection is open: messages can be sent and are received.
    Open = 1,
    /// The closing handshake has started.
    Closing = 2,
    /// The connection is closed, or could not be opened.
    Closed = 3,
}

impl ReadyState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => ReadyState::Connecting,
            1 => ReadyState::Open,
            2 => ReadyState::Closing,
            _ => ReadyState::Closed,
        }
    }
}
