//! `switchyard-bench` (`make bench`): end-to-end throughput, latency and memory of the service,
//! against the broker's own ceiling for the same traffic, measured in the same run (issue 2).
//!
//! 1. **Broker ceiling.** 2N persistent ~1 KiB messages through a throwaway quorum queue, published
//!    with pipelined confirms while one consumer acks them (`multiple`, every 100 by default):
//!    the most the broker can carry here.
//! 2. **The service.** A counting HTTP sink starts in this process; the release `switchyard`
//!    binary runs as a child process with a temporary config (its own `amqp.prefix`) and one
//!    workflow that POSTs each `Gameplay.DataCaptured` to the sink. Each action costs the broker
//!    two messages (the event and the action message), so the service's best possible rate is
//!    half the ceiling.
//! 3. **Throughput.** N events published as fast as confirms allow; the clock stops at the Nth
//!    arrival at the sink. CPU time of the service, the broker and the bench comes from /proc.
//! 4. **Latency.** M events at half the measured rate; publish → arrival percentiles, from the
//!    `data.sent_at_us` the event carries and the workflow body echoes. With `--split`, a tap
//!    queue on the actions exchange splits each latency at the action message (router side,
//!    worker side). A bare relay (the same two hops, confirms and acks, no work) gives the
//!    broker's floor.
//! 5. **Clean-up.** SIGTERM to the child, then every queue and exchange of the run's prefix is
//!    deleted (unless `--keep`).
//!
//! A benchmark, not a test: nothing here asserts; the targets are printed as PASS or MISS. The
//! broker, the service and the bench share the machine: the report says how much CPU each used
//! and how much went to other processes (noise).

mod amqp;
mod console;
mod event;
mod history;
mod isolation;
mod procfs;
mod report;
mod service;
mod sink;

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use switchyard::broker::Topology;

use crate::amqp::Pace;
use crate::event::EventFactory;
use crate::procfs::{CpuClock, CpuSample};
use crate::report::{Ceiling, Latency, Relay, Report, Settings, Throughput};
use crate::service::{Child, Overrides};
use crate::sink::{Sink, Wait};

/// Measures switchyard against the broker's own ceiling (see `make bench`).
#[derive(Debug, Parser)]
#[command(long_about = None, args_conflicts_with_subcommands = true)]
struct Args {
    /// Another benchmark instead of the pipeline's.
    #[command(subcommand)]
    command: Option<Command>,
    /// Events of the throughput phase (N); the broker ceiling carries 2N messages.
    #[arg(long, alias = "n", default_value_t = 50_000)]
    events: u64,
    /// Actions per event: the bench's workflow makes this many independent calls of each event
    /// (fan-out: 1 + K broker messages for K calls). Throughput and CPU are then per call, and the
    /// ceiling's rate is scaled to K calls per 1 + K messages.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    actions_per_event: u64,
    /// Load this many more workflows beside the bench's own (across 1,000 other workspaces, a mix
    /// of types, scopes, conditions and `needs`): what a large catalog costs in throughput and
    /// memory. The report adds how long a SIGHUP reload of all of them took, with the files
    /// unchanged and then with every file changed, and the peak RSS before the reloads.
    #[arg(long, default_value_t = 0)]
    workflows: u64,
    /// Events of the latency phase (M).
    #[arg(long, default_value_t = 10_000)]
    latency_events: u64,
    /// Rate of the latency phase, events/s (default: half the measured throughput, which is
    /// what the p99 target is about).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// worker.concurrency of the service (default: the service's own default).
    #[arg(long)]
    concurrency: Option<usize>,
    /// worker.prefetch and router.prefetch of the service (default: the service's defaults).
    #[arg(long)]
    prefetch: Option<u16>,
    /// router.prefetch alone, overriding --prefetch for the router.
    #[arg(long)]
    router_prefetch: Option<u16>,
    /// router.publish_linger of the service, e.g. 0s to publish each action message at once
    /// (default: the service's own default).
    #[arg(long, value_parser = switchyard::config::parse_duration)]
    publish_linger: Option<Duration>,
    /// Tokio worker threads of the service (TOKIO_WORKER_THREADS, for the child only; default:
    /// one per CPU).
    #[arg(long)]
    service_threads: Option<usize>,
    /// Publisher confirms outstanding at once, in every phase.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Prefetch of the ceiling's consumer.
    #[arg(long, default_value_t = 1000)]
    ceiling_prefetch: u16,
    /// The ceiling's consumer acks every this many deliveries at once (basic.ack multiple=true,
    /// as the service's coalesced acks do); 1 acks each delivery on its own.
    #[arg(long, default_value_t = 100)]
    ceiling_ack_batch: u64,
    /// Give up on a phase when no action has arrived for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
    /// Split each latency at the action message (router side, worker side) with a tap queue on
    /// the actions exchange. Off by default: the tap costs the broker one more queue per action
    /// message and the bench one more consumer, CPU the service then has to share.
    #[arg(long)]
    split: bool,
    /// Leave the broker's quorum write-ahead log alone. By default each measured phase starts on
    /// a fresh one (`rabbitmqctl eval 'ra_log_wal:force_roll_over(ra_log_wal).'`, when the
    /// broker runs here): the broker rolls it over every 512 MiB written and every queue pauses
    /// meanwhile, which a phase of a few seconds would otherwise catch in some runs and not others.
    #[arg(long)]
    wal_as_is: bool,
    /// Measure the broker ceiling (and the bare relay, unless --no-relay) only: no service.
    #[arg(long)]
    ceiling_only: bool,
    /// Skip the bare relay: the service's two hops, confirms and coalesced acks at full speed
    /// with no work in between, which shows how much of the ceiling any two-hop client reaches.
    #[arg(long)]
    no_relay: bool,
    /// The bare relay's copies (and the floor's) carry what an action message carries besides
    /// its body: a message id, a timestamp, the identity headers and a `traceparent`.
    #[arg(long)]
    relay_as_service: bool,
    /// Keep the queues, exchanges and the temporary directory (config, service log).
    #[arg(long)]
    keep: bool,
    /// Write each latency-phase event's publish → arrival latency to this file (CSV: seq,
    /// sent_offset_ms, latency_ms, to_action_message_ms), to see when in the phase the slow ones
    /// happened and on which side of the action message (empty without `--split`).
    #[arg(long)]
    dump_latencies: Option<PathBuf>,
    /// Also print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Turn run history (SPEC §9) on, into this PostgreSQL database (a schema of its own for the
    /// run, dropped at the end unless --keep), e.g. the one `make postgres` creates.
    #[arg(long)]
    history_url: Option<String>,
    /// Run the whole bench 2×K times, alternating history off and on (off, on, on, off, …), and
    /// compare the pairs: throughput with history on ÷ off, and the CPU per action it adds in
    /// the service and in PostgreSQL (needs --history-url).
    #[arg(long, requires = "history_url")]
    history_pairs: Option<u32>,
}

/// `router.prefetch` and `worker.prefetch` by default (the bare relay's consumers use it too).
const DEFAULT_PREFETCH: u16 = 256;

/// Benchmarks other than the pipeline's.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run history at scale: fills a schema of its own with generated attempt rows (10 million by
    /// default, in bulk), then times the `runs list` lookups (by event id, contact email, workflow
    /// + time range, outcome + time range) and the drop of one day's partition.
    History(history::Args),
    /// Destinations (issue 14): 50 destinations, one of which hangs, then answers 429 with
    /// Retry-After: 30; the other 49's throughput and p99 against a run with all 50 healthy.
    Isolation(isolation::Args),
    /// The operator console at scale: fills a run history as `history` does (10 million rows by
    /// default), serves the console over it and times each page (p50/p95 over --samples loads).
    Console(console::Args),
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.events == 0 {
        eprintln!("error: --events must be at least 1");
        return std::process::ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ran = match (&args.command, args.history_pairs) {
        (Some(Command::History(history)), _) => runtime.block_on(history::run(history)),
        (Some(Command::Isolation(isolation)), _) => runtime.block_on(isolation::run(isolation)),
        (Some(Command::Console(console)), _) => runtime.block_on(console::run(console)),
        (None, Some(pairs)) => runtime.block_on(history_pairs(&args, pairs)),
        (None, None) => runtime
            .block_on(bench(&args, args.history_url.as_deref()))
            .map(|report| {
                print!("{}", report.table());
                if args.json {
                    println!("{}", report.json());
                }
            }),
    };
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--history-pairs K`: the bench 2×K times, history off and on in ABBA order (so that a drift of
/// the machine over the runs weighs on both sides alike), then the per-pair comparison.
async fn history_pairs(args: &Args, pairs: u32) -> anyhow::Result<()> {
    let url = args
        .history_url
        .as_deref()
        .context("--history-pairs needs --history-url")?;
    let mut compared = Vec::new();
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut off, mut on) = (None, None);
        for history in order {
            eprintln!(
                "bench: pair {} of {pairs}, history {}",
                pair + 1,
                if history { "on" } else { "off" }
            );
            let report = bench(args, history.then_some(url)).await?;
            print!("{}", report.table());
            *(if history { &mut on } else { &mut off }) = Some(report);
        }
        if let (Some(off), Some(on)) = (off, on) {
            compared.push(report::HistoryPair::of(&off, &on)?);
        }
    }
    print!("{}", report::HistoryPair::table(&compared));
    Ok(())
}

/// Everything the run created, for the clean-up whatever happened.
struct Run {
    /// The prefix of every queue and exchange of this run.
    prefix: String,
    /// Config file, workflow and the service's log.
    dir: PathBuf,
    /// The service, once started.
    child: Option<Child>,
    /// Queues created outside the service's topology (ceiling, floor).
    extra_queues: Vec<String>,
    /// Run history's schema, when history is on.
    history: Option<history::RunSchema>,
}

async fn bench(args: &Args, history_url: Option<&str>) -> anyhow::Result<Report> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let prefix = format!(
        "switchyard-bench-{}-{}",
        started.as_secs(),
        std::process::id()
    );
    let mut run = Run {
        dir: std::env::temp_dir().join(&prefix),
        prefix,
        child: None,
        extra_queues: Vec::new(),
        history: None,
    };
    if let Some(url) = history_url {
        run.history = Some(history::RunSchema::create(url, &run.prefix).await?);
    }
    let outcome = measure(args, &mut run).await;
    let finish = finish(args, &mut run, outcome.as_ref().ok()).await;
    let mut report = outcome?;
    report.cleanup = finish;
    Ok(report)
}

async fn measure(args: &Args, run: &mut Run) -> anyhow::Result<Report> {
    let clock = CpuClock::detect();
    let events = EventFactory::new(&run.prefix);
    let mut report = Report::new(args.events, args.latency_events, events.typical_size());
    report.actions_per_event = args.actions_per_event;
    report.workflows = args.workflows;
    report.clk_tck = clock.ticks_per_second;
    report.clk_tck_assumed = clock.assumed;
    report.load_average = procfs::load_average();
    let broker_pid = procfs::broker_pid();
    report.wal = match (args.wal_as_is, broker_pid) {
        (true, _) => "left as is (--wal-as-is)".to_owned(),
        (false, None) => "left as is (the broker does not run here)".to_owned(),
        (false, Some(_)) => "each phase starts on a fresh one (rabbitmqctl)".to_owned(),
    };

    // 1. The broker's ceiling for 2N messages.
    let ceiling_queue = format!("{}.ceiling", run.prefix);
    run.extra_queues.push(ceiling_queue.clone());
    eprintln!(
        "bench: broker ceiling: {} persistent messages through quorum queue {ceiling_queue}…",
        2 * args.events
    );
    start_phase(args, broker_pid, &clock, &mut report).await;
    let broker_before = broker_pid.and_then(procfs::cpu_ticks);
    let wal_before = broker_pid.and_then(procfs::broker_wal);
    let measured = amqp::ceiling(
        &args.amqp_url,
        &ceiling_queue,
        2 * args.events,
        &events,
        args.window,
        args.ceiling_prefetch,
        args.ceiling_ack_batch,
    )
    .await?;
    let broker_ms = clock.ms_between(broker_before, broker_pid.and_then(procfs::cpu_ticks));
    report.ceiling = Some(Ceiling {
        messages: measured.messages,
        secs: measured.elapsed.as_secs_f64(),
        msgs_per_s: measured.messages as f64 / measured.elapsed.as_secs_f64(),
        broker_cpu_ms_per_msg: broker_ms.map(|ms| ms / measured.messages as f64),
        window: args.window,
        prefetch: args.ceiling_prefetch,
        ack_batch: args.ceiling_ack_batch,
        wal_rollovers: procfs::wal_rollovers(wal_before, broker_pid.and_then(procfs::broker_wal)),
    });

    // 1b. The same two hops with no work: what any relay reaches on this broker.
    if !args.no_relay {
        let queues = [
            format!("{}.relay-1", run.prefix),
            format!("{}.relay-2", run.prefix),
        ];
        run.extra_queues.extend(queues.iter().cloned());
        eprintln!(
            "bench: bare relay: {} events through two quorum queues, {} copies each, no work…",
            args.events, args.actions_per_event
        );
        start_phase(args, broker_pid, &clock, &mut report).await;
        let own = procfs::cpu_ticks(std::process::id());
        let broker_before = broker_pid.and_then(procfs::cpu_ticks);
        let relayed = amqp::relay(
            &args.amqp_url,
            &queues[0],
            &queues[1],
            &events,
            args.events,
            args.actions_per_event,
            Pace::Flat,
            args.window,
            args.prefetch.unwrap_or(DEFAULT_PREFETCH),
            args.relay_as_service,
        )
        .await?;
        let broker_ms = clock.ms_between(broker_before, broker_pid.and_then(procfs::cpu_ticks));
        let bench_ms = clock.ms_between(own, procfs::cpu_ticks(std::process::id()));
        let secs = relayed.elapsed.as_secs_f64();
        let per_action = |ms: Option<f64>| ms.map(|ms| ms / relayed.arrived as f64);
        report.relay = Some(Relay {
            events: args.events,
            secs,
            actions_per_s: relayed.arrived as f64 / secs,
            broker_cpu_ms_per_action: per_action(broker_ms),
            bench_cpu_ms_per_action: per_action(bench_ms),
        });
    }
    if args.ceiling_only {
        return Ok(report);
    }

    // 2. The sink and the service.
    let warmup = (args.events / 10).clamp(1, 1000);
    let sink = Sink::start(
        warmup + args.events + args.latency_events,
        args.actions_per_event,
    )
    .await?;
    let overrides = Overrides {
        concurrency: args.concurrency,
        worker_prefetch: args.prefetch,
        router_prefetch: args.router_prefetch.or(args.prefetch),
        publish_linger: args.publish_linger,
        threads: args.service_threads,
    };
    let setup = service::write_files(
        &run.dir,
        &run.prefix,
        &args.amqp_url,
        sink.addr(),
        &overrides,
        run.history.as_ref().map(|h| h.service_url.as_str()),
        service::Scenario {
            actions_per_event: args.actions_per_event,
            workflows: args.workflows,
            ports: None,
        },
    )?;
    report.settings = Some(Settings {
        concurrency: setup.config.worker.concurrency,
        worker_prefetch: setup.config.worker.prefetch,
        router_prefetch: setup.config.router.prefetch,
        publish_linger_ms: setup.config.router.publish_linger.as_secs_f64() * 1000.0,
        threads: args.service_threads,
        defaults: args.concurrency.is_none()
            && args.prefetch.is_none()
            && args.router_prefetch.is_none()
            && args.publish_linger.is_none()
            && args.service_threads.is_none(),
        history_schema: run.history.as_ref().map(|h| h.schema.clone()),
    });
    eprintln!(
        "bench: starting {} (log: {})…",
        setup.binary.display(),
        setup.log.display()
    );
    // The floor's queues, named now: the phases below borrow the run's child.
    let floor_queues = [
        format!("{}.floor-1", run.prefix),
        format!("{}.floor-2", run.prefix),
    ];
    run.extra_queues.extend(floor_queues.iter().cloned());
    let child = run.child.insert(Child::spawn(&setup, &overrides)?);
    child.wait_ready(Duration::from_secs(60)).await?;
    let bench = Phases {
        args,
        clock,
        events: &events,
        sink: &sink,
        child,
        broker_pid,
        connection: amqp::connect(&args.amqp_url, "switchyard-bench publisher").await?,
        topology: Topology::new(&setup.config),
    };

    // Warm-up: connections, pools and allocator arenas, outside the measurement.
    eprintln!("bench: warm-up, {warmup} events…");
    bench.publish(0..warmup, Pace::Flat).await?;
    bench.wait(0..warmup, "warm-up").await?;

    // 3. Throughput.
    let range = warmup..warmup + args.events;
    start_phase(args, broker_pid, &clock, &mut report).await;
    let throughput = bench.throughput(range.clone()).await?;
    let rate = args
        .latency_rate
        .filter(|r| *r > 0.0)
        .unwrap_or(throughput.events_per_s / 2.0);
    report.throughput = Some(throughput);

    // 4. Latency at half the measured rate, split at the action message, and the broker's floor.
    // Each starts on a broker at rest, as the floor (measured last) otherwise would alone.
    if args.latency_events > 0 {
        let range = range.end..range.end + args.latency_events;
        start_phase(args, broker_pid, &clock, &mut report).await;
        let (latency, split) = bench.latency(range, rate).await?;
        report.latency = Some(latency);
        report.split = split;
        start_phase(args, broker_pid, &clock, &mut report).await;
        report.broker_floor = Some(bench.floor(&floor_queues, rate).await?);
    }
    let _ = bench.connection.close(200, "done".into()).await;

    if args.workflows > 0 {
        // Twice: the files as they are (a reload takes over what has not changed), then with
        // every file changed, so that all of them are compiled again beside the running catalog.
        report.rss_before_reload_kib = procfs::peak_rss_kib(child.pid());
        let (took, ok) = child.reload(Duration::from_secs(60)).await?;
        report.reload = Some((took.as_secs_f64() * 1000.0, ok));
        for folder in &setup.config.workflows.paths {
            service::touch_workflow_files(folder)?;
        }
        let (took, ok) = child.reload(Duration::from_secs(60)).await?;
        report.reload_changed = Some((took.as_secs_f64() * 1000.0, ok));
    }
    report.rss_peak_kib = procfs::peak_rss_kib(child.pid());
    report.duplicates = sink.duplicates();
    report.attempts = child.attempts().await;
    if run.history.is_some() {
        report.history = Some(report::HistoryRows {
            written: child
                .counter("switchyard_history_rows_written_total")
                .await
                .unwrap_or(0),
            dropped: child
                .counter("switchyard_history_dropped_total")
                .await
                .unwrap_or(0),
        });
    }
    let topology = &bench.topology;
    report.leftovers = amqp::depths(
        &args.amqp_url,
        &[
            topology.router.clone(),
            topology.dead_letter.clone(),
            topology.rejected.clone(),
        ],
    )
    .await;
    Ok(report)
}

/// What the phases against the running service share.
struct Phases<'a> {
    /// The command line.
    args: &'a Args,
    /// Reads CPU times.
    clock: CpuClock,
    /// Builds the events.
    events: &'a EventFactory,
    /// Counts arrivals.
    sink: &'a Sink,
    /// The service.
    child: &'a Child,
    /// The broker's process, when it runs here.
    broker_pid: Option<u32>,
    /// The bench's publishing connection.
    connection: lapin::Connection,
    /// The service's exchanges and queues.
    topology: Topology,
}

impl Phases<'_> {
    /// Publishes events `range` to the events exchange.
    async fn publish(&self, range: Range<u64>, pace: Pace) -> anyhow::Result<amqp::Published> {
        amqp::publish(
            &self.connection,
            &self.topology.events,
            "Gameplay.DataCaptured",
            range,
            self.events,
            self.args.window,
            pace,
        )
        .await
    }

    /// Waits until every action of `range` reached the sink, or says how many did.
    async fn wait(&self, range: Range<u64>, phase: &str) -> anyhow::Result<sink::Arrived> {
        let pid = self.child.pid();
        let wait = self
            .sink
            .wait(range, self.args.stall_timeout, || child_alive(pid))
            .await;
        match wait {
            Wait::Done(arrived) => Ok(arrived),
            Wait::Stalled {
                arrived,
                expected,
                stalled_for,
            } => anyhow::bail!(
                "{phase}: only {arrived} of {expected} actions reached the sink; none for {}",
                humantime::format_duration(stalled_for)
            ),
            Wait::ServiceExited { arrived, expected } => {
                anyhow::bail!("{phase}: the service exited after {arrived} of {expected} actions")
            }
        }
    }

    fn cpu(&self) -> CpuSample {
        CpuSample::take(self.child.pid(), self.broker_pid)
    }

    /// Events `range` as fast as confirms allow; the clock stops at the last arrival.
    async fn throughput(&self, range: Range<u64>) -> anyhow::Result<Throughput> {
        let count = range.end - range.start;
        eprintln!("bench: throughput, {count} events as fast as confirms allow…");
        let (cpu_before, calls_before) = (self.cpu(), self.child.call_durations().await);
        let published = self.publish(range.clone(), Pace::Flat).await?;
        let arrived = self.wait(range, "throughput").await?;
        let (cpu_after, calls_after) = (self.cpu(), self.child.call_durations().await);
        let secs = arrived
            .last_arrival_us
            .saturating_sub(published.first_sent_us) as f64
            / 1e6;
        let calls = count * self.args.actions_per_event;
        Ok(Throughput {
            events: count,
            secs,
            events_per_s: count as f64 / secs,
            actions_per_s: calls as f64 / secs,
            publish_per_s: count as f64 / published.elapsed.as_secs_f64(),
            cpu: cpu_before.until(&cpu_after, &self.clock, calls, secs),
            mean_call_ms: mean_ms(calls_before, calls_after),
        })
    }

    /// Events `range` at `rate`: publish → arrival, and the same split where a tap queue saw the
    /// action message (router side, worker side).
    async fn latency(
        &self,
        range: Range<u64>,
        rate: f64,
    ) -> anyhow::Result<(Latency, Option<(Latency, Latency)>)> {
        let count = range.end - range.start;
        eprintln!("bench: latency, {count} events at {rate:.0}/s…");
        let tap = if self.args.split {
            Some(amqp::Tap::start(&self.args.amqp_url, &self.topology.actions, "http").await?)
        } else {
            None
        };
        let (cpu_before, calls_before) = (self.cpu(), self.child.call_durations().await);
        let published = self.publish(range.clone(), Pace::PerSecond(rate)).await?;
        let arrived = self.wait(range.clone(), "latency").await?;
        let (cpu_after, calls_after) = (self.cpu(), self.child.call_durations().await);
        let tapped = match tap {
            Some(tap) => Some(tap.finish().await),
            None => None,
        };
        let secs = arrived
            .last_arrival_us
            .saturating_sub(published.first_sent_us) as f64
            / 1e6;
        if let Some(path) = &self.args.dump_latencies {
            let to_action: std::collections::HashMap<u64, u64> =
                tapped.iter().flatten().copied().collect();
            let rows = range.clone().filter_map(|seq| {
                let latency = self.sink.latency_us(seq)?;
                let offset = (seq - range.start) as f64 / rate;
                let split = to_action
                    .get(&seq)
                    .map(|us| format!("{:.3}", *us.min(&latency) as f64 / 1000.0))
                    .unwrap_or_default();
                Some(format!(
                    "{seq},{:.3},{:.3},{split}\n",
                    offset * 1000.0,
                    latency as f64 / 1000.0
                ))
            });
            let header = "seq,sent_offset_ms,latency_ms,to_action_message_ms\n";
            let csv: String = std::iter::once(header.to_owned()).chain(rows).collect();
            std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
        }
        let mut latencies = self.sink.latencies_us(range.clone());
        latencies.sort_unstable();
        let mut latency = Latency::from_sorted(rate, &latencies);
        latency.mean_call_ms = mean_ms(calls_before, calls_after);
        let calls = count * self.args.actions_per_event;
        latency.cpu = Some(cpu_before.until(&cpu_after, &self.clock, calls, secs));
        let split = tapped.map(|tapped| split(self.sink, range, tapped, rate));
        Ok((latency, split))
    }

    /// The floor under the latency: the same two broker hops, confirms and acks as the
    /// service, at the same rate, with nothing done in between (the service sits idle).
    async fn floor(&self, queues: &[String; 2], rate: f64) -> anyhow::Result<Latency> {
        let count = self.args.latency_events;
        eprintln!("bench: broker floor, a bare relay at {rate:.0}/s…");
        let cpu_before = self.cpu();
        let floor = amqp::relay(
            &self.args.amqp_url,
            &queues[0],
            &queues[1],
            self.events,
            count,
            self.args.actions_per_event,
            Pace::PerSecond(rate),
            self.args.window,
            self.args.prefetch.unwrap_or(DEFAULT_PREFETCH),
            self.args.relay_as_service,
        )
        .await?;
        let cpu_after = self.cpu();
        let mut latency = Latency::from_sorted(rate, &floor.latencies_us);
        let secs = count as f64 / rate;
        latency.cpu = Some(cpu_before.until(&cpu_after, &self.clock, floor.arrived, secs));
        Ok(latency)
    }
}

/// Readies the broker for a measured phase: a fresh write-ahead log (unless `--wal-as-is`), then
/// at most 15 s for it to finish the previous phase's background work (a quorum queue writes its
/// segments for a while after a burst, and after a roll-over). A roll-over that fails is said
/// once in the report.
async fn start_phase(args: &Args, broker_pid: Option<u32>, clock: &CpuClock, report: &mut Report) {
    if broker_pid.is_some()
        && !args.wal_as_is
        && let Err(why) = procfs::roll_wal_over().await
    {
        report.wal = format!("left as is: could not roll it over ({why})");
    }
    let waited =
        procfs::wait_for_idle_broker(broker_pid, clock, 0.15, Duration::from_secs(15)).await;
    eprintln!("bench: broker at rest after {:.1} s", waited.as_secs_f64());
}

/// Stops the service and deletes what the run created; says what it did (or could not do).
async fn finish(args: &Args, run: &mut Run, report: Option<&Report>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(mut child) = run.child.take() {
        match child.terminate(Duration::from_secs(20)).await {
            Ok(status) if status.success() => {}
            Ok(status) => notes.push(format!("the service exited with {status}")),
            Err(e) => notes.push(format!("stopping the service: {e:#}")),
        }
        for line in child.ack_summary() {
            eprintln!("bench: the service's acks: {line}");
        }
        if report.is_none() {
            eprintln!(
                "bench: last lines of the service's log:\n{}",
                child.log_tail(20)
            );
        }
    }
    if args.keep {
        notes.push(format!(
            "kept queues and exchanges of prefix {} and {}",
            run.prefix,
            run.dir.display()
        ));
        if let Some(history) = &run.history {
            notes.push(format!("kept PostgreSQL schema {}", history.schema));
        }
        return notes;
    }
    if let Some(history) = run.history.take()
        && let Err(e) = history.drop().await
    {
        notes.push(format!("dropping the history schema: {e:#}"));
    }
    let deleted = match service::names_only(&run.prefix) {
        Ok(config) => {
            amqp::delete_topology(&args.amqp_url, &Topology::new(&config), &run.extra_queues).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = deleted {
        notes.push(format!("deleting the queues of {}: {e:#}", run.prefix));
    }
    if run.dir.exists() && report.is_some() {
        let _ = std::fs::remove_dir_all(&run.dir);
    } else if run.dir.exists() {
        notes.push(format!("kept {} for a look at the log", run.dir.display()));
    }
    notes
}

fn child_alive(pid: u32) -> bool {
    procfs::cpu_ticks(pid).is_some() && !procfs::is_zombie(pid)
}

/// The mean of a duration histogram between two (sum in seconds, count) readings, in ms.
fn mean_ms(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<f64> {
    let ((sum0, count0), (sum1, count1)) = (before?, after?);
    (count1 > count0).then(|| (sum1 - sum0) / (count1 - count0) * 1000.0)
}

/// Splits each event's latency where its action message was seen on the tap: publish → action
/// message (event hop + router), then action message → sink (action hop + worker + call).
fn split(sink: &Sink, range: Range<u64>, tapped: Vec<(u64, u64)>, rate: f64) -> (Latency, Latency) {
    let (mut router_side, mut worker_side) = (Vec::new(), Vec::new());
    for (seq, to_action) in tapped {
        if let Some(total) = range.contains(&seq).then(|| sink.latency_us(seq)).flatten() {
            router_side.push(to_action.min(total));
            worker_side.push(total.saturating_sub(to_action));
        }
    }
    router_side.sort_unstable();
    worker_side.sort_unstable();
    (
        Latency::from_sorted(rate, &router_side),
        Latency::from_sorted(rate, &worker_side),
    )
}
