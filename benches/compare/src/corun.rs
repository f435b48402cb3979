//! The co-run scenario's common parts: a fixed numeric kernel computed on every core the
//! client may use, and the accounting that splits the client's CPU time between the
//! compute threads and the connection.
//!
//! Each compute thread runs [`chunk`]s (a fixed amount of arithmetic, about a millisecond
//! here) until the deadline and counts the chunks it finished by then; thread 0 is the
//! caller, which runs `between()` after each chunk (pull style: `dispatch_pending`; raw
//! tungstenite: drain the channel from its reader thread). Compute throughput is chunks
//! per second over all the compute threads; the same run without a connection is the
//! baseline that "compute lost" is taken against.
//!
//! The connection's CPU time is the client process's CPU time over the window
//! (`getrusage`, every thread, finished ones included; the server is another process)
//! minus what the compute threads spent computing (each reads its own
//! `CLOCK_THREAD_CPUTIME_ID` at the start and end, less the time thread 0 spent in
//! `between()`). So it is: the I/O and callback threads (this crate) or the reader thread
//! (raw tungstenite), plus the consumer's work on thread 0 between chunks.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::sys;

/// Steps of the logistic map per unit (the same inner loop as `burn`).
const STEPS: usize = 2000;
/// Units per chunk: about 1 ms on the 2-CPU machine of the README (a unit is ~3.4 µs).
pub const CHUNK_UNITS: usize = 300;

/// One chunk of the kernel: `CHUNK_UNITS × STEPS` dependent multiply-adds.
pub fn chunk(mut x: f64) -> f64 {
    for _ in 0..CHUNK_UNITS {
        for _ in 0..STEPS {
            x = 3.9 * x * (1.0 - x);
        }
        x = black_box(x);
    }
    x
}

/// What the compute threads did over one window.
#[derive(Debug, Clone, Copy)]
pub struct Computed {
    /// Chunks finished before the deadline, over all compute threads.
    pub chunks: u64,
    /// The window.
    pub wall: Duration,
    /// The client process's CPU time over the window but the compute threads' computing:
    /// the connection's threads and the consumer's work between chunks.
    pub conn_cpu_ns: u64,
    /// The compute threads' CPU time spent computing.
    pub compute_cpu_ns: u64,
    pub threads: usize,
}

impl Computed {
    pub fn chunks_per_s(&self) -> f64 {
        self.chunks as f64 / self.wall.as_secs_f64()
    }

    /// The share of the window the compute threads spent computing (100 % on a quiet
    /// machine without a connection; other processes and the connection take the rest).
    pub fn compute_cpu_pct(&self) -> f64 {
        self.compute_cpu_ns as f64 / 1e9 / self.wall.as_secs_f64() / self.threads as f64 * 100.0
    }
}

/// Runs `threads` compute threads for `d` (thread 0 on the caller's thread, calling
/// `between` after each of its chunks).
pub fn compute(threads: usize, d: Duration, mut between: impl FnMut()) -> Computed {
    let threads = threads.max(1);
    let barrier = Barrier::new(threads);
    let chunks = AtomicU64::new(0);
    let compute_ns = AtomicU64::new(0);
    let deadline_ns = AtomicU64::new(0);
    let t0 = Instant::now();
    let run = |between: &mut dyn FnMut()| {
        barrier.wait();
        let deadline = t0 + Duration::from_nanos(deadline_ns.load(Ordering::Acquire));
        let cpu0 = sys::thread_cputime_ns();
        let mut aside = 0u64;
        let mut n = 0u64;
        let mut x = 0.5_f64;
        loop {
            x = chunk(x);
            if Instant::now() > deadline {
                break;
            }
            n += 1;
            let c = sys::thread_cputime_ns();
            between();
            aside += sys::thread_cputime_ns().saturating_sub(c);
        }
        black_box(x);
        let cpu = sys::thread_cputime_ns().saturating_sub(cpu0);
        chunks.fetch_add(n, Ordering::Relaxed);
        compute_ns.fetch_add(cpu.saturating_sub(aside), Ordering::Relaxed);
    };
    let (p0, p1) = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("compute-{i}"))
                    .spawn_scoped(s, || run(&mut || {}))
                    .expect("spawn a compute thread")
            })
            .collect();
        let p0 = sys::process_cpu_ns();
        let start = Instant::now();
        deadline_ns.store((start - t0 + d).as_nanos() as u64, Ordering::Release);
        run(&mut between);
        for h in handles {
            let _ = h.join();
        }
        (p0, sys::process_cpu_ns())
    });
    let compute_cpu_ns = compute_ns.load(Ordering::Relaxed);
    Computed {
        chunks: chunks.load(Ordering::Relaxed),
        // Only chunks finished by the deadline count.
        wall: d,
        conn_cpu_ns: p1.saturating_sub(p0).saturating_sub(compute_cpu_ns),
        compute_cpu_ns,
        threads,
    }
}

/// The consumer's side of an event: the server's send time is in the payload's first 8
/// bytes (`CLOCK_MONOTONIC`, little-endian); the latency is taken when it is handled.
#[derive(Debug, Default)]
pub struct Latencies {
    pub ns: Vec<u64>,
    pub handled: u64,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            ns: Vec::with_capacity(n),
            handled: 0,
        }
    }

    pub fn handle(&mut self, payload: &[u8]) {
        let now = sys::mono_ns();
        if let Some(stamp) = payload.get(..8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(stamp);
            self.ns.push(now.saturating_sub(u64::from_le_bytes(b)));
        }
        self.handled += 1;
    }
}

/// What one client's co-run measured.
pub struct CorunOut {
    pub computed: Computed,
    pub lat: Latencies,
}
