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

/// The workflow: every `Gameplay.DataCaptured` of `ws_bench` is POSTed to the sink. The bare
/// placeholders keep their JSON type, so the sink reads `seq` and `sent_at_us` as numbers.
const WORKFLOW: &str = r#"# Written by switchyard-bench.
workflows:
  - id: bench
    workspace: ws_bench
    trigger:
      event: Gameplay.DataCaptured
    actions:
      - id: post
        http:
          method: POST
          url: URL
          headers: { Content-Type: application/json }
          timeout: 5s
          body: |
            { "id": "{{ event.id }}", "seq": {{ data.seq }}, "sent_at_us": {{ data.sent_at_us }},
              "email": "{{ contact.email }}", "company": "{{ form_fields.company }}" }
"#;

/// Writes `dir/switchyard.yaml` and `dir/workflows/bench.yaml` for a service with its own
/// `prefix`, calling the sink at `sink`.
pub fn write_files(
    dir: &Path,
    prefix: &str,
    amqp_url: &str,
    sink: SocketAddr,
    overrides: &Overrides,
) -> anyhow::Result<Setup> {
    let workflows = dir.join("workflows");
    let secrets = dir.join("secrets");
    for folder in [&workflows, &secrets] {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    let url = format!("http://{sink}/bench");
    std::fs::write(workflows.join("bench.yaml"), WORKFLOW.replace("URL", &url))
        .context("writing the workflow")?;

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
    let _ = write!(
        yaml,
        concat!(
            "http:\n  allow_networks: [127.0.0.1/32]\n",
            "metrics:\n  listen: {}\n",
            "log:\n  format: text\n  level: warn\n",
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
            "{} does not exist; build it first: cargo build --release --bins",
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
