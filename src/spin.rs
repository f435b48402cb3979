//! Yielding instead of sleeping, and when not to.
//!
//! A few waits are usually over within microseconds, and there a thread yields between
//! looks rather than going to sleep at once: the server's answer just after a write (the
//! I/O thread), the next batch of a flood (the callback thread), a consumer about to empty
//! the queue (the I/O thread), the handler a caller is waiting to lock. Sleeping there
//! costs a wake-up on both sides, and on a shared core a yield is what runs the thread
//! that ends the wait. The benchmarks show it paying: round trips on two cores 1.3–1.4×
//! raw tungstenite's with the look after a write and 0.84–0.89× without it, at no more
//! CPU per round trip (`benches/compare/README.md`).
//!
//! It pays only while the process has an idle core. When every core is busy (the numeric
//! code this crate serves computes on all of them), a yield can hand this thread's core
//! to a compute thread for its whole time slice: measured here, a yield takes 0.6 µs with
//! a core idle, and 1 in 100 takes 4 ms with both cores computing. That is latency the
//! events pay, and the looks take CPU the computation wanted.
//!
//! So every such loop yields through [`yield_now`], which times the yield: one that took
//! longer than [`BUSY`] found no idle core, and then yields stop for the whole process
//! (the loops sleep instead, and are woken) for [`OFF_MIN`], twice as long each time it
//! happens again within [`OFF_MAX`] of the last, up to [`OFF_MAX`]. Busy cores then cost
//! at most one slow yield a second.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A yield that took longer than this ran another thread for a while: no core was idle.
/// (An idle core's yield takes about 0.6 µs here, at most 40 µs with interrupts; a
/// time slice is milliseconds. A burst of this crate's own other thread, the usual
/// reason to yield on a shared core, is tens of microseconds.)
pub(crate) const BUSY: Duration = Duration::from_micros(500);
/// How long yields stop after a slow one, at first.
pub(crate) const OFF_MIN: Duration = Duration::from_millis(10);
/// The longest they stop, and how close together slow yields must come to double it.
pub(crate) const OFF_MAX: Duration = Duration::from_secs(1);

/// The policy's state, process-wide, in nanoseconds since [`epoch`].
struct Policy {
    /// Yields are off until then.
    off_until: AtomicU64,
    /// How long they were last turned off for.
    off_for: AtomicU64,
    /// When a yield was last slow.
    last_slow: AtomicU64,
}

static POLICY: Policy = Policy {
    off_until: AtomicU64::new(0),
    off_for: AtomicU64::new(0),
    last_slow: AtomicU64::new(0),
};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Whether a wait may yield now (else it should sleep).
pub(crate) fn allowed() -> bool {
    nanos(Instant::now()) >= POLICY.off_until.load(Relaxed)
}

/// Yields the thread once; `false` if the yield found no idle core (see above): stop
/// yielding and sleep.
pub(crate) fn yield_now() -> bool {
    let start = Instant::now();
    std::thread::yield_now();
    let end = Instant::now();
    if end - start < BUSY {
        return true;
    }
    POLICY.slow(nanos(end));
    false
}

impl Policy {
    /// A yield ended slow at `now`: turn yields off.
    fn slow(&self, now: u64) {
        let (min, max) = (OFF_MIN.as_nanos() as u64, OFF_MAX.as_nanos() as u64);
        let last = self.last_slow.swap(now, Relaxed);
        let off_for = if last != 0 && now.saturating_sub(last) <= max + self.off_for.load(Relaxed) {
            (self.off_for.load(Relaxed) * 2).clamp(min, max)
        } else {
            min
        };
        self.off_for.store(off_for, Relaxed);
        self.off_until.store(now.saturating_add(off_for), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            off_until: AtomicU64::new(0),
            off_for: AtomicU64::new(0),
            last_slow: AtomicU64::new(0),
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slow_yield_stops_yields_for_longer_each_time_up_to_a_second() {
        let p = policy();
        let mut now = 5_000 * MS;
        let mut offs = Vec::new();
        for _ in 0..10 {
            p.slow(now);
            let until = p.off_until.load(Relaxed);
            offs.push((until - now) / MS);
            now = until + MS; // the next slow yield just after yields came back
        }
        assert_eq!(offs, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[test]
    fn after_a_quiet_while_a_slow_yield_stops_them_briefly_again() {
        let p = policy();
        let mut now = 5_000 * MS;
        for _ in 0..8 {
            p.slow(now);
            now = p.off_until.load(Relaxed) + MS;
        }
        assert_eq!(p.off_for.load(Relaxed), 1_000 * MS);
        // Yields came back and stayed fast for three seconds.
        now += 3_000 * MS;
        p.slow(now);
        assert_eq!(p.off_until.load(Relaxed) - now, 10 * MS);
    }

    #[test]
    fn yields_on_an_idle_machine_are_fast() {
        // The test threads may share the cores with other tests, so only most need be.
        let fast = (0..100).filter(|_| yield_now()).count();
        assert!(fast >= 90, "{fast} of 100 yields were fast");
    }
}
