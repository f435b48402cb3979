//! What it costs this machine to hand a message from one thread to another and back:
//! the floor under rtt's CPU per round trip for any client whose I/O runs on a thread
//! other than the caller's (see the bench notes, stop 25).
//!
//! Two threads take turns, 50,000 rounds (two crossings each), both on CPU 0 and then on
//! CPUs 0 and 1: with `park` / `unpark` (the futex that every blocking hand-over ends in:
//! crossbeam's, std's), and with a crossbeam `bounded(1)` channel each way (which spins
//! and yields before it parks). Reported: wall time and the process's CPU time
//! (`getrusage`, both threads) per round, medians of 5 runs.
//!
//! ```sh
//! cargo run --release -p nwebsocket-compare --bin crossing
//! ```

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

const ROUNDS: u64 = 50_000;
const RUNS: usize = 5;

fn main() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    println!("rounds of two crossings; median of {RUNS} runs of {ROUNDS} rounds");
    println!("{:<34} {:>12} {:>12}", "", "wall us", "cpu us");
    for (placement, other) in [("one CPU", 0), ("two CPUs", 1)] {
        if other >= cpus {
            println!("{placement}: skipped ({cpus} CPU)");
            continue;
        }
        let park = median((0..RUNS).map(|_| park_rounds(other)).collect());
        let channel = median((0..RUNS).map(|_| channel_rounds(other)).collect());
        row(&format!("park/unpark, {placement}"), park);
        row(&format!("crossbeam bounded(1), {placement}"), channel);
    }
}

fn row(label: &str, (wall, cpu): (f64, f64)) {
    println!("{label:<34} {wall:>12.2} {cpu:>12.2}");
}

/// Turns taken with `park` / `unpark`: `turn` counts hand-overs, odd for the other
/// thread. Returns (wall, CPU) per round, in µs.
fn park_rounds(other_cpu: usize) -> (f64, f64) {
    pin(0);
    let turn = Arc::new(AtomicU64::new(0));
    let main = thread::current();
    let theirs = Arc::clone(&turn);
    let other = thread::spawn(move || {
        pin(other_cpu);
        for round in 0..ROUNDS {
            while theirs.load(SeqCst) != 2 * round + 1 {
                thread::park();
            }
            theirs.store(2 * round + 2, SeqCst);
            main.unpark();
        }
    });
    let started = (Instant::now(), cpu_seconds());
    for round in 0..ROUNDS {
        turn.store(2 * round + 1, SeqCst);
        other.thread().unpark();
        while turn.load(SeqCst) != 2 * round + 2 {
            thread::park();
        }
    }
    let per_round = per_round(started);
    other.join().expect("the other thread");
    per_round
}

/// Turns taken over two crossbeam channels of one slot.
fn channel_rounds(other_cpu: usize) -> (f64, f64) {
    pin(0);
    let (to_other, from_main) = crossbeam_channel::bounded::<u64>(1);
    let (to_main, from_other) = crossbeam_channel::bounded::<u64>(1);
    let other = thread::spawn(move || {
        pin(other_cpu);
        for n in from_main {
            if to_main.send(n).is_err() {
                break;
            }
        }
    });
    let started = (Instant::now(), cpu_seconds());
    for round in 0..ROUNDS {
        to_other.send(round).expect("the other thread");
        from_other.recv().expect("the other thread");
    }
    let per_round = per_round(started);
    drop(to_other);
    other.join().expect("the other thread");
    per_round
}

fn per_round((wall, cpu): (Instant, f64)) -> (f64, f64) {
    let n = ROUNDS as f64;
    (
        wall.elapsed().as_secs_f64() * 1e6 / n,
        (cpu_seconds() - cpu) * 1e6 / n,
    )
}

fn median(mut runs: Vec<(f64, f64)>) -> (f64, f64) {
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    runs[runs.len() / 2]
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only
    // read and write the set passed to them.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The process's CPU time so far (every thread, user and system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
