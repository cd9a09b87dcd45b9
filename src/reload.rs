//! `switchyard reload`: tells the running service that uses the same configuration file to re-read
//! its workflow files and secrets (SPEC §3 "Reload"), then reports whether it took them.
//!
//! It exists for the shipped image: a distroless container has no shell and no `kill`, so
//! `kubectl exec POD -- switchyard reload` is the way to send SIGHUP from inside the pod. It finds
//! the service in the container's process table (`/proc`: the same executable, running `run`, with
//! the same `--config` file) and signals it; nothing listens for reload requests, so nothing is
//! exposed. It then reads the service's own `switchyard_config_reloads_total` on `metrics.listen`
//! to say whether the new files were loaded or refused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::commands::{UNREACHABLE, USER_ERROR};
use crate::config::Config;

/// How long the service may take to report the reload's result on `/metrics`.
const RESULT_WAIT: Duration = Duration::from_secs(10);
/// How often `/metrics` is read meanwhile.
const POLL: Duration = Duration::from_millis(100);

/// `switchyard reload [--pid PID]`.
pub async fn reload(
    config: &Config,
    config_path: &Path,
    pid: Option<i32>,
    out: &mut impl Write,
) -> ExitCode {
    let targets = match pid {
        Some(pid) => vec![pid],
        None => services_using(config_path),
    };
    if targets.is_empty() {
        eprintln!(
            "error: no `switchyard run --config {}` runs here; run this command where the service runs \
             (kubectl exec POD -- switchyard reload), or name it with --pid",
            config_path.display()
        );
        return ExitCode::from(USER_ERROR);
    }
    let metrics = metrics_url(config);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build();
    let before = match &client {
        Ok(client) => reload_counts(client, &metrics).await,
        Err(_) => None,
    };
    for &pid in &targets {
        let Some(target) = Pid::from_raw(pid) else {
            eprintln!("error: {pid} is not a process id");
            return ExitCode::from(USER_ERROR);
        };
        if let Err(e) = kill_process(target, Signal::HUP) {
            eprintln!("error: cannot signal process {pid}: {e}");
            return ExitCode::from(USER_ERROR);
        }
        let _ = writeln!(out, "sent SIGHUP to process {pid}");
    }
    // Without a reading before the signal (no metrics listener here, or port 0), the result can
    // only be read in the service's log.
    let (Ok(client), Some(before)) = (client, before) else {
        let _ = writeln!(
            out,
            "the result is in the service's log ({metrics} did not answer)"
        );
        return ExitCode::SUCCESS;
    };
    let deadline = tokio::time::Instant::now() + RESULT_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let Some(now) = reload_counts(&client, &metrics).await else {
            continue;
        };
        if now.error > before.error {
            eprintln!(
                "error: the service refused the new workflow files and keeps running the previous ones; \
                 its log says why, and `switchyard validate` lists every problem"
            );
            return ExitCode::from(USER_ERROR);
        }
        if now.ok > before.ok {
            let _ = writeln!(out, "reloaded: {} workflow(s) loaded", now.loaded);
            return ExitCode::SUCCESS;
        }
    }
    eprintln!(
        "error: no reload result on {metrics} after {}s; read the service's log",
        RESULT_WAIT.as_secs()
    );
    ExitCode::from(UNREACHABLE)
}

/// Where this configuration's service serves `/metrics` (the loopback address when it listens on
/// every address).
fn metrics_url(config: &Config) -> String {
    let mut addr = config.metrics.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}/metrics")
}

/// The reload counters and the loaded workflows, as one service reports them.
struct ReloadCounts {
    ok: f64,
    error: f64,
    loaded: f64,
}

async fn reload_counts(client: &reqwest::Client, url: &str) -> Option<ReloadCounts> {
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    let value = |series: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
    };
    Some(ReloadCounts {
        ok: value("switchyard_config_reloads_total{result=\"ok\"}")?,
        error: value("switchyard_config_reloads_total{result=\"error\"}")?,
        loaded: value("switchyard_workflows_loaded").unwrap_or(0.0),
    })
}

/// The processes of this executable running `run` with the same configuration file, found in
/// `/proc` (empty when there is none, or no `/proc`).
fn services_using(config_path: &Path) -> Vec<i32> {
    let Ok(own_exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let Some(own_config) = absolute(Path::new("/proc/self/cwd"), config_path) else {
        return Vec::new();
    };
    let own_pid = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| u32::try_from(pid).is_ok_and(|pid| pid != own_pid))
        .filter(|&pid| {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            // Processes of another user cannot be read: they are not ours to signal either.
            if std::fs::read_link(proc.join("exe")).ok().as_ref() != Some(&own_exe) {
                return false;
            }
            let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            run_config(&args)
                .and_then(|config| absolute(&proc.join("cwd"), Path::new(&config)))
                .is_some_and(|config| config == own_config)
        })
        .collect();
    found.sort_unstable();
    found
}

/// The `--config` of a `switchyard … run …` command line (its default when not given); `None`
/// for any other command.
fn run_config(args: &[String]) -> Option<String> {
    let mut config = crate::DEFAULT_CONFIG.to_owned();
    let mut command = None;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--config" {
            config = rest.next()?.clone();
        } else if let Some(value) = arg.strip_prefix("--config=") {
            config = value.to_owned();
        } else if command.is_none() && !arg.starts_with('-') {
            // The first word that is not an option is the command.
            command = Some(arg.as_str());
        }
    }
    (command == Some("run")).then_some(config)
}

/// `path` resolved against `cwd` (a process's `/proc/PID/cwd`), with links resolved.
fn absolute(cwd: &Path, path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(cwd.join(path)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn finds_the_config_of_a_run_command_line() {
        assert_eq!(
            run_config(&args(
                "switchyard run --config /etc/switchyard/switchyard.yaml --role worker"
            ))
            .as_deref(),
            Some("/etc/switchyard/switchyard.yaml")
        );
        assert_eq!(
            run_config(&args("switchyard --config=a.yaml run")).as_deref(),
            Some("a.yaml")
        );
        assert_eq!(
            run_config(&args("switchyard run")).as_deref(),
            Some(crate::DEFAULT_CONFIG)
        );
        assert_eq!(
            run_config(&args("switchyard dlq stats --config a.yaml")),
            None
        );
        assert_eq!(run_config(&args("switchyard reload")), None);
        assert_eq!(
            run_config(&args("switchyard dlq list --workflow run")),
            None
        );
    }

    #[test]
    fn metrics_on_every_address_are_read_on_loopback() {
        let mut config = Config::from_yaml("metrics: { listen: 0.0.0.0:9464 }").expect("config");
        assert_eq!(metrics_url(&config), "http://127.0.0.1:9464/metrics");
        config.metrics.listen = "10.1.2.3:9000".parse().expect("address");
        assert_eq!(metrics_url(&config), "http://10.1.2.3:9000/metrics");
    }
}
