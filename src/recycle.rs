//! Payload buffers of large binary messages, reused once the caller drops them.
//!
//! A large binary frame is read into a buffer of its own (see `transport::ReadAhead`),
//! and the caller gets that buffer as the message's [`Binary`](crate::Binary). When the
//! caller drops the last reference, the buffer comes back here instead of going to the
//! allocator, and the next large frame of about the same size is read into it.
//!
//! Why: a fresh megabyte from the allocator is mostly fresh pages, and each page faults
//! on its first write; it also has to be zeroed before it can be read into (no `unsafe`
//! here), and it is cold in the cache. A buffer that comes back is none of these: its
//! bytes are already initialized, and they were touched a moment ago. Receiving a stream
//! of 1 MiB messages, the I/O thread's page faults and zeroing were about a quarter of its
//! time; see `benches/compare/README.md` for the measurements.
//!
//! Bounds: at most [`KEEP`] buffers wait here, each of at most [`MAX_LEN`] bytes, and the
//! I/O thread drops them all [`IDLE`] after the last large frame. A buffer dropped after
//! that, or after the connection ended, goes to the allocator as usual.

use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

/// How many dropped buffers may wait for reuse.
pub(crate) const KEEP: usize = 4;

/// The largest buffer that comes back: larger messages are rare, and four of them kept
/// for a second would be a lot of memory.
pub(crate) const MAX_LEN: usize = 4 << 20;

/// How long the buffers are kept after the last large frame.
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// The buffers that came back, and where they come back to.
#[derive(Debug)]
pub(crate) struct Pool {
    home: Sender<Vec<u8>>,
    back: Receiver<Vec<u8>>,
    /// When the last buffer was asked for.
    used: Instant,
}

impl Pool {
    pub fn new(now: Instant) -> Self {
        let (home, back) = crossbeam_channel::bounded(KEEP);
        Pool {
            home,
            back,
            used: now,
        }
    }

    /// A buffer for a payload of `len` bytes: one that came back if one fits, else a new
    /// one. It is empty or holds old bytes (its length is how much of it is initialized);
    /// the caller overwrites them.
    ///
    /// One that came back fits if it has room for `len` and no more than a quarter over:
    /// the caller may keep the message, and with it the whole buffer. Those that do not
    /// fit go to the allocator.
    pub fn take(&mut self, len: usize, now: Instant) -> Vec<u8> {
        self.used = now;
        while let Ok(buf) = self.back.try_recv() {
            if (len..=len.saturating_add(len / 4)).contains(&buf.capacity()) {
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// The first `len` bytes of `buf`, as a payload whose buffer comes back here once
    /// its last reference is dropped (if it is not too large).
    pub fn wrap(&self, mut buf: Vec<u8>, len: usize) -> Bytes {
        if buf.capacity() > MAX_LEN {
            buf.truncate(len);
            return Bytes::from(buf);
        }
        Bytes::from_owner(Lent {
            buf,
            len,
            home: self.home.clone(),
        })
    }

    /// When the pool should be dropped if no large frame comes before.
    pub fn expiry(&self) -> Instant {
        self.used + IDLE
    }
}

/// A buffer out with the caller, as the owner of a [`Bytes`].
struct Lent {
    buf: Vec<u8>,
    len: usize,
    home: Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Full, or the pool is gone: the buffer goes to the allocator.
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, byte: u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        v.resize(len, byte);
        v
    }

    #[test]
    fn a_dropped_payload_brings_its_buffer_back_with_its_bytes() {
        let now = Instant::now();
        let mut pool = Pool::new(now);
        let payload = pool.wrap(filled(1000, 7), 1000);
        let at = payload.as_ptr();
        assert_eq!(&payload[..], &[7u8; 1000][..]);
        let clone = payload.clone();
        drop(payload);
        // A clone still holds it: not back yet.
        let other = pool.take(1000, now);
        assert_ne!(other.as_ptr(), at);
        drop(clone);
        let again = pool.take(1000, now);
        assert_eq!(again.as_ptr(), at);
        assert_eq!(again.len(), 1000, "its bytes stay initialized");
    }

    #[test]
    fn a_payload_is_only_its_first_len_bytes() {
        let pool = Pool::new(Instant::now());
        let payload = pool.wrap(filled(1000, 1), 600);
        assert_eq!(payload.len(), 600);
    }

    #[test]
    fn only_buffers_that_fit_are_reused() {
        let now = Instant::now();
        let mut pool = Pool::new(now);
        drop(pool.wrap(filled(1000, 0), 1000));
        // Too small: dropped, and a new one comes.
        let small = pool.take(1001, now);
        assert_eq!((small.capacity(), small.len()), (1001, 0));
        drop(pool.wrap(filled(1000, 0), 1000));
        // More than a quarter too large: dropped too.
        assert_eq!(pool.take(799, now).len(), 0);
        assert!(pool.back.is_empty());
        // Up to a quarter over: reused.
        drop(pool.wrap(filled(1000, 0), 1000));
        assert_eq!(pool.take(800, now).len(), 1000);
    }

    #[test]
    fn at_most_keep_buffers_wait_and_none_over_max_len() {
        let now = Instant::now();
        let pool = Pool::new(now);
        for _ in 0..KEEP + 2 {
            drop(pool.wrap(filled(100, 0), 100));
        }
        assert_eq!(pool.back.len(), KEEP);
        let mut pool = Pool::new(now);
        let big = pool.wrap(vec![0; MAX_LEN + 1], MAX_LEN + 1);
        assert_eq!(big.len(), MAX_LEN + 1);
        drop(big);
        assert!(pool.back.is_empty());
        assert_eq!(pool.take(MAX_LEN + 1, now).len(), 0);
    }

    #[test]
    fn a_buffer_dropped_after_the_pool_goes_to_the_allocator() {
        let pool = Pool::new(Instant::now());
        let payload = pool.wrap(filled(100, 3), 100);
        drop(pool);
        assert_eq!(&payload[..], &[3u8; 100][..]);
        drop(payload); // must not block or panic
    }

    #[test]
    fn the_pool_expires_idle_after_it_was_last_used() {
        let start = Instant::now();
        let mut pool = Pool::new(start);
        assert_eq!(pool.expiry(), start + IDLE);
        let later = start + Duration::from_millis(300);
        let _ = pool.take(10, later);
        assert_eq!(pool.expiry(), later + IDLE);
    }
}
