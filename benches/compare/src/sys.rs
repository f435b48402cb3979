//! Linux process and thread accounting (`/proc`, `getrusage`) and CPU affinity.

use std::fs;
use std::io;

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`, first field).
pub fn thread_cpu_ns() -> u64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One thread of this process, as `/proc/self/task/<tid>` shows it.
#[derive(Debug, Clone)]
pub struct Task {
    pub tid: u32,
    pub name: String,
    pub cpu_ns: u64,
    pub ctx_switches: u64,
}

/// Every live thread of this process.
pub fn tasks() -> Vec<Task> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let base = entry.path();
        let cpu_ns = fs::read_to_string(base.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let status = fs::read_to_string(base.join("status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let ctx_switches = field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:");
        let name = fs::read_to_string(base.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        out.push(Task {
            tid,
            name,
            cpu_ns,
            ctx_switches,
        });
    }
    out
}

/// CPU time and context switches between two snapshots, over the threads present in both,
/// leaving out `exclude` (a tid). Returns (cpu ns, context switches, thread names).
pub fn task_delta(
    before: &[Task],
    after: &[Task],
    exclude: Option<u32>,
) -> (u64, u64, Vec<String>) {
    let mut cpu = 0;
    let mut ctx = 0;
    let mut names = Vec::new();
    for a in after {
        if Some(a.tid) == exclude {
            continue;
        }
        if let Some(b) = before.iter().find(|b| b.tid == a.tid) {
            cpu += a.cpu_ns.saturating_sub(b.cpu_ns);
            ctx += a.ctx_switches.saturating_sub(b.ctx_switches);
            names.push(a.name.clone());
        }
    }
    (cpu, ctx, names)
}

/// The main thread's tid (the process id).
pub fn main_tid() -> u32 {
    std::process::id()
}

/// Resident set size of this process, KiB.
pub fn rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of this whole process (finished threads included), ns.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}

/// Context switches (voluntary + involuntary) of this whole process so far.
pub fn process_ctx_switches() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

/// Pins the calling thread (and so every thread it spawns afterwards) to `cpus`.
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_setaffinity reads it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `c` is checked against the set's size.
        if c < libc::CPU_SETSIZE as usize {
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPUs the calling thread may run on.
pub fn affinity() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes into the set we pass.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The CPU model and logical CPU count, for the report.
pub fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    format!("{model}, {n} logical CPUs, Linux {kernel}")
}

/// With `NWSC_SMAPS_DIR` set, copies `/proc/self/smaps` to `<dir>/<tag>.smaps` (to see
/// where an RSS figure goes: heap, thread stacks, arenas). Does nothing otherwise.
pub fn dump_smaps(tag: &str) {
    if let Some(dir) = std::env::var_os("NWSC_SMAPS_DIR") {
        let dst = std::path::Path::new(&dir).join(format!("{tag}.{}.smaps", std::process::id()));
        if let Err(e) = fs::copy("/proc/self/smaps", &dst) {
            eprintln!("cannot write {}: {e}", dst.display());
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: clock_gettime only writes into the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC`, ns: one clock for every process on the machine, so the server can
/// stamp a payload and the client read the stamp (corun's event latency).
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread so far, ns (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cputime_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Waits until `fd` is readable or `timeout` has passed (`ppoll`: nanosecond timeouts,
/// where `SO_RCVTIMEO` and `poll` round to jiffies or milliseconds).
pub fn wait_readable(fd: i32, timeout: std::time::Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a timespec, both live across the call.
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
}
