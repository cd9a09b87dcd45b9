//! The service under test: its temporary configuration and workflow, and the child process.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use switchyard::Config;

/// Settings given on the bench's command line; `None` leaves the service's default.
#[derive(Debug, Clone, Copy)]
pub struct Overrides {
    /// `worker.concurrency`.
    pub concurrency: Option<usize>,
    /// `worker.prefetch`.
    pub worker_prefetch: Option<u16>,
    /// `router.prefetch`.
    pub router_prefetch: Option<u16>,
    /// `router.publish_linger`.
    pub publish_linger: Option<Duration>,
    /// Tokio worker threads (`TOKIO_WORKER_THREADS`).
    pub threads: Option<usize>,
}

/// What the workflows make of the traffic.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Calls per event (`--actions-per-event`).
    pub actions_per_event: u64,
    /// Workflows loaded beside the bench's own (`--workflows`).
    pub workflows: u64,
    /// `(first port, count)`: event `seq` is sent to `127.0.0.1:(first + seq % count)`, one
    /// destination per port (`switchyard-bench isolation`); `None`: everything to the sink.
    pub ports: Option<(u16, u16)>,
}

/// Everything needed to start the service.
pub struct Setup {
    /// The release `switchyard` binary, next to this one.
    pub binary: PathBuf,
    /// The temporary configuration file.
    pub config_path: PathBuf,
    /// The configuration as the service will read it (defaults filled in).
    pub config: Config,
    /// Where the service's stderr (its log) goes.
    pub log: PathBuf,
    /// `/readyz` and `/metrics`.
    pub metrics: SocketAddr,
}

/// The workflow: every `Gameplay.DataCaptured` of `ws_bench` is POSTed to the sink, by each of
/// `actions` independent actions (`post-0`, `post-1`, …; their body's `k` tells the sink which).
/// The bare placeholders keep their JSON type, so the sink reads `seq` and `sent_at_us` as numbers.
fn workflow(url: &str, actions: u64) -> String {
    // Quoted: a templated URL holds `: ` (`modulo: 50`), which YAML would read as a mapping.
    let url = serde_json::Value::String(url.to_owned()).to_string();
    let mut yaml = String::from(
        "# Written by switchyard-bench.\nworkflows:\n  - id: bench\n    workspace: ws_bench\n    trigger:\n      event: Gameplay.DataCaptured\n    actions:\n",
    );
    for k in 0..actions.max(1) {
        let _ = write!(
            yaml,
            r#"      - id: post-{k}
        http:
          method: POST
          url: {url}
          headers: {{ Content-Type: application/json }}
          timeout: 5s
          body: |
            {{ "id": "{{{{ event.id }}}}", "seq": {{{{ data.seq }}}}, "k": {k}, "sent_at_us": {{{{ data.sent_at_us }}}},
              "email": "{{{{ contact.email }}}}", "company": "{{{{ form_fields.company }}}}" }}
"#
        );
    }
    yaml
}

/// The trigger types a workflow may use (SPEC §2).
const TRIGGERS: [&str; 6] = [
    "Gameplay.DataCaptured",
    "Gameplay.DataCapturedQualified",
    "Gameplay.Ended",
    "Prize.Won",
    "Coupon.Redeemed",
    "Contact.Created",
];

/// Workflows per file of `--workflows`.
const WORKFLOWS_PER_FILE: u64 = 1000;

/// `count` more workflows for `--workflows`, across 1,000 workspaces (`ws_0` … `ws_999`, never the
/// bench's own), in files of [`WORKFLOWS_PER_FILE`]: the catalog a large tenant base loads. A mix
/// of the trigger types; every second one scoped to a card, every third with an `if`, every fourth
/// with a second action that `needs` the first. None matches the bench's events, so what they cost
/// is loading, indexing, memory and reload, not calls.
fn extra_workflows(url: &str, count: u64) -> Vec<String> {
    let mut files = Vec::new();
    let mut yaml = String::new();
    for i in 0..count {
        if i % WORKFLOWS_PER_FILE == 0 {
            if !yaml.is_empty() {
                files.push(std::mem::take(&mut yaml));
            }
            yaml.push_str("# Written by switchyard-bench (--workflows).\nworkflows:\n");
        }
        let _ = write!(
            yaml,
            "  - id: extra-{i}\n    workspace: ws_{}\n    trigger:\n      event: {}\n",
            i % 1000,
            TRIGGERS[(i % TRIGGERS.len() as u64) as usize]
        );
        if i % 2 == 0 {
            let _ = writeln!(yaml, "      scope: {{ card: card_{} }}", i % 50);
        }
        if i % 3 == 0 {
            yaml.push_str("      if: \"contact.email != blank\"\n");
        }
        let _ = write!(
            yaml,
            r#"    actions:
      - id: post
        http:
          url: {url}
          headers: {{ Content-Type: application/json }}
          body: |
            {{ "id": "{{{{ event.id }}}}", "email": "{{{{ contact.email }}}}", "workflow": "extra-{i}" }}
"#
        );
        if i % 4 == 0 {
            let _ = write!(
                yaml,
                r#"      - id: follow_up
        needs: post
        http:
          url: {url}
          body: |
            {{ "id": "{{{{ event.id }}}}", "after": "{{{{ steps.post.status }}}}" }}
"#
            );
        }
    }
    if !yaml.is_empty() {
        files.push(yaml);
    }
    files
}

/// Appends a comment to every workflow file in `folder`: the next reload compiles them all.
pub fn touch_workflow_files(folder: &Path) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(folder).with_context(|| format!("reading {}", folder.display()))?
    {
        let path = entry.context("reading the workflows folder")?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let mut text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            text.push_str("# changed by switchyard-bench before its second reload\n");
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes `dir/switchyard.yaml` and `dir/workflows/bench.yaml` for a service with its own
/// `prefix`, calling the sink at `sink`.
pub fn write_files(
    dir: &Path,
    prefix: &str,
    amqp_url: &str,
    sink: SocketAddr,
    overrides: &Overrides,
    history_url: Option<&str>,
    scenario: Scenario,
) -> anyhow::Result<Setup> {
    let workflows = dir.join("workflows");
    let secrets = dir.join("secrets");
    for folder in [&workflows, &secrets] {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    let url = match scenario.ports {
        Some((first, count)) => {
            format!("http://127.0.0.1:{{{{ data.seq | modulo: {count} | plus: {first} }}}}/bench")
        }
        None => format!("http://{sink}/bench"),
    };
    std::fs::write(
        workflows.join("bench.yaml"),
        workflow(&url, scenario.actions_per_event),
    )
    .context("writing the workflow")?;
    for (n, file) in extra_workflows(&url, scenario.workflows).iter().enumerate() {
        std::fs::write(workflows.join(format!("extra-{n:03}.yaml")), file)
            .context("writing the extra workflows")?;
    }

    let metrics = free_port()?;
    // JSON strings are YAML strings: paths and URLs are quoted whatever they hold.
    let quote = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    let mut yaml = String::from("# Written by switchyard-bench; deleted at the end of the run.\n");
    let _ = write!(
        yaml,
        "amqp:\n  url: {}\n  prefix: {}\n  queue_type: quorum\n",
        quote(amqp_url),
        quote(prefix)
    );
    if overrides.router_prefetch.is_some() || overrides.publish_linger.is_some() {
        yaml.push_str("router:\n");
        if let Some(prefetch) = overrides.router_prefetch {
            let _ = writeln!(yaml, "  prefetch: {prefetch}");
        }
        if let Some(linger) = overrides.publish_linger {
            let _ = writeln!(yaml, "  publish_linger: {}us", linger.as_micros());
        }
    }
    if overrides.concurrency.is_some() || overrides.worker_prefetch.is_some() {
        yaml.push_str("worker:\n");
        if let Some(concurrency) = overrides.concurrency {
            let _ = writeln!(yaml, "  concurrency: {concurrency}");
        }
        if let Some(prefetch) = overrides.worker_prefetch {
            let _ = writeln!(yaml, "  prefetch: {prefetch}");
        }
    }
    if let Some(url) = history_url {
        let _ = writeln!(yaml, "history:\n  url: {}", quote(url));
    }
    let _ = write!(
        yaml,
        concat!(
            "http:\n  allow_networks: [127.0.0.1/32]\n",
            "metrics:\n  listen: {}\n",
            "log:\n  format: text\n  level: \"warn,switchyard::broker::acks=info\"\n",
            "shutdown_grace: 10s\n",
            "workflows:\n  paths: [{}]\n",
            "secrets:\n  dir: {}\n"
        ),
        metrics,
        quote(&workflows.to_string_lossy()),
        quote(&secrets.to_string_lossy()),
    );
    let config = Config::from_yaml(&yaml).context("the bench's service configuration")?;
    let config_path = dir.join("switchyard.yaml");
    std::fs::write(&config_path, &yaml).context("writing the configuration")?;

    let binary = std::env::current_exe()
        .context("locating switchyard-bench")?
        .with_file_name("switchyard");
    if !binary.is_file() {
        bail!(
            "{} does not exist; build it first with the same profile as this bench (make bench builds both: cargo build --profile dist --bins)",
            binary.display()
        );
    }
    Ok(Setup {
        binary,
        config_path,
        config,
        log: dir.join("switchyard.log"),
        metrics,
    })
}

/// A configuration with nothing but the prefix, for the topology's names.
pub fn names_only(prefix: &str) -> anyhow::Result<Config> {
    let quoted = serde_json::Value::String(prefix.to_owned()).to_string();
    Config::from_yaml(&format!("amqp:\n  prefix: {quoted}\n")).context("the bench prefix")
}

/// A free port on 127.0.0.1 for `metrics.listen` (the service binds it a moment later; another
/// process taking it in between would make the start fail loudly, not wrongly).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}

/// The running service.
pub struct Child {
    /// The process.
    process: std::process::Child,
    /// Its log.
    log: PathBuf,
    /// Its `/readyz` and `/metrics`.
    metrics: SocketAddr,
    /// An HTTP client for them.
    http: reqwest::Client,
}

impl Child {
    /// Starts `switchyard run --role all --config …`, with stderr to the log file and no
    /// `SWITCHYARD__…` variables (the bench's config must be the one measured).
    pub fn spawn(setup: &Setup, overrides: &Overrides) -> anyhow::Result<Child> {
        let log = File::create(&setup.log)
            .with_context(|| format!("creating {}", setup.log.display()))?;
        let mut command = Command::new(&setup.binary);
        command
            .args(["run", "--role", "all", "--config"])
            .arg(&setup.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("opening the log")?)
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHYARD__") {
                command.env_remove(key);
            }
        }
        if let Some(threads) = overrides.threads {
            command.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        let process = command
            .spawn()
            .with_context(|| format!("starting {}", setup.binary.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building an HTTP client")?;
        Ok(Child {
            process,
            log: setup.log.clone(),
            metrics: setup.metrics,
            http,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("http://{}/readyz", self.metrics);
        loop {
            if let Some(status) = self.process.try_wait().context("watching the service")? {
                bail!(
                    "the service exited ({status}) before it was ready; its log ends with:\n{}",
                    self.log_tail(20)
                );
            }
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the service was not ready within {}s; its log ends with:\n{}",
                    timeout.as_secs(),
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `switchyard_action_attempts_total{connector="http"}` by outcome, from `/metrics`.
    pub async fn attempts(&self) -> Vec<(String, u64)> {
        let url = format!("http://{}/metrics", self.metrics);
        let Ok(response) = self.http.get(&url).send().await else {
            return Vec::new();
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| {
                line.starts_with("switchyard_action_attempts_total{")
                    && line.contains("connector=\"http\"")
            })
            .filter_map(|line| {
                let outcome = line.split("outcome=\"").nth(1)?.split('"').next()?;
                let value = line.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((outcome.to_owned(), value as u64))
            })
            .collect()
    }

    /// A counter without labels from `/metrics`, by its exposed name.
    pub async fn counter(&self, name: &str) -> Option<u64> {
        let url = format!("http://{}/metrics", self.metrics);
        let text = self.http.get(&url).send().await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
    }

    /// `switchyard_action_duration_seconds{connector="http"}` so far: (sum in seconds, count).
    pub async fn call_durations(&self) -> Option<(f64, f64)> {
        let url = format!("http://{}/metrics", self.metrics);
        let text = self.http.get(&url).send().await.ok()?.text().await.ok()?;
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains("connector=\"http\""))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        Some((
            value("switchyard_action_duration_seconds_sum{")?,
            value("switchyard_action_duration_seconds_count{")?,
        ))
    }

    /// Sends SIGHUP and waits until `switchyard_config_reloads_total` counts one more reload;
    /// returns how long that took and whether it succeeded.
    pub async fn reload(&self, timeout: Duration) -> anyhow::Result<(Duration, bool)> {
        let before = self.reloads().await;
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .context("running kill -HUP")?;
        anyhow::ensure!(sent.success(), "kill -HUP failed: {sent}");
        while started.elapsed() < timeout {
            let now = self.reloads().await;
            if now.0 + now.1 > before.0 + before.1 {
                return Ok((started.elapsed(), now.0 > before.0));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("no reload counted within {}s of SIGHUP", timeout.as_secs())
    }

    /// `switchyard_config_reloads_total` (ok, error) from `/metrics`.
    async fn reloads(&self) -> (u64, u64) {
        let url = format!("http://{}/metrics", self.metrics);
        let text = match self.http.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => return (0, 0),
        };
        let count = |result: &str| {
            text.lines()
                .filter(|l| l.starts_with("switchyard_config_reloads_total{"))
                .filter(|l| l.contains(&format!("result=\"{result}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        (count("ok"), count("error"))
    }

    /// Sends SIGTERM (through `kill`: this crate has no libc binding) and waits for the exit;
    /// kills it after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.process.try_wait()? {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            self.process.kill()?;
            return Ok(self.process.wait()?);
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > grace {
                self.process.kill()?;
                self.process.wait()?;
                bail!(
                    "the service did not stop within {}s of SIGTERM; killed",
                    grace.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of the service's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What the service said of its acks when it stopped: one `broker::acks` line per consumer
    /// channel that settled anything (`consumer=… multiple_acks=… single_acks=… requeues=…`).
    pub fn ack_summary(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|line| !line.contains("multiple_acks=0 single_acks=0 requeues=0"))
            .filter_map(|line| line.split_once("acks are out; closing it "))
            .map(|(_, fields)| fields.trim().to_owned())
            .collect()
    }
}

impl Drop for Child {
    /// A bench that fails half-way must not leave the service running.
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}
