//! The console's pages at scale (issue 15): `switchyard-bench console` fills a run history of its
//! own as `switchyard-bench history` does (10 million attempt rows by default), serves the
//! console over it in process (the service's own `console::start`, as `switchyard console` runs
//! it), signs in, and times each page over HTTP: p50 and p95 of `--samples` loads with random
//! keys, against the target of p95 ≤ 200 ms.
//!
//! The broker holds the bench's own topology (a prefix of its own, deleted at the end) with
//! `--dead-letters` records in its dead-letter queue, so the overview and the dead-letter page
//! do their real work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use rand::Rng as _;
use switchyard::Config;
use switchyard::broker::Topology;
use tokio_util::sync::CancellationToken;

use crate::history::{self, CONTACTS, Data, RunSchema, WORKFLOWS};

/// `switchyard-bench console`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where and how much.
    #[command(flatten)]
    data: Data,
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Loads timed of each page.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Records put in the dead-letter queue.
    #[arg(long, default_value_t = 100)]
    dead_letters: u32,
}

/// The target of issue 15.
const TARGET_P95: Duration = Duration::from_millis(200);
/// The operator token of the bench's console.
const TOKEN: &str = "bench-console-token";

/// Fills, serves, times, reports, cleans up.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.data.days >= 1, "--days must be at least 1");
    anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
    let schema = args.data.schema("console").await?;
    eprintln!("bench: console: schema {}", schema.schema);
    let prefix = format!("bench-console-{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    let outcome = fill_serve_and_time(args, &schema, &prefix, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    args.data.done(schema).await;
    print!("{}", outcome?);
    Ok(())
}

/// The service configuration of the bench's console: its own prefix, history in `schema`, the
/// repository's workflows, one operator whose token is a file in `dir/secrets`.
fn config(
    args: &Args,
    schema: &RunSchema,
    prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).context("the secrets folder")?;
    std::fs::write(secrets.join("BENCH_CONSOLE"), TOKEN).context("the token file")?;
    let yaml = serde_json::json!({
        "amqp": { "url": args.amqp_url, "prefix": prefix },
        "metrics": { "listen": "127.0.0.1:0" },
        "log": { "format": "text", "level": "warn" },
        "secrets": { "dir": secrets },
        "history": { "url": schema.service_url },
        "console": {
            "listen": "127.0.0.1:0",
            "tokens": [{ "name": "bench", "role": "operator", "token": "{{ secrets.BENCH_CONSOLE }}" }],
        },
    });
    Config::from_yaml(&yaml.to_string()).context("the console's configuration")
}

async fn fill_serve_and_time(
    args: &Args,
    schema: &RunSchema,
    prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    let filled = history::fill(
        schema,
        args.data.rows,
        args.data.days,
        args.data.reuse.is_some(),
        Utc::now(),
    )
    .await?;
    let config = config(args, schema, prefix, dir)?;
    let topology = Topology::new(&config);
    let served = async {
        dead_letters(&args.amqp_url, &topology, args.dead_letters).await?;
        let stop = CancellationToken::new();
        let faults = switchyard::faults::Faults::new(stop.clone());
        let app = Arc::new(
            switchyard::shared::Shared::new(config, faults).context("the service's state")?,
        );
        let addr = switchyard::console::start(app, "127.0.0.1:0".parse()?, false, stop.clone())
            .await
            .context("starting the console")?;
        let timed = time_pages(args, &format!("http://{addr}"), &filled).await;
        stop.cancel();
        timed
    }
    .await;
    if let Err(e) = crate::amqp::delete_topology(&args.amqp_url, &topology, &[]).await {
        eprintln!("bench: {e:#}");
    }
    let pages = served?;
    let mut out = format!(
        "\nswitchyard-bench console: {} attempt rows over {} days ({:.1} GiB with indexes{}), {} dead letters\n\
         page ({} loads each, signed in, over HTTP)        p50        p95        max   target p95 ≤ 200 ms\n",
        filled.per_day * filled.days.len() as u64,
        filled.days.len(),
        filled.size as f64 / (1u64 << 30) as f64,
        if args.data.reuse.is_some() {
            ", reused".to_owned()
        } else {
            format!(", generated in {:.0} s", filled.elapsed.as_secs_f64())
        },
        args.dead_letters,
        args.samples,
    );
    for (name, mut times) in pages {
        times.sort();
        let at =
            |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
        let p95 = at(0.95);
        out.push_str(&format!(
            "  {name:<44} {:>8}   {:>8}   {:>8}   {}\n",
            ms(at(0.5)),
            ms(p95),
            ms(at(1.0)),
            if p95 <= TARGET_P95 { "PASS" } else { "MISS" }
        ));
    }
    Ok(out)
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// Declares the bench's topology and puts `count` dead letters in its queue.
async fn dead_letters(url: &str, topology: &Topology, count: u32) -> anyhow::Result<()> {
    let connection = crate::amqp::connect(url, "switchyard-bench console").await?;
    topology
        .declare(&connection)
        .await
        .context("declaring the bench's topology")?;
    let channel = connection.create_channel().await.context("a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("confirms")?;
    for n in 0..count {
        let mut headers = FieldTable::default();
        let mut header = |name: &str, value: String| {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        };
        header("x-switchyard-connector", "http".into());
        header("x-switchyard-workflow", format!("wf-{}", n % 20));
        header("x-switchyard-action", "action-0".into());
        header("x-switchyard-workspace", "ws-1".into());
        header("x-switchyard-error-class", "permanent".into());
        header(
            "x-switchyard-reason",
            "http 400: INVALID_EMAIL_ADDRESS".into(),
        );
        header("x-switchyard-last-status", "400".into());
        header("x-switchyard-dead-at", Utc::now().to_rfc3339());
        let properties = BasicProperties::default()
            .with_message_id(format!("act_bench{n:012}").into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let body = serde_json::json!({ "event": { "id": format!("evt-dead-{n}") } }).to_string();
        channel
            .basic_publish(
                "".into(),
                topology.dead_letter.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .context("publishing a dead letter")?
            .await
            .context("its confirm")?;
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Signs in, then loads each page `samples` times; the times per page, in order.
async fn time_pages(
    args: &Args,
    base: &str,
    filled: &history::Filled,
) -> anyhow::Result<Vec<(&'static str, Vec<Duration>)>> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("an HTTP client")?;
    let signed_in = http
        .post(format!("{base}/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .context("signing in")?;
    let cookie = signed_in
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie: the sign-in was refused")?
        .to_owned();
    let total = filled.per_day * filled.days.len() as u64;
    let mut rng = rand::rng();
    type PathOf = fn(&mut rand::rngs::ThreadRng, u64) -> String;
    let pages: [(&'static str, PathOf); 8] = [
        ("/ (overview)", |_, _| "/".into()),
        ("/runs (unfiltered, newest first)", |_, _| "/runs".into()),
        ("/runs?contact=<email>", |rng, _| {
            format!(
                "/runs?contact=contact{}%40example.com",
                rng.random_range(0..CONTACTS)
            )
        }),
        ("/runs?workflow=<id>", |rng, _| {
            format!("/runs?workflow=wf-{}", rng.random_range(0..WORKFLOWS))
        }),
        ("/runs/<action id>", |rng, total| {
            // The generator's action ids: act_ + 16 hex digits of a row number.
            format!("/runs/act_{:016x}", rng.random_range(0..total) / 10 * 10)
        }),
        ("/destinations", |_, _| "/destinations".into()),
        ("/workflows", |_, _| "/workflows".into()),
        ("/dead-letters", |_, _| "/dead-letters".into()),
    ];
    let mut timed = Vec::new();
    for (name, path_of) in pages {
        let mut times = Vec::with_capacity(args.samples);
        for _ in 0..args.samples {
            let path = path_of(&mut rng, total);
            let started = Instant::now();
            let response = http
                .get(format!("{base}{path}"))
                .header(reqwest::header::COOKIE, &cookie)
                .send()
                .await
                .with_context(|| format!("GET {path}"))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .with_context(|| format!("GET {path}"))?;
            times.push(started.elapsed());
            anyhow::ensure!(
                status.is_success(),
                "GET {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        timed.push((name, times));
    }
    Ok(timed)
}
