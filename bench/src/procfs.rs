//! What Linux's /proc says about a process: CPU time, peak memory, and where the broker runs.

use std::process::Command;

/// Converts `/proc/<pid>/stat` clock ticks to time.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    /// `sysconf(_SC_CLK_TCK)`: ticks per second of utime and stime.
    pub ticks_per_second: u64,
    /// True when `getconf CLK_TCK` could not be run and Linux's usual 100 is assumed.
    pub assumed: bool,
}

impl CpuClock {
    /// Asks `getconf CLK_TCK` (this crate has no libc binding); assumes 100 if that fails.
    pub fn detect() -> CpuClock {
        let asked = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|&ticks| ticks > 0);
        match asked {
            Some(ticks) => CpuClock {
                ticks_per_second: ticks,
                assumed: false,
            },
            None => CpuClock {
                ticks_per_second: 100,
                assumed: true,
            },
        }
    }

    /// CPU milliseconds between two tick readings, if both were taken.
    pub fn ms_between(&self, before: Option<u64>, after: Option<u64>) -> Option<f64> {
        let (before, after) = (before?, after?);
        Some(after.saturating_sub(before) as f64 * 1000.0 / self.ticks_per_second as f64)
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces), from the
/// state (field 3) on.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU time of a process, in clock ticks (fields 14 and 15 of stat).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// True when the process has exited but was not reaped yet.
pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state == "Z")
}

/// User plus system CPU time of every PostgreSQL process on this machine (the postmaster, its
/// background workers and every backend), in clock ticks; `None` when none runs here. A backend
/// that exits between two readings takes its ticks with it: the service's history connection
/// lives as long as the service, so a phase loses nothing of it.
pub fn postgres_ticks() -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == "postgres");
        if is_postgres && let Some(ticks) = cpu_ticks(pid) {
            *total.get_or_insert(0) += ticks;
        }
    }
    total
}

/// Peak resident set size (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The local RabbitMQ node (`beam.smp`), if it runs on this machine and /proc shows it.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
}

/// The number of the write-ahead log the broker's quorum queues write now (`…/quorum/<node>/
/// 00000008.wal`, read from the broker's open files). Every queue waits while the broker rolls it
/// over to the next one and flushes the old one into segment files, so a roll-over during a
/// phase shows in its tail latency whatever the client does.
pub fn broker_wal(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.components().any(|c| c.as_os_str() == "quorum"))
        .filter(|target| target.extension().is_some_and(|ext| ext == "wal"))
        .filter_map(|target| target.file_stem()?.to_str()?.parse::<u64>().ok())
        .max()
}

/// Roll-overs between two [`broker_wal`] readings, when both were taken.
pub fn wal_rollovers(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before))
}

/// Asks the local broker to start a new quorum write-ahead log now (`rabbitmqctl eval
/// 'ra_log_wal:force_roll_over(ra_log_wal).'`), so that the roll-over the broker would otherwise
/// make in the middle of a phase, every 512 MiB written, falls between phases. A phase of a few
/// seconds that caught one would count a pause that the broker makes about once a minute at
/// these rates as 5 % of its events. Says why when it could not.
pub async fn roll_wal_over() -> Result<(), String> {
    let ran = tokio::task::spawn_blocking(|| {
        Command::new("rabbitmqctl")
            .args(["eval", "ra_log_wal:force_roll_over(ra_log_wal)."])
            .output()
    })
    .await
    .map_err(|e| format!("rabbitmqctl did not finish: {e}"))?
    .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    let said = String::from_utf8_lossy(&ran.stdout);
    if ran.status.success() && said.trim() == "ok" {
        Ok(())
    } else {
        let why = String::from_utf8_lossy(&ran.stderr);
        Err(format!(
            "rabbitmqctl eval exited with {}: {}",
            ran.status,
            if why.trim().is_empty() {
                said.trim()
            } else {
                why.trim()
            }
        ))
    }
}

/// Busy CPU time of the whole machine, in clock ticks: every state of `/proc/stat`'s `cpu` line
/// but idle and iowait.
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    Some(total - values.get(3)? - values.get(4)?)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU times (clock ticks) of everything the bench watches, taken at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// The service.
    service: Option<u64>,
    /// The broker, when it runs here.
    broker: Option<u64>,
    /// PostgreSQL, when it runs here (run history's writes).
    postgres: Option<u64>,
    /// This process (publisher, sink).
    bench: Option<u64>,
    /// The whole machine, busy time.
    machine: Option<u64>,
    /// The broker's quorum write-ahead log number.
    wal: Option<u64>,
}

/// CPU use over an interval, per action.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CpuUse {
    /// The service's CPU ms per action.
    pub service_ms: Option<f64>,
    /// The broker's CPU ms per action.
    pub broker_ms: Option<f64>,
    /// PostgreSQL's CPU ms per action (every postgres process: run history's writes).
    pub postgres_ms: Option<f64>,
    /// The bench's CPU ms per action (publisher and sink).
    pub bench_ms: Option<f64>,
    /// Cores used by every other process meanwhile (noise in the figures).
    pub other_cores: Option<f64>,
    /// How many times the broker rolled its quorum write-ahead log over meanwhile.
    pub wal_rollovers: Option<u64>,
}

impl CpuSample {
    /// Reads the service's, the broker's, this process's and the machine's CPU time now.
    pub fn take(service: u32, broker: Option<u32>) -> CpuSample {
        CpuSample {
            service: cpu_ticks(service),
            broker: broker.and_then(cpu_ticks),
            postgres: postgres_ticks(),
            bench: cpu_ticks(std::process::id()),
            machine: machine_busy_ticks(),
            wal: broker.and_then(broker_wal),
        }
    }

    /// What was used from `self` to `later`, over `actions` actions and `secs` seconds.
    pub fn until(&self, later: &CpuSample, clock: &CpuClock, actions: u64, secs: f64) -> CpuUse {
        let service = clock.ms_between(self.service, later.service);
        let broker = clock.ms_between(self.broker, later.broker);
        let postgres = clock.ms_between(self.postgres, later.postgres);
        let bench = clock.ms_between(self.bench, later.bench);
        let machine = clock.ms_between(self.machine, later.machine);
        let per_action = |ms: Option<f64>| ms.map(|ms| ms / actions.max(1) as f64);
        CpuUse {
            service_ms: per_action(service),
            broker_ms: per_action(broker),
            postgres_ms: per_action(postgres),
            bench_ms: per_action(bench),
            other_cores: machine.map(|busy| {
                let ours = [service, broker, postgres, bench]
                    .iter()
                    .map(|ms| ms.unwrap_or(0.0))
                    .sum::<f64>();
                (busy - ours).max(0.0) / 1000.0 / secs
            }),
            wal_rollovers: wal_rollovers(self.wal, later.wal),
        }
    }
}

/// Waits until the broker is idle (under `idle_cores` over a 250 ms window) or `max` has passed,
/// so that a phase does not pay for the previous one's leftovers (a quorum queue writes its
/// segments and snapshots for a while after a burst). Returns how long it waited.
pub async fn wait_for_idle_broker(
    broker: Option<u32>,
    clock: &CpuClock,
    idle_cores: f64,
    max: std::time::Duration,
) -> std::time::Duration {
    const WINDOW: std::time::Duration = std::time::Duration::from_millis(250);
    let started = std::time::Instant::now();
    let Some(pid) = broker else {
        return std::time::Duration::ZERO;
    };
    while started.elapsed() < max {
        let before = cpu_ticks(pid);
        tokio::time::sleep(WINDOW).await;
        match clock.ms_between(before, cpu_ticks(pid)) {
            Some(ms) if ms / (WINDOW.as_secs_f64() * 1000.0) < idle_cores => break,
            Some(_) => {}
            None => break,
        }
    }
    started.elapsed()
}
