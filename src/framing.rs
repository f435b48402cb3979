//! Client frames encoded on the sending thread, straight into the connection's outbox.
//!
//! A `send` appends one complete, masked frame to a shared buffer; the I/O thread takes the
//! whole buffer and writes it as it is. No allocation and no channel node per message, and
//! the encoding runs on the sending thread, in parallel with the I/O thread's writes.
//!
//! The outbox is behind a mutex that the I/O thread takes once per batch. So that it
//! finds the mutex free, a sender does its work before taking it: a small message's frame
//! (header, fresh mask, masked payload) is built in a buffer of the sending thread's and
//! only copied in under the lock; a large one's payload is masked in place, under the
//! lock, since a second copy of it would cost more than the wait.

use std::cell::RefCell;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::message::Message;

/// Payloads up to this size are framed outside the outbox lock.
const SMALL: usize = 512;
/// The longest client frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Frames waiting for the I/O thread, and the application bytes they carry.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub frames: Vec<u8>,
    pub app_bytes: usize,
}

thread_local! {
    /// Where a small message's frame is built before it is copied into the outbox.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Frames `msg` as one final, masked frame (RFC 6455 §5.3: a fresh random mask from the
/// thread's cryptographic RNG for every frame, as tungstenite does) and appends it to an
/// outbox: `lock` locks the outbox and calls the appender it is given on it, and what
/// `lock` returns is returned. The lock is held only for the copy into the outbox.
pub(crate) fn push<R>(msg: &Message, lock: impl FnOnce(&mut dyn FnMut(&mut Outbox)) -> R) -> R {
    let frame = Frame::new(msg);
    let mut lock = Some(lock);
    if frame.payload.len() <= SMALL {
        let built = SCRATCH.try_with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            frame.encode(&mut buf);
            lock.take().map(|lock| {
                lock(&mut |outbox: &mut Outbox| {
                    outbox.frames.extend_from_slice(&buf);
                    outbox.app_bytes += frame.payload.len();
                })
            })
        });
        if let Ok(Some(done)) = built {
            return done;
        }
        // The thread's locals are being torn down: encode under the lock instead.
    }
    let lock = lock.expect("`lock` is only taken on the path that returned");
    lock(&mut |outbox: &mut Outbox| {
        frame.encode(&mut outbox.frames);
        outbox.app_bytes += frame.payload.len();
    })
}

/// One message's frame, still to be encoded.
struct Frame<'a> {
    header: FrameHeader,
    mask: [u8; 4],
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    fn new(msg: &'a Message) -> Self {
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
        Frame {
            header,
            mask,
            payload,
        }
    }

    /// Appends the header and the masked payload to `buf`.
    fn encode(&self, buf: &mut Vec<u8>) {
        buf.reserve(MAX_HEADER + self.payload.len());
        // Writing into a Vec cannot fail.
        let _ = self.header.format(self.payload.len() as u64, buf);
        let start = buf.len();
        buf.extend_from_slice(self.payload);
        apply_mask(&mut buf[start..], self.mask);
    }
}

impl Outbox {
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
            vec![4u8; 512].into(),
            vec![5u8; 513].into(),
            vec![2u8; 65_535].into(),
            vec![3u8; 65_536].into(),
            (0..=255u8).cycle().take(1001).collect::<Vec<u8>>().into(),
        ];
        let mut outbox = Outbox::default();
        for m in &messages {
            push(m, |append| append(&mut outbox));
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
        let a: Message = "a".into();
        push(&a, |append| append(&mut outbox));
        let first = outbox.frames[2..6].to_vec();
        push(&a, |append| append(&mut outbox));
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
