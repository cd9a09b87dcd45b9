//! The figures of a run, printed as a table for people and as one JSON object for programs.

use std::fmt::Write as _;

use serde::Serialize;

use crate::procfs::CpuUse;

// Issue 17's targets.
/// Actions/s must reach this share of the broker's ceiling (in actions: messages/s ÷ 2).
const TARGET_RATIO_PCT: f64 = 85.0;
/// With K > 1 calls per event: calls/s against the ceiling's rate for 1 + K messages per K calls.
const TARGET_FANOUT_RATIO_PCT: f64 = 80.0;
/// The service's CPU per action at full speed, one action per event.
const TARGET_SERVICE_CPU_MS: f64 = 0.08;
/// p50 publish → arrival at half the maximum rate.
const TARGET_P50_MS: f64 = 4.0;
/// p99 publish → arrival at half the maximum rate.
const TARGET_P99_MS: f64 = 10.0;
/// Peak resident memory of the service, without extra workflows or run history.
const TARGET_RSS_MIB: f64 = 32.0;

/// The broker's ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Messages published and acked (2N).
    pub messages: u64,
    /// First publish → last ack.
    pub secs: f64,
    /// `messages / secs`.
    pub msgs_per_s: f64,
    /// The broker's CPU per message, when its process is visible in /proc.
    pub broker_cpu_ms_per_msg: Option<f64>,
    /// Publisher confirms outstanding at once.
    pub window: usize,
    /// The consumer's prefetch.
    pub prefetch: u16,
    /// Deliveries acked at once (`multiple`).
    pub ack_batch: u64,
    /// How many times the broker rolled its quorum write-ahead log over meanwhile.
    pub wal_rollovers: Option<u64>,
}

/// The bare relay at full speed: the service's two hops, confirms and coalesced acks, no work.
#[derive(Debug, Clone, Serialize)]
pub struct Relay {
    /// Events relayed (each as `actions_per_event` copies).
    pub events: u64,
    /// First publish → last copy's arrival.
    pub secs: f64,
    /// Copies (actions) per second.
    pub actions_per_s: f64,
    /// The broker's CPU per copy.
    pub broker_cpu_ms_per_action: Option<f64>,
    /// The bench's CPU per copy (publisher, relay and consumer in one process).
    pub bench_cpu_ms_per_action: Option<f64>,
}

/// The service's settings that matter for speed, as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `worker.concurrency`.
    pub concurrency: usize,
    /// `worker.prefetch`.
    pub worker_prefetch: u16,
    /// `router.prefetch`.
    pub router_prefetch: u16,
    /// `router.publish_linger`, in milliseconds.
    pub publish_linger_ms: f64,
    /// Tokio worker threads, when set (default: one per CPU).
    pub threads: Option<usize>,
    /// True when all of these are the service's defaults.
    pub defaults: bool,
    /// Run history (SPEC §9) on, into this PostgreSQL schema.
    pub history_schema: Option<String>,
}

/// Run history's own figures at the end of a run with history on (from the service's /metrics).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRows {
    /// `switchyard_history_rows_written_total`.
    pub written: u64,
    /// `switchyard_history_dropped_total`.
    pub dropped: u64,
}

/// The throughput phase.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Events published (each makes one action).
    pub events: u64,
    /// First publish → last arrival at the sink.
    pub secs: f64,
    /// Events per second, end to end.
    pub events_per_s: f64,
    /// Actions per second (one per event here).
    pub actions_per_s: f64,
    /// How fast the bench published (confirmed), for comparison.
    pub publish_per_s: f64,
    /// CPU (user + system) per action of the service, the broker and the bench.
    pub cpu: CpuUse,
    /// The service's mean HTTP call to the sink (`switchyard_action_duration_seconds`).
    pub mean_call_ms: Option<f64>,
}

/// The latency phase.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Events per second sent.
    pub rate: f64,
    /// Calls measured (one per event, or `--actions-per-event` per event).
    pub events: usize,
    /// Median publish → arrival.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
    /// The service's mean HTTP call to the sink meanwhile, when measured.
    pub mean_call_ms: Option<f64>,
    /// CPU per action meanwhile, when measured.
    pub cpu: Option<CpuUse>,
}

impl Latency {
    /// Percentiles of latencies in µs, sorted ascending (nearest rank).
    pub fn from_sorted(rate: f64, sorted_us: &[u64]) -> Latency {
        let at = |q: f64| -> f64 {
            if sorted_us.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
            sorted_us[rank - 1] as f64 / 1000.0
        };
        Latency {
            rate,
            events: sorted_us.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            mean_call_ms: None,
            cpu: None,
        }
    }
}

/// One target and how the run did against it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: &'static str,
    /// The measured value, in `unit`.
    pub measured: f64,
    /// The limit.
    pub limit: f64,
    /// Its unit.
    pub unit: &'static str,
    /// PASS or MISS.
    pub result: &'static str,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// N.
    pub events: u64,
    /// M.
    pub latency_events: u64,
    /// Calls per event (`--actions-per-event`).
    pub actions_per_event: u64,
    /// Workflows loaded beside the bench's own (`--workflows`).
    pub workflows: u64,
    /// A SIGHUP reload of all of them at the end, files unchanged: (milliseconds, succeeded).
    pub reload: Option<(f64, bool)>,
    /// The same after every workflow file changed (all compiled again).
    pub reload_changed: Option<(f64, bool)>,
    /// The size of one event, in bytes.
    pub event_bytes: usize,
    /// CPUs this machine offers.
    pub cpus: usize,
    /// Clock ticks per second used to read /proc CPU times.
    pub clk_tck: u64,
    /// True when `clk_tck` is Linux's usual 100, assumed because `getconf` failed.
    pub clk_tck_assumed: bool,
    /// The broker's ceiling.
    pub ceiling: Option<Ceiling>,
    /// The bare relay at full speed.
    pub relay: Option<Relay>,
    /// The service's settings.
    pub settings: Option<Settings>,
    /// The throughput phase.
    pub throughput: Option<Throughput>,
    /// The latency phase.
    pub latency: Option<Latency>,
    /// The broker alone doing what the service does (two hops, confirm then ack, coalesced
    /// acks) at the latency phase's rate, with no work in between.
    pub broker_floor: Option<Latency>,
    /// The latency phase split at the action message (seen on a tap queue): publish → action
    /// message (event hop + router), and action message → sink (action hop + worker + call).
    pub split: Option<(Latency, Latency)>,
    /// The service's peak resident memory (VmHWM), KiB.
    pub rss_peak_kib: Option<u64>,
    /// The peak before the reloads of `--workflows` (the load at start and the traffic).
    pub rss_before_reload_kib: Option<u64>,
    /// (events that reached the sink more than once, requests the sink could not read).
    pub duplicates: (u64, u64),
    /// The 1-minute load average when the run started.
    pub load_average: Option<f64>,
    /// What the bench did with the broker's quorum write-ahead log between phases.
    pub wal: String,
    /// The service's own count of HTTP attempts by outcome.
    pub attempts: Vec<(String, u64)>,
    /// Messages left in the router, dead-letter and rejected queues at the end.
    pub leftovers: Vec<(String, u32)>,
    /// Run history's rows, when it was on.
    pub history: Option<HistoryRows>,
    /// What the clean-up could not do, or kept.
    pub cleanup: Vec<String>,
}

impl Report {
    /// An empty report for a run of `events` and `latency_events`.
    pub fn new(events: u64, latency_events: u64, event_bytes: usize) -> Report {
        Report {
            events,
            latency_events,
            actions_per_event: 1,
            workflows: 0,
            reload: None,
            reload_changed: None,
            event_bytes,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            clk_tck: 100,
            clk_tck_assumed: true,
            ceiling: None,
            relay: None,
            settings: None,
            throughput: None,
            latency: None,
            broker_floor: None,
            split: None,
            rss_peak_kib: None,
            rss_before_reload_kib: None,
            duplicates: (0, 0),
            load_average: None,
            wal: String::new(),
            attempts: Vec::new(),
            leftovers: Vec::new(),
            history: None,
            cleanup: Vec::new(),
        }
    }

    /// The most actions/s the ceiling allows: K calls cost 1 + K messages (K = 1: msgs/s ÷ 2).
    fn ceiling_actions_per_s(&self, ceiling: &Ceiling) -> f64 {
        let k = self.actions_per_event.max(1) as f64;
        ceiling.msgs_per_s * k / (1.0 + k)
    }

    /// actions/s ÷ the ceiling's actions/s, in percent.
    fn ratio_pct(&self) -> Option<f64> {
        let ceiling = self.ceiling.as_ref()?;
        let throughput = self.throughput.as_ref()?;
        Some(100.0 * throughput.actions_per_s / self.ceiling_actions_per_s(ceiling))
    }

    fn rss_mib(&self) -> Option<f64> {
        self.rss_peak_kib.map(|kib| kib as f64 / 1024.0)
    }

    /// The three targets of issue 2, for what was measured.
    pub fn targets(&self) -> Vec<Target> {
        let target = |name, measured: f64, limit, unit, pass: bool| Target {
            name,
            measured,
            limit,
            unit,
            result: if pass { "PASS" } else { "MISS" },
        };
        let mut targets = Vec::new();
        if let Some(ratio) = self.ratio_pct() {
            let limit = if self.actions_per_event > 1 {
                TARGET_FANOUT_RATIO_PCT
            } else {
                TARGET_RATIO_PCT
            };
            targets.push(target(
                "actions/s vs broker ceiling (K calls per 1+K msgs)",
                ratio,
                limit,
                "%",
                ratio >= limit,
            ));
        }
        if self.actions_per_event == 1
            && let Some(cpu) = self.throughput.as_ref().and_then(|t| t.cpu.service_ms)
        {
            targets.push(target(
                "service CPU per action at full speed",
                cpu,
                TARGET_SERVICE_CPU_MS,
                "ms",
                cpu <= TARGET_SERVICE_CPU_MS,
            ));
        }
        if let Some(latency) = &self.latency {
            targets.push(target(
                "p50 publish → arrival at half rate",
                latency.p50_ms,
                TARGET_P50_MS,
                "ms",
                latency.p50_ms <= TARGET_P50_MS,
            ));
            targets.push(target(
                "p99 publish → arrival at half rate",
                latency.p99_ms,
                TARGET_P99_MS,
                "ms",
                latency.p99_ms <= TARGET_P99_MS,
            ));
        }
        let plain = self.workflows == 0
            && self
                .settings
                .as_ref()
                .is_none_or(|s| s.history_schema.is_none());
        if plain && let Some(rss) = self.rss_mib() {
            targets.push(target(
                "peak RSS of the service",
                rss,
                TARGET_RSS_MIB,
                "MiB",
                rss <= TARGET_RSS_MIB,
            ));
        }
        targets
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nswitchyard-bench: N = {} events, M = {} latency events, {} B each, {} action(s) per event, quorum queues, {} CPUs",
            self.events, self.latency_events, self.event_bytes, self.actions_per_event, self.cpus
        );
        if let Some(load) = self.load_average {
            let _ = writeln!(out, "machine load average at the start: {load:.2}");
        }
        if !self.wal.is_empty() {
            let _ = writeln!(out, "broker write-ahead log: {}", self.wal);
        }
        if let Some(s) = &self.settings {
            let _ = writeln!(
                out,
                "service: worker.concurrency {}, worker.prefetch {}, router.prefetch {}, router.publish_linger {} ms, tokio worker threads {}{}",
                s.concurrency,
                s.worker_prefetch,
                s.router_prefetch,
                s.publish_linger_ms,
                s.threads
                    .map_or_else(|| format!("{}, one per CPU", self.cpus), |t| t.to_string()),
                if s.defaults {
                    " (all its defaults)"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                out,
                "run history: {}",
                s.history_schema.as_deref().map_or_else(
                    || "off".to_owned(),
                    |schema| format!("on, into PostgreSQL schema {schema}")
                )
            );
        }
        let _ = writeln!(out);
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                out,
                "broker ceiling  {} msgs in {:.2} s = {:.0} msgs/s  (≙ {:.0} actions/s at {} msgs per {} call(s))",
                c.messages,
                c.secs,
                c.msgs_per_s,
                self.ceiling_actions_per_s(c),
                1 + self.actions_per_event,
                self.actions_per_event
            );
            let _ = writeln!(
                out,
                "                confirm window {}, consumer prefetch {}, acks multiple={} every {}; broker CPU {}/msg",
                c.window,
                c.prefetch,
                c.ack_batch > 1,
                c.ack_batch,
                ms(c.broker_cpu_ms_per_msg)
            );
            wal_line(&mut out, c.wal_rollovers);
        }
        if let Some(r) = &self.relay {
            let _ = writeln!(
                out,
                "bare relay      {} events, the same 2 hops/confirms/acks, no work: {:.0} actions/s{}",
                r.events,
                r.actions_per_s,
                self.ceiling.as_ref().map_or_else(String::new, |c| format!(
                    " = {:.1} % of the ceiling",
                    100.0 * r.actions_per_s / self.ceiling_actions_per_s(c)
                ))
            );
            let _ = writeln!(
                out,
                "                CPU per action: broker {}, bench (publisher + relay + consumer) {}",
                ms(r.broker_cpu_ms_per_action),
                ms(r.bench_cpu_ms_per_action)
            );
        }
        if let Some(t) = &self.throughput {
            let _ = writeln!(
                out,
                "throughput      {} events in {:.2} s = {:.0} events/s = {:.0} actions/s  (published at {:.0}/s){}",
                t.events,
                t.secs,
                t.events_per_s,
                t.actions_per_s,
                t.publish_per_s,
                self.relay.as_ref().map_or_else(String::new, |r| format!(
                    "\n                = {:.1} % of the bare relay",
                    100.0 * t.actions_per_s / r.actions_per_s
                ))
            );
            cpu_lines(&mut out, &t.cpu, t.actions_per_s, t.mean_call_ms);
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                out,
                "latency         {} calls, events at {:.0}/s: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.events, l.rate, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
            if let Some(cpu) = &l.cpu {
                cpu_lines(&mut out, cpu, l.rate, l.mean_call_ms);
            }
        }
        if let Some((router, worker)) = &self.split {
            let _ = writeln!(
                out,
                "                split: publish → action message p50 {:.1} / p99 {:.1} ms (event hop + router)\n                       action message → sink p50 {:.1} / p99 {:.1} ms (action hop + worker + call)",
                router.p50_ms, router.p99_ms, worker.p50_ms, worker.p99_ms
            );
        }
        if let Some(h) = &self.broker_floor {
            let _ = writeln!(
                out,
                "broker floor    bare relay, same 2 hops/confirms/acks at {:.0}/s: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                h.rate, h.p50_ms, h.p90_ms, h.p99_ms, h.max_ms
            );
            if let Some(cpu) = &h.cpu {
                let _ = writeln!(
                    out,
                    "                CPU per action: broker {}, bench (publisher + relay + consumer) {}",
                    ms(cpu.broker_ms),
                    ms(cpu.bench_ms)
                );
                wal_line(&mut out, cpu.wal_rollovers);
            }
        }
        if let Some(rss) = self.rss_mib() {
            let _ = writeln!(out, "memory          peak RSS of the service {rss:.1} MiB");
            if let Some(kib) = self.rss_before_reload_kib {
                let _ = writeln!(
                    out,
                    "                before the reloads: {:.1} MiB",
                    kib as f64 / 1024.0
                );
            }
        }
        if self.workflows > 0 {
            let reload = |reload: Option<(f64, bool)>| match reload {
                Some((ms, true)) => format!("{ms:.0} ms"),
                Some((ms, false)) => format!("REFUSED after {ms:.0} ms (see the service's log)"),
                None => "n/a".to_owned(),
            };
            let _ = writeln!(
                out,
                "workflows       {} more loaded (1,000 other workspaces); SIGHUP reload of all: {} \
                 unchanged, {} with every file changed",
                self.workflows,
                reload(self.reload),
                reload(self.reload_changed),
            );
        }
        if let Some(h) = &self.history {
            let _ = writeln!(
                out,
                "history         {} rows written, {} dropped",
                h.written, h.dropped
            );
        }
        let mut checks = Vec::new();
        if self.duplicates.0 > 0 {
            checks.push(format!("{} duplicate arrivals", self.duplicates.0));
        }
        if self.duplicates.1 > 0 {
            checks.push(format!(
                "{} unreadable requests at the sink",
                self.duplicates.1
            ));
        }
        for (outcome, count) in &self.attempts {
            if outcome != "success" && *count > 0 {
                checks.push(format!("{count} http attempts ended {outcome}"));
            }
        }
        for (queue, count) in &self.leftovers {
            if *count > 0 {
                checks.push(format!("{count} messages left in {queue}"));
            }
        }
        if self.throughput.is_some() {
            let _ = writeln!(
                out,
                "checks          {}",
                if checks.is_empty() {
                    "no duplicates, no retries, nothing dead-lettered or rejected".to_owned()
                } else {
                    checks.join(", ")
                }
            );
        }
        for note in &self.cleanup {
            let _ = writeln!(out, "note            {note}");
        }
        if self.clk_tck_assumed {
            let _ = writeln!(
                out,
                "note            CPU times assume 100 clock ticks/s (getconf CLK_TCK failed)"
            );
        }
        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<44} {:>10} {:>10}  result",
                "target", "measured", "limit"
            );
            for t in &targets {
                let _ = writeln!(
                    out,
                    "{:<44} {:>10} {:>10}  {}",
                    t.name,
                    if t.measured < 1.0 {
                        format!("{:.3} {}", t.measured, t.unit)
                    } else {
                        format!("{:.1} {}", t.measured, t.unit)
                    },
                    format!(
                        "{} {} {}",
                        if t.unit == "%" { "≥" } else { "≤" },
                        t.limit,
                        t.unit
                    ),
                    t.result
                );
            }
        }
        out
    }

    /// One JSON object with everything, targets included.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct WithTargets<'a> {
            #[serde(flatten)]
            report: &'a Report,
            ratio_pct: Option<f64>,
            rss_peak_mib: Option<f64>,
            targets: Vec<Target>,
        }
        let whole = WithTargets {
            report: self,
            ratio_pct: self.ratio_pct(),
            rss_peak_mib: self.rss_mib(),
            targets: self.targets(),
        };
        // Plain data (NaN becomes null): serialising cannot fail.
        serde_json::to_string(&whole).unwrap_or_default()
    }
}

/// Milliseconds with three decimals, or n/a.
fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) => format!("{v:.3} ms"),
        None => "n/a".to_owned(),
    }
}

/// Says so when the broker rolled its write-ahead log over during a phase: every queue waits
/// meanwhile, so the phase's tail is the broker's (the floor phase shows the same pause).
fn wal_line(out: &mut String, rollovers: Option<u64>) {
    if let Some(rolled @ 1..) = rollovers {
        let _ = writeln!(
            out,
            "                the broker rolled its quorum WAL over {rolled}× meanwhile: every queue pauses for it (expect a slower tail)"
        );
    }
}

/// The CPU and HTTP-call lines under a phase.
fn cpu_lines(out: &mut String, cpu: &CpuUse, actions_per_s: f64, mean_call_ms: Option<f64>) {
    let cores = |per_action: Option<f64>| match per_action {
        Some(v) => format!("{} ({:.2} cores)", ms(Some(v)), v * actions_per_s / 1000.0),
        None => "n/a".to_owned(),
    };
    let _ = writeln!(
        out,
        "                CPU per action: service {}, broker {}, postgres {}, bench {}",
        cores(cpu.service_ms),
        cores(cpu.broker_ms),
        cores(cpu.postgres_ms),
        cores(cpu.bench_ms)
    );
    if let Some(other) = cpu.other_cores {
        let noise = if other > 0.2 {
            " (noise: rerun on a quiet machine)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "                other processes used {other:.2} cores meanwhile{noise}"
        );
    }
    wal_line(out, cpu.wal_rollovers);
    if let Some(call) = mean_call_ms {
        let _ = writeln!(
            out,
            "                mean HTTP call to the sink {call:.2} ms (switchyard_action_duration_seconds)"
        );
    }
}

/// Issue 13's targets for run history: throughput with history on at least this share of off…
const TARGET_HISTORY_RATIO_PCT: f64 = 90.0;
/// …and at most this much more service CPU per action.
const TARGET_HISTORY_CPU_MS: f64 = 0.02;

/// The service's CPU per action in a run's latency phase.
fn paced(report: &Report) -> Option<f64> {
    report.latency.as_ref()?.cpu.as_ref()?.service_ms
}

/// One pair of `--history-pairs`: the same bench with run history off and on.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPair {
    /// Actions/s with history off.
    pub off_per_s: f64,
    /// Actions/s with history on.
    pub on_per_s: f64,
    /// The service's CPU per action, off and on.
    pub service_ms: (f64, f64),
    /// PostgreSQL's CPU per action, off and on.
    pub postgres_ms: (Option<f64>, Option<f64>),
    /// The service's CPU per action in the latency phase (the same paced rate in both runs, so
    /// that batching, which changes with the rate, weighs alike), off and on.
    pub paced_service_ms: Option<(f64, f64)>,
    /// Rows history wrote and dropped in the run with it on.
    pub rows: Option<HistoryRows>,
}

impl HistoryPair {
    /// Compares the throughput phases of a run with history off and one with it on.
    pub fn of(off: &Report, on: &Report) -> anyhow::Result<HistoryPair> {
        let (Some(a), Some(b)) = (&off.throughput, &on.throughput) else {
            anyhow::bail!("a run of the pair measured no throughput");
        };
        let (Some(service_off), Some(service_on)) = (a.cpu.service_ms, b.cpu.service_ms) else {
            anyhow::bail!("the service's CPU time could not be read from /proc");
        };
        Ok(HistoryPair {
            off_per_s: a.actions_per_s,
            on_per_s: b.actions_per_s,
            service_ms: (service_off, service_on),
            postgres_ms: (a.cpu.postgres_ms, b.cpu.postgres_ms),
            paced_service_ms: paced(off).zip(paced(on)),
            rows: on.history.clone(),
        })
    }

    fn ratio_pct(&self) -> f64 {
        100.0 * self.on_per_s / self.off_per_s
    }

    fn added_paced_cpu_ms(&self) -> Option<f64> {
        self.paced_service_ms.map(|(off, on)| on - off)
    }

    fn added_cpu_ms(&self) -> f64 {
        self.service_ms.1 - self.service_ms.0
    }

    /// The comparison of every pair, and the targets on their medians.
    pub fn table(pairs: &[HistoryPair]) -> String {
        let mut out = String::from(
            "\nrun history off vs on (throughput phase, paired runs)\n\
             pair  off actions/s  on actions/s  on/off   service CPU/action off → on (+added)   postgres CPU/action off → on   paced: service CPU/action off → on (+added)   rows written / dropped\n",
        );
        for (n, p) in pairs.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>4}  {:>13.0}  {:>12.0}  {:>5.1} %   {:.3} → {:.3} ms ({:+.3})             {} → {}          {}          {}",
                n + 1,
                p.off_per_s,
                p.on_per_s,
                p.ratio_pct(),
                p.service_ms.0,
                p.service_ms.1,
                p.added_cpu_ms(),
                ms(p.postgres_ms.0),
                ms(p.postgres_ms.1),
                p.paced_service_ms.map_or_else(
                    || "n/a (--latency-events 0)".to_owned(),
                    |(off, on)| format!("{off:.3} → {on:.3} ms ({:+.3})", on - off)
                ),
                p.rows.as_ref().map_or_else(
                    || "n/a".to_owned(),
                    |r| format!("{} / {}", r.written, r.dropped)
                ),
            );
        }
        let ratio = median(pairs.iter().map(HistoryPair::ratio_pct).collect());
        let added = median(pairs.iter().map(HistoryPair::added_cpu_ms).collect());
        let paced: Vec<f64> = pairs
            .iter()
            .filter_map(HistoryPair::added_paced_cpu_ms)
            .collect();
        if let Some(added) = median(paced) {
            let _ = writeln!(
                out,
                "median added service CPU at the paced rate {added:+.3} ms per action (target ≤ {TARGET_HISTORY_CPU_MS} ms: {})",
                if added <= TARGET_HISTORY_CPU_MS {
                    "PASS"
                } else {
                    "MISS"
                }
            );
        }
        if let (Some(ratio), Some(added)) = (ratio, added) {
            let verdict = |pass: bool| if pass { "PASS" } else { "MISS" };
            let _ = writeln!(
                out,
                "median on/off {ratio:.1} % (target ≥ {TARGET_HISTORY_RATIO_PCT:.0} %: {}), median added service CPU {added:+.3} ms per action (target ≤ {TARGET_HISTORY_CPU_MS} ms: {})",
                verdict(ratio >= TARGET_HISTORY_RATIO_PCT),
                verdict(added <= TARGET_HISTORY_CPU_MS),
            );
        }
        out
    }
}

/// The middle value (the mean of the two middle ones for an even count); `None` for none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => values.get(n / 2).copied(),
        _ => Some((values.get(n / 2 - 1)? + values.get(n / 2)?) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(super::median(vec![]), None);
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
