//! Readings from /proc: CPU time (schedstat, or utime + stime), run-queue waits, stolen time,
//! peak RSS (VmHWM), process trees, listening sockets, and the machine facts a result is only
//! worth anything next to.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Clock ticks per second of the `utime`/`stime` fields in /proc/PID/stat (USER_HZ).
pub fn clock_ticks_per_sec() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t.unsigned_abs(),
        _ => 100,
    }
}

/// The fields of /proc/PID/stat after the command name (which may itself contain spaces
/// and parentheses, so we split after its last `)`). Index 0 is field 3 (`state`).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .with_context(|| format!("unexpected format of {path}"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of one process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let f = stat_fields(pid)?;
    // Fields 14 and 15 of the full line: 11 and 12 here.
    let parse = |i: usize| -> Result<u64> {
        f.get(i)
            .with_context(|| format!("/proc/{pid}/stat: missing field {}", i + 3))?
            .parse::<u64>()
            .with_context(|| format!("/proc/{pid}/stat: field {} is not a number", i + 3))
    };
    Ok(parse(11)? + parse(12)?)
}

/// The parent PID of a process.
fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid).ok()?.get(1)?.parse().ok()
}

/// `pid` and all its descendants (nginx's master and its workers), found by walking the
/// parent links of every process in /proc.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of = BTreeMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                && let Some(pp) = ppid(p)
            {
                parent_of.insert(p, pp);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&current) = tree.get(i) {
        for (&child, &parent) in &parent_of {
            if parent == current && !tree.contains(&child) {
                tree.push(child);
            }
        }
        i += 1;
    }
    tree
}

/// Peak resident set size of one process, in KiB (VmHWM in /proc/PID/status).
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .with_context(|| format!("{path} has no VmHWM"))?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse()
        .with_context(|| format!("{path}: VmHWM {line:?} is not a number"))
}

/// One thread's line of /proc/PID/task/TID/schedstat: the scheduler's own exact counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedStat {
    /// Time it ran (user and kernel together), ns.
    pub run_ns: u64,
    /// Time it waited on a run queue, runnable but not running, ns.
    pub wait_ns: u64,
}

/// The schedstat of each live thread of `pid`.
pub fn thread_schedstats(pid: u32) -> Result<Vec<(u32, SchedStat)>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry.with_context(|| format!("reading {dir}"))?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread may exit between the listing and the read: it is simply not there.
        let Ok(text) = fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(stat) = parse_schedstat(&text) {
            out.push((tid, stat));
        }
    }
    Ok(out)
}

/// A schedstat line: "run_ns wait_ns timeslices".
pub fn parse_schedstat(text: &str) -> Option<SchedStat> {
    let mut f = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    Some(SchedStat {
        run_ns: f.next()??,
        wait_ns: f.next()??,
    })
}

/// Ticks (USER_HZ) the hypervisor stole from each CPU, by CPU number: the `steal` column of
/// the `cpuN` lines of /proc/stat. Time stolen inside a window is time no process of ours
/// could run, however idle the guest looked.
pub fn steal_ticks() -> Result<Vec<u64>> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(parse_steal(&text))
}

fn parse_steal(stat: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(cpu) = f
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // user nice system idle iowait irq softirq steal
        let steal = f.nth(7).and_then(|n| n.parse().ok()).unwrap_or(0);
        if out.len() <= cpu {
            out.resize(cpu + 1, 0);
        }
        if let Some(slot) = out.get_mut(cpu) {
            *slot = steal;
        }
    }
    out
}

/// CPU time of a set of processes at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    pub at: Instant,
    /// utime + stime, clock ticks (10 ms each): whole processes, exited threads included.
    pub ticks: u64,
    /// Schedstat per live thread; `None` where schedstat cannot be read.
    pub threads: Option<BTreeMap<u32, SchedStat>>,
}

impl CpuSnapshot {
    /// Sums the processes' CPU ticks. A process that exited in between reads as 0: the
    /// caller notices a dead target through its own health checks.
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        let ticks = pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).sum();
        let threads = pids
            .iter()
            .map(|&p| thread_schedstats(p))
            .collect::<Result<Vec<_>>>()
            .ok()
            .map(|per_pid| per_pid.into_iter().flatten().collect());
        CpuSnapshot {
            at: Instant::now(),
            ticks,
            threads,
        }
    }

    /// The threads' schedstat growth from `self` to `end`, when every thread of the start is
    /// still there at the end (a thread that exited took its counts with it).
    fn threads_until(&self, end: &CpuSnapshot) -> Option<SchedStat> {
        let (a, b) = (self.threads.as_ref()?, end.threads.as_ref()?);
        if !a.keys().all(|tid| b.contains_key(tid)) {
            return None;
        }
        Some(b.iter().fold(SchedStat::default(), |sum, (tid, now)| {
            let was = a.get(tid).copied().unwrap_or_default();
            SchedStat {
                run_ns: sum.run_ns + now.run_ns.saturating_sub(was.run_ns),
                wait_ns: sum.wait_ns + now.wait_ns.saturating_sub(was.wait_ns),
            }
        }))
    }

    /// Seconds of CPU used between `self` and the later `end`. From the threads' exact run
    /// times when every thread of the start is still there at the end (ticks are 10 ms: at
    /// 2,000 req/s in a 2 s window that is 2.5 µs per request), from the ticks otherwise (a
    /// thread that exited took its run time with it).
    pub fn cpu_secs_until(&self, end: &CpuSnapshot) -> f64 {
        match self.threads_until(end) {
            Some(s) => s.run_ns as f64 / 1e9,
            None => end.ticks.saturating_sub(self.ticks) as f64 / clock_ticks_per_sec() as f64,
        }
    }

    /// Seconds the threads spent runnable but waiting for a CPU between `self` and `end`
    /// (summed over threads); `None` when a thread of the start has gone.
    pub fn wait_secs_until(&self, end: &CpuSnapshot) -> Option<f64> {
        self.threads_until(end).map(|s| s.wait_ns as f64 / 1e9)
    }
}

/// True when a TCP socket is in LISTEN state on exactly `addr` (IPv4), read from
/// /proc/net/tcp: a readiness check that sends the process nothing (so it costs it no
/// instructions under callgrind).
pub fn is_listening(addr: SocketAddr) -> Result<bool> {
    let SocketAddr::V4(v4) = addr else {
        bail!("only IPv4 addresses are checked: {addr}");
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let text = fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    Ok(text.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1);
        let state = f.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    }))
}

/// What a result depends on besides the code: recorded beside every result.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: String,
    /// 1-minute load average when the run started: above ~0.5 the machine was not quiet.
    pub load_average_1m: f64,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
}

impl MachineInfo {
    pub fn read(workspace: &std::path::Path) -> MachineInfo {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(workspace)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        MachineInfo {
            cpus,
            kernel,
            cpu_model,
            load_average_1m: load_average(),
            git_commit: git(&["rev-parse", "HEAD"]),
            git_dirty: git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        }
    }
}

/// The 1-minute load average (0 when unreadable).
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Pins the calling thread (and every thread it creates afterwards) to one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} out of range"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the load generator to CPU {cpu}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(vm_hwm_kib(me).unwrap_or(0) > 0);
        assert_eq!(process_tree(me).first(), Some(&me));
    }

    #[test]
    fn cpu_time_is_counted_per_thread_in_nanoseconds() -> Result<()> {
        assert_eq!(
            parse_schedstat("168501150 17388702 391\n"),
            Some(SchedStat {
                run_ns: 168_501_150,
                wait_ns: 17_388_702
            })
        );
        assert_eq!(parse_schedstat(""), None);
        let (me, tid) = (
            std::process::id(),
            nix::unistd::gettid().as_raw().unsigned_abs(),
        );
        let mine = || -> Result<u64> {
            thread_schedstats(me)?
                .into_iter()
                .find_map(|(t, s)| (t == tid).then_some(s.run_ns))
                .context("this thread is not listed")
        };
        let thread_cpu = || -> Result<std::time::Duration> {
            let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
            Ok(std::time::Duration::from(t))
        };
        let (before, cpu_before) = (mine()?, thread_cpu()?);
        // Spin until this thread has run 30 ms (however busy the machine is).
        let mut x = 0u64;
        while thread_cpu()? - cpu_before < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let spun = mine()?.saturating_sub(before);
        let ran = (thread_cpu()? - cpu_before).as_nanos() as u64;
        // The scheduler's count agrees with the thread's own clock to well under a tick (10 ms).
        assert!(
            spun.abs_diff(ran) < 2_000_000,
            "schedstat {spun} ns, thread clock {ran} ns"
        );
        Ok(())
    }

    #[test]
    fn exact_run_times_unless_a_thread_left() {
        let snap = |ticks, threads: &[(u32, u64)]| CpuSnapshot {
            at: Instant::now(),
            ticks,
            threads: Some(
                threads
                    .iter()
                    .map(|&(tid, ns)| {
                        let s = SchedStat {
                            run_ns: ns,
                            wait_ns: ns / 10,
                        };
                        (tid, s)
                    })
                    .collect(),
            ),
        };
        let start = snap(10, &[(1, 1_000_000), (2, 5_000_000)]);
        // Thread 3 started in between: all of its time is new.
        let end = snap(12, &[(1, 4_000_000), (2, 5_500_000), (3, 250_000)]);
        assert!((start.cpu_secs_until(&end) - 0.00375).abs() < 1e-12);
        let waited = start.wait_secs_until(&end).unwrap_or(f64::NAN);
        assert!((waited - 0.000375).abs() < 1e-12, "{waited}");
        // Thread 2 exited: its time is gone from the threads, so the ticks decide.
        let end = snap(12, &[(1, 4_000_000)]);
        let by_ticks = 2.0 / clock_ticks_per_sec() as f64;
        assert!((start.cpu_secs_until(&end) - by_ticks).abs() < 1e-12);
        assert_eq!(start.wait_secs_until(&end), None);
    }

    #[test]
    fn steal_per_cpu() -> Result<()> {
        let stat = "cpu  446377 0 193491 2193408 1581 0 101061 4199 0 0\n\
                    cpu0 180395 0 67728 1170649 540 0 33176 2304 0 0\n\
                    cpu1 265981 0 125763 1022759 1040 0 67884 1895 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_steal(stat), vec![2304, 1895]);
        assert!(!steal_ticks()?.is_empty());
        Ok(())
    }

    #[test]
    fn sees_a_listening_socket() -> Result<()> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        assert!(is_listening(l.local_addr()?)?);
        let port = l.local_addr()?.port();
        drop(l);
        assert!(!is_listening(SocketAddr::from(([127, 0, 0, 1], port)))?);
        Ok(())
    }
}
