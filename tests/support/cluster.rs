//! A private RabbitMQ cluster on this machine (tests/cluster.rs): nodes with their own names,
//! AMQP, distribution and management ports and data directories, clustered with
//! `rabbitmqctl join_cluster`, and removed when dropped, also when the test panics. The shared
//! node on 5672 is never touched.
//!
//! How extra nodes run as root on Debian:
//! - `/usr/sbin/rabbitmq-server` and `rabbitmqctl` are wrappers that `su` to the `rabbitmq` user,
//!   whose home holds the shared node's Erlang cookie. The scripts behind them
//!   (`/usr/lib/rabbitmq/bin`) are run directly instead, as the current user.
//! - Every node of the cluster and every `rabbitmqctl` call must present the same cookie: they
//!   all run with `HOME` set to the cluster's own folder, which holds its own `.erlang.cookie`.
//! - `/etc/rabbitmq/rabbitmq-env.conf` names the shared node (`NODENAME=rabbit@localhost`), and
//!   `/etc/rabbitmq/rabbitmq.conf` its listener: each node gets its own (empty) env file and its
//!   own config file instead.
//! - Nodes register with the epmd already running for the shared node; distribution listens on
//!   the loopback only.
//!
//! Start-up is what the test waits for most, so the nodes boot in parallel, then the others join
//! the first in parallel.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one node may take to boot (a loaded CI machine boots three at once).
const BOOT: Duration = Duration::from_secs(120);

/// One node of the cluster.
pub struct Node {
    /// Erlang node name, `sy<id>-a@localhost`.
    pub name: String,
    /// AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    /// Management API port on 127.0.0.1.
    pub management_port: u16,
    /// Erlang distribution port.
    dist_port: u16,
    /// Config, data and logs.
    dir: PathBuf,
    /// The `rabbitmq-server` script while the node runs (the Erlang VM is its child).
    server: Option<Child>,
}

impl Node {
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `127.0.0.1:<port>`: how switchyard's logs name the node.
    pub fn label(&self) -> String {
        format!("127.0.0.1:{}", self.amqp_port)
    }

    /// `http://127.0.0.1:<management port>`.
    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }

    /// The last lines of its log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let text = std::fs::read_to_string(&log)
            .or_else(|_| std::fs::read_to_string(self.dir.join("server.out")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The Erlang VM's process id (the pid file is written early in the boot).
    fn vm_pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .map(|pid| pid.trim().to_owned())
            .filter(|pid| !pid.is_empty())
    }
}

/// A running private cluster.
pub struct Cluster {
    /// Holds the cookie (as `HOME`) and each node's folder.
    home: tempfile::TempDir,
    /// Where the unwrapped RabbitMQ scripts are.
    scripts: PathBuf,
    /// The nodes; the first is the one the others joined.
    pub nodes: Vec<Node>,
    /// Kills the nodes if this process dies before `Drop` runs ([`Cluster::watchdog`]).
    watchdog: Option<Child>,
}

/// The folder of the `rabbitmq-server` and `rabbitmqctl` scripts that do not switch user:
/// Debian's, or the folder of `rabbitmq-server` on the `PATH` (Homebrew, the generic tarball).
fn scripts_dir() -> PathBuf {
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").is_file() {
        return debian;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .find(|dir| dir.join("rabbitmq-server").is_file())
        .expect("rabbitmq-server is installed (the cluster test starts its own nodes)")
}

impl Cluster {
    /// Boots `size` nodes named `sy<random>-a`, `-b`, … and clusters them.
    pub async fn start(size: usize) -> Cluster {
        let home = tempfile::Builder::new()
            .prefix("switchyard-cluster-")
            .tempdir()
            .expect("a folder for the cluster");
        let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let cookie = home.path().join(".erlang.cookie");
        std::fs::write(&cookie, format!("SWITCHYARDTEST{id}")).expect("write the cookie");
        // Erlang refuses a cookie file that others can read.
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .expect("cookie permissions");
        let mut cluster = Cluster {
            scripts: scripts_dir(),
            nodes: (0..size)
                .map(|i| {
                    let letter = char::from(b'a' + i as u8);
                    Node {
                        name: format!("sy{id}-{letter}@localhost"),
                        amqp_port: listen_port(),
                        management_port: listen_port(),
                        dist_port: listen_port(),
                        dir: home.path().join(letter.to_string()),
                        server: None,
                    }
                })
                .collect(),
            home,
            watchdog: None,
        };
        for node in &cluster.nodes {
            write_node_files(node);
        }
        cluster.watchdog = Some(cluster.watchdog());
        for i in 0..size {
            cluster.boot(i);
        }
        for i in 0..size {
            // A fresh node that fails its first boot (seen once: its Mnesia schema could not be
            // created) is wiped and booted again; a node that fails twice fails the test.
            if let Err(why) = cluster.try_await_startup(i).await {
                eprintln!(
                    "cluster: {} failed to boot; wiping it and booting again:\n{why}",
                    cluster.nodes[i].name
                );
                kill_node(&mut cluster.nodes[i]);
                let _ = std::fs::copy(
                    cluster.nodes[i]
                        .dir
                        .join("log")
                        .join(format!("{}.log", cluster.nodes[i].name)),
                    std::env::temp_dir().join(format!("{}-failed-boot.log", cluster.nodes[i].name)),
                );
                let _ = std::fs::remove_dir_all(cluster.nodes[i].dir.join("mnesia"));
                let node = &mut cluster.nodes[i];
                (node.amqp_port, node.management_port, node.dist_port) =
                    (listen_port(), listen_port(), listen_port());
                write_node_files(node);
                cluster.boot(i);
                cluster.await_startup(i).await;
            }
        }
        // One node at a time: two nodes joining at once race in Mnesia's schema merge, and one of
        // them may then fail `start_app` (seen in CI). A failed join is reset and tried once more.
        let first = cluster.nodes[0].name.clone();
        for i in 1..size {
            cluster.ctl(i, &["stop_app"]).await;
            let joined = async {
                cluster.try_ctl(i, &["join_cluster", &first]).await?;
                cluster.try_ctl(i, &["start_app"]).await
            };
            if let Err(why) = joined.await {
                eprintln!(
                    "cluster: {} did not join; resetting it and joining again:\n{why}",
                    cluster.nodes[i].name
                );
                let _ = cluster.try_ctl(i, &["stop_app"]).await;
                cluster.ctl(i, &["reset"]).await;
                cluster.ctl(i, &["join_cluster", &first]).await;
                cluster.ctl(i, &["start_app"]).await;
            }
        }
        let status = cluster
            .ctl(0, &["cluster_status", "--formatter", "json"])
            .await;
        for node in &cluster.nodes {
            assert!(
                status.contains(&format!("\"{}\"", node.name)),
                "{} is in the cluster: {status}",
                node.name
            );
        }
        cluster
    }

    /// Removes the nodes even if the test process is killed (a timeout, SIGKILL) and `Drop` never
    /// runs: a shell waits for this process to end, or for the folder to go (a normal drop), then
    /// kills every node still in its pid file and deletes the folder.
    fn watchdog(&self) -> Child {
        let home = self.home.path().display().to_string();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null && [ -d '{home}' ]; do sleep 1; done; \
             for f in '{home}'/*/pid; do [ -f \"$f\" ] && kill -9 \"$(cat \"$f\")\"; done; \
             rm -rf '{home}'",
            pid = std::process::id()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog")
    }

    /// Every node's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Starts node `i`'s `rabbitmq-server` (it keeps its data, so a stopped node rejoins).
    fn boot(&mut self, i: usize) {
        let node = &self.nodes[i];
        // A pid file from an earlier run of the node would pass for this one.
        let _ = std::fs::remove_file(node.dir.join("pid"));
        let out = std::fs::File::create(node.dir.join("server.out")).expect("server.out");
        let err = out.try_clone().expect("server.out");
        let server = Command::new(self.scripts.join("rabbitmq-server"))
            .env("HOME", self.home.path())
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                node.dir.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", node.dir.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start rabbitmq-server");
        self.nodes[i].server = Some(server);
    }

    /// Waits until node `i` runs (`rabbitmqctl await_startup` answers only once the node has
    /// registered, so it is asked again until then).
    async fn await_startup(&mut self, i: usize) {
        if let Err(why) = self.try_await_startup(i).await {
            panic!("{why}");
        }
    }

    /// [`Cluster::await_startup`], saying why the node did not come up.
    async fn try_await_startup(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + BOOT;
        loop {
            if self.nodes[i].vm_pid().is_some()
                && self
                    .try_ctl(i, &["await_startup", "--timeout", "120"])
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if let Some(server) = self.nodes[i].server.as_mut()
                && let Ok(Some(status)) = server.try_wait()
            {
                return Err(format!(
                    "{} exited while booting ({status}):\n{}",
                    self.nodes[i].name,
                    self.nodes[i].log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not boot within {BOOT:?}:\n{}",
                    self.nodes[i].name,
                    self.nodes[i].log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every quorum queue whose name starts with `prefix` has `members` members
    /// online, as node `i` sees it: a node that has just come back runs again before its queue
    /// replicas have caught up, and losing another node before then would leave those queues
    /// without a quorum, which no client can help.
    pub async fn await_queues_online(&self, i: usize, prefix: &str, members: usize) {
        let deadline = Instant::now() + BOOT;
        loop {
            let listed = self
                .try_ctl(
                    i,
                    &[
                        "list_queues",
                        "name",
                        "type",
                        "online",
                        "--formatter",
                        "json",
                        "--quiet",
                    ],
                )
                .await;
            let behind: Vec<String> = match &listed {
                Ok(text) => serde_json::from_str::<Vec<serde_json::Value>>(text)
                    .unwrap_or_default()
                    .iter()
                    .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                    .filter(|q| q["type"] == "quorum")
                    .filter(|q| q["online"].as_array().map_or(0, Vec::len) < members)
                    .map(|q| q["name"].as_str().unwrap_or("").to_owned())
                    .collect(),
                Err(e) => vec![e.clone()],
            };
            if listed.is_ok() && behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queues without {members} members online after {BOOT:?}: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `rabbitmqctl -n <node i> <args>`; its output, or why it failed.
    pub async fn try_ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        self.try_tool("rabbitmqctl", i, args).await
    }

    /// One of RabbitMQ's command-line tools (`rabbitmqctl`, `rabbitmq-queues`) against node `i`.
    async fn try_tool(&self, tool: &str, i: usize, args: &[&str]) -> Result<String, String> {
        let output = tokio::process::Command::new(self.scripts.join(tool))
            .env("HOME", self.home.path())
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("{tool}: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.success() {
            true => Ok(stdout),
            false => Err(format!(
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )),
        }
    }

    /// What the cluster says of some quorum queues, for a failure message: from node `i`, each
    /// member's raft state and log and commit indexes (`rabbitmq-queues quorum_status`) and the
    /// leader each queue's record names; then every node's last log lines.
    pub async fn diagnose(&self, i: usize, queues: &[String]) -> String {
        let node = &self.nodes[i].name;
        let mut report = String::new();
        for queue in queues {
            let args = ["quorum_status", queue.as_str()];
            let text = answer_within_30_s(self.try_tool("rabbitmq-queues", i, &args)).await;
            report.push_str(&format!("quorum_status {queue} on {node}:\n{text}\n"));
        }
        // Which leader each queue's record names (the channels route by it).
        let args = ["list_queues", "name", "leader", "online", "--quiet"];
        let text = answer_within_30_s(self.try_tool("rabbitmqctl", i, &args)).await;
        report.push_str(&format!(
            "list_queues name leader online on {node}:\n{text}\n"
        ));
        for node in &self.nodes {
            report.push_str(&format!(
                "{}'s last log lines:\n{}\n",
                node.name,
                node.log_tail()
            ));
        }
        report
    }

    /// [`Cluster::try_ctl`] that must succeed.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> String {
        self.try_ctl(i, args).await.unwrap_or_else(|e| {
            panic!(
                "rabbitmqctl -n {} {args:?} failed:\n{e}\n{}",
                self.nodes[i].name,
                self.nodes[i].log_tail()
            )
        })
    }

    /// Stops node `i` cleanly (`rabbitmqctl stop`): the cluster sees it leave.
    pub async fn stop(&mut self, i: usize) {
        self.ctl(i, &["stop"]).await;
        if let Some(mut server) = self.nodes[i].server.take() {
            let _ = tokio::task::spawn_blocking(move || server.wait()).await;
        }
    }

    /// Starts a stopped node `i` again and waits until it runs (it rejoins the cluster).
    pub async fn restart(&mut self, i: usize) {
        self.boot(i);
        self.await_startup(i).await;
    }

    /// `kill -9` of node `i`'s Erlang VM: no goodbye to the cluster or the clients.
    pub fn kill9(&mut self, i: usize) {
        kill_node(&mut self.nodes[i]);
    }
}

/// A tool's output or why it failed, or that it did not answer in 30 s (a failure message must not
/// hang on a stuck node).
async fn answer_within_30_s(ran: impl Future<Output = Result<String, String>>) -> String {
    match tokio::time::timeout(Duration::from_secs(30), ran).await {
        Ok(Ok(text) | Err(text)) => text,
        Err(_) => "no answer in 30 s".to_owned(),
    }
}

/// SIGKILLs a node's VM and its script, and reaps the script.
fn kill_node(node: &mut Node) {
    if let Some(pid) = node.vm_pid() {
        let _ = Command::new("kill").args(["-9", &pid]).status();
        let _ = std::fs::remove_file(node.dir.join("pid"));
    }
    if let Some(mut server) = node.server.take() {
        let _ = server.kill();
        let _ = server.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill_node(node);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// The node's config file, its plugins (management, for queue leaders) and an empty env file.
/// A free port for a node to listen on, below the ephemeral range (32768 and up on Linux): a port
/// the kernel handed out as free may be taken by an outgoing connection before the node binds it
/// (the nodes and `rabbitmqctl` open many), and the node then fails to boot.
/// Never the same one twice in a test process.
fn listen_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

fn write_node_files(node: &Node) {
    std::fs::create_dir_all(&node.dir).expect("node folder");
    let write = |name: &str, text: String| {
        std::fs::write(node.dir.join(name), text).expect("write a node file");
    };
    write(
        "rabbitmq.conf",
        format!(
            "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {}\n",
            node.management_port
        ),
    );
    write("enabled_plugins", "[rabbitmq_management].\n".into());
    write("rabbitmq-env.conf", String::new());
}
