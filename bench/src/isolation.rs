//! `switchyard-bench isolation` (issue 14): one bad destination among many must not cost the
//! others. 50 destinations (50 ports on 127.0.0.1, one `http` workflow whose URL picks the port
//! from the event's `seq`), three runs in a row on the same machine:
//!
//! 1. all 50 healthy (the baseline);
//! 2. destination 0 hangs: it never answers, every call to it runs into the action's 5 s timeout;
//! 3. destination 0 answers `429` with `Retry-After: 30`.
//!
//! Each run measures the other 49 only: throughput (events as fast as confirms allow, first
//! publish → last arrival of theirs) and latency (publish → arrival at a fixed rate, the same in
//! every run: half the baseline's throughput unless given). The report compares runs 2 and 3 with
//! the baseline (targets: ≥ 90 % of the throughput, p99 within 10 %) and says what the bad
//! destination cost: the calls made to it (attempts spent) and the actions the service held on
//! the broker for it (`switchyard_held_actions`, its highest reading).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use switchyard::broker::Topology;

use crate::amqp::{self, Pace};
use crate::event::EventFactory;
use crate::service::{self, Child, Overrides, Scenario};
use crate::sink::{Sink, Wait};

/// `switchyard-bench isolation`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Destinations (ports); destination 0 is the bad one.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(2..=500))]
    destinations: u16,
    /// Events of the throughput phase.
    #[arg(long, default_value_t = 30_000)]
    events: u64,
    /// Events of the latency phase.
    #[arg(long, default_value_t = 20_000)]
    latency_events: u64,
    /// Rate of the latency phase, events/s (default: half the baseline's throughput).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Publisher confirms outstanding at once.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Repeat the three runs this many times (healthy, hang, throttle, healthy, …), each compared
    /// with its own round's baseline: figures drift from minute to minute on a shared machine.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Give up on a phase when nothing has arrived for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
}

/// How destination 0 behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Answers 200 at once, like the others.
    Healthy,
    /// Never answers.
    Hang,
    /// `429 Too Many Requests` with `Retry-After: 30`.
    Throttle,
}

impl Bad {
    fn describe(self) -> &'static str {
        match self {
            Bad::Healthy => "all healthy",
            Bad::Hang => "one hangs (5 s timeout)",
            Bad::Throttle => "one answers 429, Retry-After: 30",
        }
    }
}

/// One run's figures for the 49 others, and what the bad one cost.
#[derive(Debug, Clone)]
struct Figures {
    /// Which run.
    bad: Bad,
    /// The others' events per second, flat out.
    throughput: f64,
    /// The latency phase's rate.
    rate: f64,
    /// The others' latency, p50 and p99 (ms).
    p50_ms: f64,
    p99_ms: f64,
    /// Calls that reached the bad destination.
    bad_calls: u64,
    /// Events routed to the bad destination.
    bad_events: u64,
    /// The highest `switchyard_held_actions` reading for it.
    held_max: i64,
    /// From the first event to the service holding the bad destination's actions (its breaker
    /// open, or its rate limit known), before the measured phases.
    detected_after: Option<Duration>,
    /// The slowest 1 % of the latency phase, by the second of the phase they were published in.
    slowest: String,
    /// CPU per event of the throughput phase (ms): the service's, and the broker's if found.
    service_cpu_ms: Option<f64>,
    broker_cpu_ms: Option<f64>,
    /// The others' arrivals in the throughput phase per 250 ms from its first publish: a stall
    /// shows as a dip.
    flow: String,
}

/// Runs the three scenarios and prints the comparison.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let mut rate = args.latency_rate;
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut runs = Vec::new();
        for bad in [Bad::Healthy, Bad::Hang, Bad::Throttle] {
            eprintln!(
                "bench isolation: round {round}, {} destinations, {}…",
                args.destinations,
                bad.describe()
            );
            let figures = one(args, bad, &mut rate).await?;
            eprintln!("bench isolation: {figures:?}");
            runs.push(figures);
        }
        print!("{}", table(args, &runs));
        rounds.push(runs);
    }
    if rounds.len() > 1 {
        print!("{}", over_rounds(&rounds));
    }
    Ok(())
}

/// Each bad run against its own round's all-healthy run, round by round, and the targets on the
/// medians: one round's baseline can catch a burst that flatters or sinks the whole round.
fn over_rounds(rounds: &[Vec<Figures>]) -> String {
    let mut out = format!(
        "\nover {} rounds, each bad run against its own round's all-healthy run:\n",
        rounds.len()
    );
    for (i, bad) in [Bad::Hang, Bad::Throttle].into_iter().enumerate() {
        let ratios = |figure: fn(&Figures) -> f64| -> Vec<f64> {
            rounds
                .iter()
                .filter_map(|runs| Some(figure(runs.get(i + 1)?) / figure(runs.first()?) * 100.0))
                .collect()
        };
        let throughput = ratios(|f| f.throughput);
        let p99 = ratios(|f| f.p99_ms);
        let list = |values: &[f64]| {
            values
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (Some(t), Some(p)) = (
            crate::report::median(throughput.clone()),
            crate::report::median(p99.clone()),
        ) else {
            continue;
        };
        out.push_str(&format!(
            "{}: throughput {} % → median {t:.1} % (target ≥ 90 %: {}); p99 {} % → median {p:.1} % (target ≤ 110 %: {})\n",
            bad.describe(),
            list(&throughput),
            if t >= 90.0 { "PASS" } else { "MISS" },
            list(&p99),
            if p <= 110.0 { "PASS" } else { "MISS" },
        ));
    }
    out
}

/// Starts a phase on a broker at rest, on a fresh quorum write-ahead log (as `make bench` does:
/// a roll-over every 512 MiB would otherwise pause every queue inside some phases only).
async fn rest() {
    if let Err(why) = crate::procfs::roll_wal_over().await {
        eprintln!("bench isolation: the broker's WAL is left as is: {why}");
    }
    let clock = crate::procfs::CpuClock::detect();
    let broker = crate::procfs::broker_pid();
    crate::procfs::wait_for_idle_broker(broker, &clock, 0.15, Duration::from_secs(15)).await;
}

fn table(args: &Args, runs: &[Figures]) -> String {
    let mut out = format!(
        "\nswitchyard-bench isolation: {} destinations; the figures are the other {}'s\n",
        args.destinations,
        args.destinations - 1
    );
    out.push_str(&format!(
        "{:<34} {:>12} {:>8} {:>10} {:>10} {:>8} {:>10} {:>10}\n",
        "run", "events/s", "vs base", "p50 ms", "p99 ms", "vs base", "bad calls", "held max"
    ));
    let base = &runs[0];
    for run in runs {
        let throughput = run.throughput / base.throughput;
        let p99 = run.p99_ms / base.p99_ms;
        out.push_str(&format!(
            "{:<34} {:>12.0} {:>7.1}% {:>10.1} {:>10.1} {:>7.1}% {:>10} {:>10}\n",
            run.bad.describe(),
            run.throughput,
            throughput * 100.0,
            run.p50_ms,
            run.p99_ms,
            p99 * 100.0,
            run.bad_calls,
            run.held_max
        ));
    }
    out.push_str("the slowest 1 % of the latency phase, by the second of the phase they were published in:\n");
    for run in runs {
        out.push_str(&format!("  {:<32} {}\n", run.bad.describe(), run.slowest));
    }
    out.push_str("CPU per event of the throughput phase (all 50 destinations' events):\n");
    let ms = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.3} ms"));
    for run in runs {
        out.push_str(&format!(
            "  {:<32} service {}, broker {}\n",
            run.bad.describe(),
            ms(run.service_cpu_ms),
            ms(run.broker_cpu_ms)
        ));
    }
    out.push_str(
        "the throughput phase's arrivals (the other 49) per 250 ms from its first publish:\n",
    );
    for run in runs {
        out.push_str(&format!("  {:<32} {}\n", run.bad.describe(), run.flow));
    }
    for run in &runs[1..] {
        let throughput = run.throughput / base.throughput;
        let p99 = run.p99_ms / base.p99_ms;
        if let Some(after) = run.detected_after {
            out.push_str(&format!(
                "{}: the service held the bad destination's actions {:.1} s after the first event; the phases below start then\n",
                run.bad.describe(),
                after.as_secs_f64()
            ));
        }
        out.push_str(&format!(
            "{}: throughput {:.1}% of the baseline (target ≥ 90%: {}), p99 {:+.1}% (target within 10%: {}); {} calls spent on the bad destination for its {} events, at most {} actions held for it at once\n",
            run.bad.describe(),
            throughput * 100.0,
            if throughput >= 0.9 { "PASS" } else { "MISS" },
            (p99 - 1.0) * 100.0,
            if p99 <= 1.1 { "PASS" } else { "MISS" },
            run.bad_calls,
            run.bad_events,
            run.held_max,
        ));
    }
    out.push_str(&format!(
        "latency phase at {:.0} events/s in every run\n",
        base.rate
    ));
    out
}

/// `count` listeners on consecutive ports of 127.0.0.1.
fn consecutive_ports(count: u16) -> anyhow::Result<(u16, Vec<TcpListener>)> {
    for attempt in 0..50u16 {
        let first = 20_000 + (std::process::id() as u16 % 200 + attempt * 211) % 40_000;
        let bound: Result<Vec<TcpListener>, _> = (0..count)
            .map(|i| TcpListener::bind(("127.0.0.1", first + i)))
            .collect();
        if let Ok(listeners) = bound {
            return Ok((first, listeners));
        }
    }
    anyhow::bail!("found no {count} free consecutive ports on 127.0.0.1")
}

/// The bad destination's server; counts the calls that reach it.
fn serve_bad(listener: TcpListener, bad: Bad, calls: Arc<AtomicU64>) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("a non-blocking socket")?;
    let listener = tokio::net::TcpListener::from_std(listener).context("serving")?;
    let app = Router::new().fallback(move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            match bad {
                Bad::Healthy => (StatusCode::OK, "{}").into_response(),
                Bad::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    StatusCode::OK.into_response()
                }
                Bad::Throttle => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "30")],
                    "{\"error\":\"rate limited\"}",
                )
                    .into_response(),
            }
        }
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("bench: the bad destination stopped: {e}");
        }
    });
    Ok(())
}

/// One run with destination 0 behaving as `bad`.
async fn one(args: &Args, bad: Bad, rate: &mut Option<f64>) -> anyhow::Result<Figures> {
    let prefix = format!(
        "switchyard-bench-isolation-{}-{}",
        chrono::Utc::now().timestamp(),
        std::process::id()
    );
    let dir: PathBuf = std::env::temp_dir().join(&prefix);
    let n = u64::from(args.destinations);
    let warmup = 1000.max(n * 10);
    let capacity = warmup + args.events + args.latency_events;
    let (first, mut listeners) = consecutive_ports(args.destinations)?;
    let bad_listener = listeners.remove(0);
    let bad_calls = Arc::new(AtomicU64::new(0));
    serve_bad(bad_listener, bad, bad_calls.clone())?;
    let sink = Sink::start_on(listeners, capacity, 1, n).await?;
    let overrides = Overrides {
        concurrency: None,
        worker_prefetch: None,
        router_prefetch: None,
        publish_linger: None,
        threads: None,
    };
    let setup = service::write_files(
        &dir,
        &prefix,
        &args.amqp_url,
        sink.addr(),
        &overrides,
        None,
        Scenario {
            actions_per_event: 1,
            workflows: 0,
            ports: Some((first, args.destinations)),
        },
    )?;
    let topology = Topology::new(&setup.config);
    let mut child = Child::spawn(&setup, &overrides)?;
    let measured = async {
        child.wait_ready(Duration::from_secs(60)).await?;
        let events = EventFactory::new(&prefix);
        let connection = amqp::connect(&args.amqp_url, "switchyard-bench isolation").await?;
        let publish = |range: std::ops::Range<u64>, pace: Pace| {
            amqp::publish(
                &connection,
                &topology.events,
                "Gameplay.DataCaptured",
                range,
                &events,
                args.window,
                pace,
            )
        };
        let pid = child.pid();
        let alive =
            move || crate::procfs::cpu_ticks(pid).is_some() && !crate::procfs::is_zombie(pid);
        let wait = |range: std::ops::Range<u64>, phase: &'static str| {
            let sink = &sink;
            async move {
                match sink.wait(range, args.stall_timeout, alive).await {
                    Wait::Done(arrived) => Ok(arrived),
                    other => Err(anyhow::anyhow!("{phase}: {other:?}")),
                }
            }
        };
        // The held gauge of the bad destination, read twice a second meanwhile.
        let held_max = Arc::new(AtomicI64::new(0));
        let watcher = tokio::spawn(watch_held(
            setup.metrics,
            format!("127.0.0.1:{first}"),
            held_max.clone(),
        ));

        rest().await;
        let started = std::time::Instant::now();
        publish(0..warmup, Pace::Flat).await?;
        wait(0..warmup, "warm-up").await?;
        // The steady state with a bad destination: once the service holds its actions. Until
        // then (the first timeouts, 5 s) the calls hanging there hold worker slots, and the
        // deliveries they hold back keep the worker's acks from being coalesced.
        let detected_after = if bad == Bad::Healthy {
            None
        } else {
            let deadline = started + Duration::from_secs(60);
            while held_max.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(started.elapsed())
        };

        rest().await;
        let range = warmup..warmup + args.events;
        let clock = crate::procfs::CpuClock::detect();
        let broker = crate::procfs::broker_pid();
        let ticks = || {
            (
                crate::procfs::cpu_ticks(pid),
                broker.and_then(crate::procfs::cpu_ticks),
            )
        };
        let before = ticks();
        let published = publish(range.clone(), Pace::Flat).await?;
        let arrived = wait(range.clone(), "throughput").await?;
        let after = ticks();
        let per_event = |ms: Option<f64>| ms.map(|ms| ms / args.events as f64);
        let service_cpu_ms = per_event(clock.ms_between(before.0, after.0));
        let broker_cpu_ms = per_event(clock.ms_between(before.1, after.1));
        let secs = arrived
            .last_arrival_us
            .saturating_sub(published.first_sent_us) as f64
            / 1e6;
        let others = range.clone().filter(|seq| seq % n != 0).count() as f64;
        let throughput = others / secs;
        let flow = sink
            .arrivals_per(
                range.clone(),
                published.first_sent_us,
                Duration::from_millis(250),
            )
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let latency_rate = *rate.get_or_insert(throughput / 2.0);

        rest().await;
        let range = range.end..range.end + args.latency_events;
        publish(range.clone(), Pace::PerSecond(latency_rate)).await?;
        wait(range.clone(), "latency").await?;
        let mut latencies = sink.latencies_us(range.clone());
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        // When in the phase the slowest 1 % were published: a stall shows as a few seconds.
        let p99_us = (at(0.99) * 1000.0).round() as u64;
        let mut slow_by_second = std::collections::BTreeMap::<u64, u64>::new();
        for seq in range.clone().filter(|seq| seq % n != 0) {
            if sink.latency_us(seq).is_some_and(|l| l >= p99_us) {
                let second = ((seq - range.start) as f64 / latency_rate) as u64;
                *slow_by_second.entry(second).or_default() += 1;
            }
        }
        let slowest = slow_by_second
            .iter()
            .map(|(s, count)| format!("{s}s:{count}"))
            .collect::<Vec<_>>()
            .join(" ");
        watcher.abort();
        let _ = connection.close(200, "done".into()).await;
        Ok::<_, anyhow::Error>(Figures {
            bad,
            throughput,
            rate: latency_rate,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            bad_calls: bad_calls.load(Ordering::Relaxed),
            bad_events: (0..capacity).filter(|seq| seq % n == 0).count() as u64,
            held_max: held_max.load(Ordering::Relaxed),
            detected_after,
            slowest,
            service_cpu_ms,
            broker_cpu_ms,
            flow,
        })
    }
    .await;
    if let Err(e) = child.terminate(Duration::from_secs(20)).await {
        eprintln!("bench isolation: stopping the service: {e:#}");
    }
    for line in child.ack_summary() {
        eprintln!(
            "bench isolation: {}: the service's acks: {line}",
            bad.describe()
        );
    }
    if measured.is_err() {
        eprintln!(
            "bench isolation: the service's log:\n{}",
            child.log_tail(20)
        );
    }
    if let Err(e) = amqp::delete_topology(&args.amqp_url, &topology, &[]).await {
        eprintln!("bench isolation: clean-up: {e:#}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

/// Keeps the highest `switchyard_held_actions{destination}` reading in `max`.
async fn watch_held(metrics: std::net::SocketAddr, destination: String, max: Arc<AtomicI64>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let series = format!("switchyard_held_actions{{destination=\"{destination}\"}} ");
    loop {
        if let Ok(response) = client.get(format!("http://{metrics}/metrics")).send().await
            && let Ok(text) = response.text().await
            && let Some(value) = text
                .lines()
                .find_map(|line| line.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
        {
            max.fetch_max(value as i64, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
