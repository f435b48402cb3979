//! The server's answer to the opening handshake.

use std::fmt;
use std::sync::Arc;

use crate::websocket::WebSocketRef;

/// The server's HTTP response to the opening handshake: its status, headers and (for a
/// rejection) body.
///
/// Once OPEN, [`WebSocketRef::handshake_response`](crate::WebSocketRef::handshake_response)
/// returns the `101` response (with an empty body); a rejection carries its response in
/// [`Error::HandshakeRejected`](crate::Error::HandshakeRejected).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HandshakeResponse(Box<Parts>);

/// Behind a box: [`Error::HandshakeRejected`](crate::Error::HandshakeRejected) carries a
/// response, and every [`Event`](crate::Event) is as large as the largest `Error`; inline,
/// its two vectors made each event 80 bytes, which every hand-over copies.
#[derive(Clone, Default, PartialEq, Eq)]
struct Parts {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// How much of a rejection's body is kept.
pub(crate) const MAX_BODY: usize = 64 << 10;

impl HandshakeResponse {
    pub(crate) fn new<B>(response: &tungstenite::http::Response<B>, body: Vec<u8>) -> Self {
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        HandshakeResponse(Box::new(Parts {
            status: response.status().as_u16(),
            headers,
            body,
        }))
    }

    /// The HTTP status code (`101` once OPEN).
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// Every header, in the order received, names in lower case (values that are not
    /// UTF-8 are converted lossily).
    pub fn headers(&self) -> &[(String, String)] {
        &self.0.headers
    }

    /// The first value of the header `name` (any case), if the server sent it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body: for a rejection, what the server sent (decoded if it was chunked), up to
    /// 64 KiB, read until its `Content-Length`, the end of the stream, or the handshake
    /// timeout; empty once OPEN.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    /// The body as text, if it is UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0.body).ok()
    }

    /// For `Display` of a rejection: `": "` and the body's first line, if it is short text.
    pub(crate) fn body_excerpt(&self) -> String {
        let text = match self.body_text() {
            Some(t) => t.trim(),
            None => return String::new(),
        };
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() || line.starts_with('<') {
            return String::new(); // nothing, or HTML: the status says more
        }
        let cut: String = line.chars().take(200).collect();
        let more = if cut.len() < text.len() { " …" } else { "" };
        format!(": {cut}{more}")
    }
}

impl WebSocketRef {
    /// The server's `101` response to the opening handshake of the current connection
    /// (its status and headers; the body is empty): set before `onopen` runs, `None`
    /// before the first connection opens. With reconnect, each new connection replaces
    /// it, and a callback sees its own connection's (as [`protocol`](Self::protocol)).
    pub fn handshake_response(&self) -> Option<Arc<HandshakeResponse>> {
        self.opened().map(|o| Arc::clone(&o.response))
    }
}

impl fmt::Debug for HandshakeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HandshakeResponse");
        d.field("status", &self.0.status)
            .field("headers", &self.0.headers);
        match self.body_text() {
            Some(text) => d.field("body", &text),
            None => d.field("body", &format_args!("<{} bytes>", self.0.body.len())),
        };
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_a_text_body_as_text() {
        let r = tungstenite::http::Response::builder()
            .status(403)
            .header("X-Why", "token")
            .body(())
            .unwrap();
        let r = HandshakeResponse::new(&r, b"forbidden".to_vec());
        assert_eq!(r.header("x-why"), Some("token"));
        let shown = format!("{r:?}");
        assert!(shown.contains("\"forbidden\""), "{shown}");
        assert_eq!(r.body_excerpt(), ": forbidden");
    }
}
