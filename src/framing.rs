//! Client frames encoded on the sending thread, straight into the connection's outbox.
//!
//! A `send` appends one complete, masked frame to a shared buffer; the I/O thread takes the
//! whole buffer and writes it as it is. No allocation and no channel node per message, and
//! the encoding runs on the sending thread, in parallel with the I/O thread's writes.

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::message::Message;

/// Frames waiting for the I/O thread, and the application bytes they carry.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub frames: Vec<u8>,
    pub app_bytes: usize,
}

impl Outbox {
    /// Appends `msg` as one final, masked frame (RFC 6455 §5.3: a fresh random mask from
    /// the thread's cryptographic RNG for every frame, as tungstenite does).
    pub fn push(&mut self, msg: &Message) {
        let (opcode, payload) = match msg {
            Message::Text(t) => (Data::Text, t.as_bytes()),
            Message::Binary(b) => (Data::Binary, &b[..]),
        };
        let mask: [u8; 4] = rand::random();
        let header = FrameHeader {
            is_final: true,
            opcode: OpCode::Data(opcode),
            mask: Some(mask),
            ..FrameHeader::default()
        };
        self.frames.reserve(payload.len() + 14);
        // Writing into a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut self.frames);
        let start = self.frames.len();
        self.frames.extend_from_slice(payload);
        apply_mask(&mut self.frames[start..], mask);
        self.app_bytes += payload.len();
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// XORs `buf` with the repeated 4-byte `mask`, eight bytes at a time.
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames decode, with tungstenite's own reader, to the messages pushed.
    #[test]
    fn frames_decode_as_tungstenite_reads_them() {
        let messages: Vec<Message> = vec![
            "".into(),
            "hello".into(),
            "é".repeat(100).into(),
            vec![7u8; 125].into(),
            vec![1u8; 126].into(),
            vec![2u8; 65_535].into(),
            vec![3u8; 65_536].into(),
            (0..=255u8).cycle().take(1001).collect::<Vec<u8>>().into(),
        ];
        let mut outbox = Outbox::default();
        for m in &messages {
            outbox.push(m);
        }
        assert_eq!(
            outbox.app_bytes,
            messages.iter().map(Message::len).sum::<usize>()
        );
        let mut server = tungstenite::WebSocket::from_raw_socket(
            Wire(std::io::Cursor::new(outbox.frames)),
            tungstenite::protocol::Role::Server,
            None,
        );
        for m in &messages {
            let got = server.read().unwrap();
            assert_eq!(got.into_data().as_ref(), m.as_bytes());
        }
    }

    #[test]
    fn masks_differ_between_frames() {
        let mut outbox = Outbox::default();
        outbox.push(&"a".into());
        let first = outbox.frames[2..6].to_vec();
        outbox.push(&"a".into());
        let len = outbox.frames.len();
        assert_ne!(first, outbox.frames[len - 5..len - 1].to_vec());
    }

    struct Wire(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for Wire {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl std::io::Write for Wire {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
