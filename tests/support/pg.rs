//! PostgreSQL for the history tests: each test gets its own schema in the shared `switchyard`
//! database (`make postgres` creates role and database), reached over TCP with a password, as
//! in CI and production. `SWITCHYARD_TEST_PG_URL` points elsewhere.

use tokio_postgres::Client;

/// The database the tests use unless `SWITCHYARD_TEST_PG_URL` says otherwise.
pub const DEFAULT_URL: &str = "postgres://switchyard:switchyard@127.0.0.1:5432/switchyard";

/// The base URL (no schema).
pub fn base_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Connects to `url`; the connection runs on a spawned task.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} (run `make postgres`): {e}"));
    tokio::spawn(connection);
    client
}

/// `url` with `search_path` set to `schema` (what a test's service uses).
pub fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// A schema of its own for one test, dropped by [`Schema::drop_now`].
pub struct Schema {
    /// Its name.
    pub name: String,
    /// The base URL of its database.
    pub base: String,
}

impl Schema {
    /// Creates `h_<name>_<8 hex digits>` in the test database.
    pub async fn create(name: &str) -> Schema {
        Schema::create_at(&base_url(), name).await
    }

    /// Creates one in the database at `base`.
    pub async fn create_at(base: &str, name: &str) -> Schema {
        let name = format!("h_{name}_{:08x}", rand::random::<u32>());
        connect(base)
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("CREATE SCHEMA");
        Schema {
            name,
            base: base.to_owned(),
        }
    }

    /// The URL whose connections work in this schema.
    pub fn url(&self) -> String {
        with_schema(&self.base, &self.name)
    }

    /// A connection working in this schema.
    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    /// The `history:` config section pointing here.
    pub fn config(&self) -> String {
        format!("history: {{ url: \"{}\" }}", self.url())
    }

    /// Drops the schema and everything in it.
    pub async fn drop_now(self) {
        connect(&self.base)
            .await
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .expect("DROP SCHEMA");
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary folder, its own port), so that a
/// test may stop and start it without touching the shared one. Run by the `postgres` OS user
/// (the server refuses to run as root); password logins over TCP as in production. Stopped and
/// removed when dropped.
pub struct PrivateCluster {
    /// Its data directory (and socket folder).
    dir: tempfile::TempDir,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// `pg_ctl` of the installed version.
    pg_ctl: std::path::PathBuf,
    /// It speaks TLS with a certificate of [`PrivateCluster::ca`], for 127.0.0.1 only.
    tls: bool,
}

/// The password of the role a private cluster creates.
const PRIVATE_PASSWORD: &str = "history-test";

impl PrivateCluster {
    /// Initialises and starts a cluster; panics with what to install if it cannot.
    pub fn start() -> PrivateCluster {
        PrivateCluster::start_with(false)
    }

    /// One that speaks TLS: its certificate is issued by a test CA ([`PrivateCluster::ca`]) for
    /// the address 127.0.0.1 and no name; [`PrivateCluster::other_ca`] issued nothing it uses.
    pub fn start_with_tls() -> PrivateCluster {
        PrivateCluster::start_with(true)
    }

    fn start_with(tls: bool) -> PrivateCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)",
            )
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .max()
            .map(|(_, bin)| bin)
            .expect("a PostgreSQL version under /usr/lib/postgresql");
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PRIVATE_PASSWORD).expect("password file");
        if tls {
            make_certificates(dir.path());
        }
        chown_postgres(dir.path());
        let initdb = bin.join("initdb");
        run_as_postgres(&[
            initdb.to_str().expect("utf-8"),
            "-D",
            data.to_str().expect("utf-8"),
            "-U",
            "switchyard_test",
            "--pwfile",
            pwfile.to_str().expect("utf-8"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ]);
        let cluster = PrivateCluster {
            port: super::free_port(),
            pg_ctl: bin.join("pg_ctl"),
            dir,
            tls,
        };
        cluster.resume();
        cluster
    }

    /// The URL of its `postgres` database, with a password.
    pub fn url(&self) -> String {
        format!(
            "postgres://switchyard_test:{PRIVATE_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The PEM file of the CA that issued the server's certificate (with [`Self::start_with_tls`]).
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The PEM file of a CA that issued nothing the server uses.
    pub fn other_ca(&self) -> std::path::PathBuf {
        self.dir.path().join("other.crt")
    }

    /// Stops the server at once (`-m immediate`: as if it crashed).
    pub fn kill(&self) {
        run_as_postgres(&[
            self.pg_ctl.to_str().expect("utf-8"),
            "-D",
            self.data().as_str(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn resume(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            let dir = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
        }
        let log = self.dir.path().join("server.log");
        run_as_postgres(&[
            self.pg_ctl.to_str().expect("utf-8"),
            "-D",
            self.data().as_str(),
            "-o",
            &options,
            "-l",
            log.to_str().expect("utf-8"),
            "-w",
            "start",
        ]);
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let pg_ctl = self.pg_ctl.display().to_string();
        let _ = command_as(
            "postgres",
            &[&pg_ctl, "-D", &self.data(), "-m", "immediate", "stop"],
        )
        .output();
    }
}

/// A test CA, a server certificate it issued for IP 127.0.0.1 (key mode 0600, as PostgreSQL
/// wants), and another CA, with the `openssl` command (Debian's PostgreSQL depends on it).
fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [
        ("ca", "/CN=switchyard test CA"),
        ("other", "/CN=someone else"),
    ] {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        let mut args = vec![
            "req", "-x509", "-days", "2", "-subj", subject, "-keyout", &key, "-out", &crt,
        ];
        args.extend(ec);
        openssl(&args);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(&args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write server.ext");
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
}

/// Whether this process runs as root.
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// A command run as `user` (`runuser` as root, else `sudo -n -u`).
fn command_as(user: &str, command: &[&str]) -> std::process::Command {
    let mut run = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", user, "--"]);
        c
    } else {
        let mut c = std::process::Command::new("sudo");
        c.args(["-n", "-u", user]);
        c
    };
    run.args(command);
    run
}

/// Runs a command as `user`; fails the test with its output if it fails.
fn run_as(user: &str, command: &[&str]) {
    let output = command_as(user, command)
        .output()
        .expect("run a command as another user");
    assert!(
        output.status.success(),
        "{command:?} as {user} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a command as the `postgres` OS user.
fn run_as_postgres(command: &[&str]) {
    run_as("postgres", command);
}

/// Hands a file or folder to the `postgres` OS user.
fn chown_postgres(path: &std::path::Path) {
    run_as(
        "root",
        &[
            "chown",
            "-R",
            "postgres:postgres",
            path.to_str().expect("utf-8 path"),
        ],
    );
}
