//! Frame boundaries in the incoming byte stream, and the fast path for simple frames.
//!
//! tungstenite parses every frame, and for a flood of small messages its read and parse
//! take most of the time a message costs (60-90 ns of raw tungstenite's ~93 ns per
//! 64-byte message on the benchmark machine): the I/O thread, which also hands each
//! message to another thread, could not keep up with a single-threaded tungstenite loop.
//! So the transport takes the simplest frames out of the stream before tungstenite sees
//! them: a complete, final, unmasked text or binary frame of at most [`FAST_MAX`] bytes,
//! with no reserved bits, within the configured limits, valid UTF-8 if text, arriving
//! while tungstenite holds no partial frame, no fragmented message and no Close. Such a
//! frame is exactly one message, and tungstenite would deliver it as it is. Everything
//! else (control frames, fragments, anything malformed, large frames but for the case
//! below) still goes to tungstenite, which stays the authority on the protocol.
//!
//! A second, equally narrow case takes large binary frames ([`Front::Large`]): a final,
//! unmasked binary frame of [`LARGE_MIN`] bytes or more, within the limits, at the same
//! kind of boundary, is read straight into a buffer of its own size with reads as large
//! as what is left of it. tungstenite reads at most its read buffer size per system call
//! (16 KiB here, to keep an idle connection small), which cost about a tenth of the
//! throughput of a stream of 1 MiB messages. Its payload is taken as it is, as tungstenite
//! would; large text frames still go to tungstenite, whose UTF-8 check they need.
//!
//! The [`Tracker`] follows the frames of every byte handed to tungstenite, so the
//! transport knows when tungstenite's buffer is empty and nothing is in progress.

/// The largest payload taken by the fast path; larger frames are not dominated by
/// per-message costs and go to tungstenite.
pub(crate) const FAST_MAX: usize = 4 << 10;

/// The smallest binary frame payload read by the fast path into a buffer of its own
/// (see [`Front::Large`]): tungstenite's read size here (16 KiB), below which a frame
/// costs it at most one more read.
pub(crate) const LARGE_MIN: usize = 16 << 10;

/// Where the byte stream handed to tungstenite stands, frame by frame.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The header of the frame being handed over, while incomplete.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame not yet handed over.
    payload_left: u64,
    /// A fragmented data message is in progress: tungstenite holds its first fragments.
    fragmented: bool,
    /// A Close went to tungstenite (no data frame may follow), or a frame this tracker
    /// does not understand (tungstenite will fail the connection).
    done: bool,
}

impl Tracker {
    /// Follows `bytes`, handed to tungstenite.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.done {
            if self.payload_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let need = if self.header_len < 2 {
                2
            } else {
                header_size(self.header[1])
            };
            let n = (need - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len >= 2 && self.header_len == header_size(self.header[1]) {
                let (fin, opcode, len) = parse_header(&self.header[..self.header_len]);
                self.header_len = 0;
                self.payload_left = len;
                match opcode {
                    1 | 2 => self.fragmented = !fin,
                    0 if fin => self.fragmented = false,
                    0 | 9 | 10 => {}
                    _ => self.done = true, // Close, or a reserved opcode
                }
            }
        }
    }

    /// Whether tungstenite holds nothing: no partial frame, no fragmented message, no
    /// Close, so that the next whole frame may bypass it.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.fragmented && !self.done
    }

    /// How many bytes remain of the frame being handed over, when known.
    pub fn to_frame_end(&self) -> Option<u64> {
        (self.header_len == 0 && self.payload_left > 0).then_some(self.payload_left)
    }
}

/// The header's size, from its second byte.
fn header_size(second: u8) -> usize {
    let length = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + length + mask
}

/// (final, opcode, payload length) of a complete header.
fn parse_header(h: &[u8]) -> (bool, u8, u64) {
    let len = match h[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    };
    (h[0] & 0x80 != 0, h[0] & 0x0F, len)
}

/// The total size of the frame at the front of `buf`, once its header is there.
pub(crate) fn frame_size(buf: &[u8]) -> Option<u64> {
    if buf.len() < 2 || buf.len() < header_size(buf[1]) {
        return None;
    }
    let size = header_size(buf[1]);
    let (_, _, len) = parse_header(&buf[..size]);
    Some((size as u64).saturating_add(len))
}

/// What the front of the buffered stream is, at a frame boundary.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Front {
    /// A simple frame (see the module docs): its header size and payload length.
    Simple {
        text: bool,
        header: usize,
        len: usize,
    },
    /// A final, unmasked binary frame of [`LARGE_MIN`] bytes or more, within the limits,
    /// with no reserved bits: its header size and payload length. Its payload may not be
    /// there yet.
    Large { header: usize, len: usize },
    /// Not enough bytes to tell, or a simple frame not complete yet.
    NeedMore,
    /// Anything else, for tungstenite: the frame's total size.
    Other(u64),
}

/// Classifies the front of `buf` (which starts at a frame boundary). `max` is the
/// largest payload the configured limits allow.
pub(crate) fn front(buf: &[u8], max: usize) -> Front {
    let Some(total) = frame_size(buf) else {
        return Front::NeedMore;
    };
    let size = header_size(buf[1]);
    let (fin, opcode, len) = parse_header(&buf[..size]);
    let data = fin
        && buf[0] & 0x70 == 0 // no reserved bits
        && buf[1] & 0x80 == 0 // unmasked, as a server's frames must be
        && (opcode == 1 || opcode == 2);
    if data && opcode == 2 && (LARGE_MIN as u64..=max as u64).contains(&len) {
        return Front::Large {
            header: size,
            len: len as usize,
        };
    }
    if !data || len > FAST_MAX.min(max) as u64 {
        return Front::Other(total);
    }
    let len = len as usize;
    if buf.len() < size + len {
        return Front::NeedMore;
    }
    if opcode == 1 && std::str::from_utf8(&buf[size..size + len]).is_err() {
        return Front::Other(total); // tungstenite reports it
    }
    Front::Simple {
        text: opcode == 1,
        header: size,
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;

    /// An unmasked frame whose first byte is `first` (FIN, RSV bits, opcode), as
    /// tungstenite writes it.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Frame::message(payload.to_vec(), OpCode::Data(Data::Binary), true);
        let h = f.header_mut();
        h.is_final = first & 0x80 != 0;
        (h.rsv1, h.rsv2, h.rsv3) = (first & 0x40 != 0, first & 0x20 != 0, first & 0x10 != 0);
        h.opcode = OpCode::from(first & 0x0F);
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[test]
    fn only_whole_final_unmasked_small_data_frames_are_simple() {
        let max = 1 << 20;
        assert_eq!(
            front(&frame(0x82, b"abc"), max),
            Front::Simple {
                text: false,
                header: 2,
                len: 3
            }
        );
        assert_eq!(
            front(&frame(0x81, "é".as_bytes()), max),
            Front::Simple {
                text: true,
                header: 2,
                len: 2
            }
        );
        let big = vec![7u8; 300];
        assert_eq!(
            front(&frame(0x82, &big), max),
            Front::Simple {
                text: false,
                header: 4,
                len: 300
            }
        );
        // Not complete yet.
        assert_eq!(front(&frame(0x82, b"abc")[..4], max), Front::NeedMore);
        assert_eq!(front(&[0x82], max), Front::NeedMore);
        // For tungstenite: not final, reserved bits, masked, control, continuation,
        // invalid UTF-8, above FAST_MAX or above the limit.
        assert_eq!(front(&frame(0x02, b"abc"), max), Front::Other(5));
        assert_eq!(front(&frame(0xC2, b"abc"), max), Front::Other(5));
        let mut masked = frame(0x82, b"abcd");
        masked[1] |= 0x80;
        masked.splice(2..2, [1, 2, 3, 4]);
        assert_eq!(front(&masked, max), Front::Other(10));
        assert_eq!(front(&frame(0x89, b"hb"), max), Front::Other(4));
        assert_eq!(front(&frame(0x88, b""), max), Front::Other(2));
        assert_eq!(front(&frame(0x80, b"abc"), max), Front::Other(5));
        assert_eq!(front(&frame(0x81, &[0xff, 0xfe]), max), Front::Other(4));
        let large = vec![0u8; FAST_MAX + 1];
        assert_eq!(
            front(&frame(0x82, &large), max),
            Front::Other(FAST_MAX as u64 + 5)
        );
        assert_eq!(front(&frame(0x82, b"abc"), 2), Front::Other(5));
        // A large binary frame, known by its header alone; not when text, not final,
        // masked, or above the limit.
        let huge = vec![1u8; LARGE_MIN];
        let taken = Front::Large {
            header: 4,
            len: LARGE_MIN,
        };
        assert_eq!(front(&frame(0x82, &huge)[..4], max), taken);
        assert_eq!(front(&frame(0x82, &huge), max), taken);
        assert_eq!(front(&frame(0x82, &huge), LARGE_MIN), taken);
        let total = LARGE_MIN as u64 + 4;
        assert_eq!(front(&frame(0x81, &huge), max), Front::Other(total));
        assert_eq!(front(&frame(0x02, &huge), max), Front::Other(total));
        assert_eq!(front(&frame(0xA2, &huge), max), Front::Other(total));
        assert_eq!(
            front(&frame(0x82, &huge), LARGE_MIN - 1),
            Front::Other(total)
        );
        let mut masked = frame(0x82, &huge);
        masked[1] |= 0x80;
        masked.splice(4..4, [1, 2, 3, 4]);
        assert_eq!(front(&masked, max), Front::Other(total + 4));
        // A frame for tungstenite is known by its header alone.
        assert_eq!(
            front(&frame(0x82, &large)[..4], max),
            Front::Other(FAST_MAX as u64 + 5)
        );
    }

    #[test]
    fn the_tracker_follows_frames_across_any_split() {
        let mut stream = Vec::new();
        stream.extend(frame(0x02, b"first fragment")); // binary, not final
        stream.extend(frame(0x89, b"ping")); // a control frame in between
        stream.extend(frame(0x80, &[9u8; 70_000])); // the final continuation (64-bit length)
        stream.extend(frame(0x82, &[1u8; 200]));
        for split in [1, 2, 3, 7, 100, 65_536, stream.len()] {
            let mut t = Tracker::default();
            let mut boundaries = Vec::new();
            for (i, chunk) in stream.chunks(split).enumerate() {
                t.feed(chunk);
                if t.at_boundary() {
                    boundaries.push((i + 1) * split);
                }
            }
            // Only at the end of the stream is nothing in progress: after the first
            // fragment, a fragmented message is; in the middle of a frame, a frame is.
            assert_eq!(
                boundaries.last().copied().map(|b| b.min(stream.len())),
                Some(stream.len()),
                "split {split}"
            );
            assert!(
                boundaries.iter().all(|&b| b >= stream.len() - 204),
                "split {split}: {boundaries:?}"
            );
        }
        let mut t = Tracker::default();
        t.feed(&frame(0x88, &[3, 232]));
        assert!(
            !t.at_boundary(),
            "after a Close, nothing bypasses tungstenite"
        );
    }
}
