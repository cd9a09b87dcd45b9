//! The README's quick start, run with the README's own commands, as a newcomer would: `make run`
//! until `/readyz`, `make sink`, `make publish`, the sink printing the documented POST, then
//! Ctrl-C and a clean exit (issue 11). The commands are read from README.md, so a README that
//! drifts from what works fails here.
//!
//! Two overrides keep it beside other runs on one machine: its own `amqp.prefix` and a free
//! metrics port, both through the environment `make run` passes on. The demo sink keeps the
//! README's address, 127.0.0.1:8080, which the demo workflow calls.

mod support;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{
    Broker, TopologyGuard, free_port, http_get, metric_value, repo_root, unique_prefix,
    wait_until_within,
};
use switchyard::Config;

/// A `make run` may have to build the binary first (`make test` builds it beforehand).
const START_DEADLINE: Duration = Duration::from_secs(300);

/// Where the README's commands build: the Makefile's `QUICKSTART_TARGET`, which `make test` builds
/// beforehand. Not `target/`: `cargo run --bin switchyard` builds without the dev-dependencies'
/// features, so there it would swap `target/debug/switchyard` under the tests running it.
const QUICKSTART_TARGET: &str = "target/quickstart";

/// The sh code blocks of the README section headed `heading`, one command a line, comments and
/// blank lines left out.
fn readme_commands(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"));
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            code if in_sh => {
                let command = code.split('#').next().unwrap_or("").trim();
                if !command.is_empty() {
                    commands.push(command.to_owned());
                }
            }
            _ => {}
        }
    }
    commands
}

/// The first ```json block after `marker` in the README.
fn readme_json_after(readme: &str, marker: &str) -> Value {
    let at = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md does not say {marker:?}"));
    let rest = &readme[at..];
    let start = rest.find("```json\n").expect("a json block") + "```json\n".len();
    let end = start + rest[start..].find("```").expect("the block's end");
    serde_json::from_str(&rest[start..end]).expect("the README's body is JSON")
}

/// The one README command that starts with `prefix`.
fn command_starting(commands: &[String], prefix: &str) -> String {
    commands
        .iter()
        .find(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("the README shows no `{prefix}`: {commands:?}"))
        .clone()
}

/// A README command in its own process group (as a terminal runs it), output in files.
struct Shell {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Shell {
    fn start(command: &str, envs: &[(&str, &str)], dir: &Path, name: &str) -> Shell {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut shell = Command::new("bash");
        // A terminal's environment, not the test runner's: the CARGO* and NEXTEST* variables it
        // sets would make `cargo run` rebuild (and `make` pick the runner's cargo).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let runner = [
                "CARGO",
                "NEXTEST",
                "__NEXTEST",
                "RUSTC",
                "RUSTDOC",
                "RUSTFLAGS",
            ]
            .iter()
            .any(|p| name.starts_with(p));
            if runner && name != "CARGO_HOME" {
                shell.env_remove(name.as_ref());
            }
        }
        shell.env("CARGO_TARGET_DIR", repo_root().join(QUICKSTART_TARGET));
        // The runner also puts the toolchain's own folder first on PATH, bypassing rustup's proxies.
        if let Some(path) = std::env::var_os("PATH") {
            let kept: Vec<PathBuf> = std::env::split_paths(&path)
                .filter(|p| !p.to_string_lossy().contains("/toolchains/"))
                .collect();
            if let Ok(path) = std::env::join_paths(kept) {
                shell.env("PATH", path);
            }
        }
        let child = shell
            .args(["-c", command])
            .current_dir(repo_root())
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command}: {e}"));
        Shell {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("{out}{err}")
    }

    /// Ctrl-C: SIGINT to the whole process group, as a terminal sends it.
    fn interrupt(&self) {
        let group = format!("-{}", self.child.id());
        let sent = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT -- {group}");
    }

    /// Runs `command` to its end (at most [`START_DEADLINE`]): its exit status and output.
    async fn run_to_end(
        command: &str,
        envs: &[(&str, &str)],
        dir: &Path,
        name: &str,
    ) -> (std::process::ExitStatus, String) {
        let mut shell = Shell::start(command, envs, dir, name);
        wait_until_within(
            &format!("`{command}` to finish"),
            START_DEADLINE,
            async || shell.exited(),
        )
        .await;
        let status = shell.child.wait().expect("exit status");
        (status, shell.output())
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited ({status}):\n{}", self.output());
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if !self.exited() {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_quick_start_delivers_the_documented_post() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let quick_start = readme_commands(&readme, "Quick start");
    let see_it = readme_commands(&readme, "See it deliver");
    let run = command_starting(&quick_start, "make run");
    let sink = command_starting(&see_it, "make sink");
    let publish = command_starting(&see_it, "make publish");
    let documented = readme_json_after(&readme, "this body:");

    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique_prefix("quickstart");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let console = format!("127.0.0.1:{}", free_port());
    let envs = [
        ("SWITCHYARD__AMQP__PREFIX", prefix.as_str()),
        ("SWITCHYARD__METRICS__LISTEN", listen.as_str()),
        ("SWITCHYARD__CONSOLE__LISTEN", console.as_str()),
    ];
    let config = Config::from_yaml(&format!("amqp: {{ prefix: {prefix} }}\n")).expect("config");
    let guard = TopologyGuard::new(&config);

    let mut service = Shell::start(&run, &envs, dir.path(), "run");
    let ready = format!("http://{listen}/readyz");
    wait_until_within("`make run` to answer /readyz", START_DEADLINE, async || {
        service.assert_running("make run");
        matches!(http_get(&ready).await, Some((200, _)))
    })
    .await;
    // The console it prints, with the demo token.
    assert!(
        service.output().contains(&format!(
            "console: http://{console}  token: demo-console-token"
        )),
        "{}",
        service.output()
    );
    let login = http_get(&format!("http://{console}/login")).await;
    assert!(
        matches!(&login, Some((200, body)) if body.contains("Sign in")),
        "{login:?}"
    );

    let mut demo_sink = Shell::start(&sink, &[], dir.path(), "sink");
    wait_until_within("`make sink` to listen", START_DEADLINE, async || {
        demo_sink.assert_running("make sink");
        demo_sink
            .output()
            .contains("sink: listening on http://127.0.0.1:8080")
    })
    .await;

    let (status, output) = Shell::run_to_end(&publish, &envs, dir.path(), "publish").await;
    assert!(status.success(), "make publish: {status}\n{output}");

    let received = wait_for_body(&demo_sink, &service).await;
    assert_eq!(
        received,
        documented,
        "the sink printed:\n{}",
        demo_sink.output()
    );
    let printed = demo_sink.output();
    assert!(printed.contains("POST /events"), "{printed}");
    assert!(printed.contains("idempotency-key: act_"), "{printed}");

    // One delivery, and no dead letter: a newcomer's first publish is clean. The worker counts
    // the call once the sink's answer is back, which can be after the sink has printed it.
    let success = r#"switchyard_action_attempts_total{connector="http",outcome="success"}"#;
    let mut metrics = String::new();
    wait_until_within(
        "the call to be counted",
        Duration::from_secs(10),
        async || {
            metrics = http_get(&format!("http://{listen}/metrics"))
                .await
                .map(|(_, body)| body)
                .unwrap_or_default();
            metric_value(&metrics, success).is_some_and(|calls| calls >= 1.0)
        },
    )
    .await;
    assert_eq!(metric_value(&metrics, success), Some(1.0), "{metrics}");
    let dead: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_dead_lettered_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead, 0.0, "{metrics}");
    let broker = Broker::connect().await;
    assert_eq!(broker.queue_len(&format!("{prefix}.dead-letter")).await, 0);
    // The README's way to look at dead letters, as it shows it.
    let dlq_list = "cargo run -- dlq list";
    assert!(
        readme.contains(&format!("`{dlq_list}`")),
        "README.md shows `{dlq_list}`"
    );
    let (status, output) = Shell::run_to_end(dlq_list, &envs, dir.path(), "dlq-list").await;
    assert!(status.success(), "{dlq_list}: {status}\n{output}");
    assert!(!output.contains("error"), "{dlq_list}:\n{output}");

    // The README's dry run: the request the demo workflow would send, and nothing sent.
    let dry_run = command_starting(&see_it, "cargo run -- test --event");
    let (status, output) = Shell::run_to_end(&dry_run, &[], dir.path(), "dry-run").await;
    assert!(status.success(), "{dry_run}: {status}\n{output}");
    assert!(
        output.contains("workflow demo-sink")
            && output.contains("POST http://127.0.0.1:8080/events"),
        "{dry_run}:\n{output}"
    );
    let body: Value = output
        .lines()
        .find_map(|line| serde_json::from_str(line.trim()).ok())
        .unwrap_or_else(|| panic!("{dry_run} prints the body:\n{output}"));
    assert_eq!(body, documented, "{dry_run}:\n{output}");

    // Ctrl-C: the service drains and stops cleanly.
    service.interrupt();
    wait_until_within(
        "the service to stop after Ctrl-C",
        Duration::from_secs(40),
        async || service.exited(),
    )
    .await;
    let logs = service.output();
    assert!(logs.contains("stopped"), "a clean stop is logged:\n{logs}");
    for bad in ["panicked", "blocked unless", "ERROR"] {
        assert!(
            !logs.contains(bad),
            "{bad:?} in the service's output:\n{logs}"
        );
    }
    demo_sink.interrupt();
    wait_until_within(
        "the sink to stop after Ctrl-C",
        Duration::from_secs(20),
        async || demo_sink.exited(),
    )
    .await;
    guard.delete().await;
}

/// Waits until the sink has printed a request body, and parses it.
async fn wait_for_body(sink: &Shell, service: &Shell) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let printed = std::fs::read_to_string(&sink.stdout).unwrap_or_default();
        if let Some(body) = printed_body(&printed) {
            return body;
        }
        assert!(
            std::time::Instant::now() < end,
            "the sink printed no POST in 30 s.\nsink:\n{}\nservice:\n{}",
            sink.output(),
            service.output()
        );
        tokio::time::sleep(support::POLL).await;
    }
}

/// The JSON body the sink printed after `POST /events` (indented by two spaces).
fn printed_body(output: &str) -> Option<Value> {
    let at = output.find("POST /events")?;
    let rest = &output[at..];
    let start = rest.find("\n  {")? + 1;
    let lines: Vec<&str> = rest[start..].lines().collect();
    let end = lines.iter().position(|l| *l == "  }")?;
    let text: String = lines[..=end]
        .iter()
        .map(|l| format!("{}\n", l.get(2..).unwrap_or("")))
        .collect();
    serde_json::from_str(&text).ok()
}
