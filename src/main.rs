//! The `switchyard` command line (SPEC §4).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::commands::{self, destinations, dlq};
use switchyard::{Role, Service, reload, runs, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Carries engagement events from RabbitMQ to Salesforce, Mailchimp, Braze, any REST API and
/// signed webhooks.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// The configuration file; every key can be overridden as SWITCHYARD__SECTION__KEY.
    #[arg(long, global = true, default_value = switchyard::DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the service until SIGTERM or SIGINT; SIGHUP reloads the workflow files.
    Run {
        /// Which part of the pipeline this process runs.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Checks the configuration and every workflow; exit 1 if anything is wrong.
    Validate,
    /// Dry run: which workflows and webhooks match an event, and the exact requests (secrets
    /// redacted). Sends nothing.
    Test {
        /// A JSON event, as upstream would publish it.
        #[arg(long)]
        event: PathBuf,
    },
    /// Publishes an event file to the events exchange (demos, smoke tests).
    Publish {
        /// A JSON event.
        #[arg(long)]
        event: PathBuf,
        /// How many copies (ids get a -N suffix when more than one).
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// At most this many per second (default: as fast as confirms allow).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Declares the exchanges and queues and prints them.
    Topology,
    /// Makes the running service with this --config re-read its workflow files and secrets
    /// (SIGHUP, without a shell or `kill`), and says whether it took them.
    Reload {
        /// The service's process id (default: found in /proc by its --config).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Browses and repairs the dead-letter queue: stats, list, show, replay, export, purge.
    Dlq {
        #[command(subcommand)]
        command: dlq::Command,
    },
    /// Run history (needs history.url): list, show and replay actions.
    Runs {
        #[command(subcommand)]
        command: runs::Command,
    },
    /// Destinations (connections, webhooks, hosts): list their states, pause and resume them.
    Destinations {
        #[command(subcommand)]
        command: destinations::Command,
    },
    /// Serves the operator console alone (runs, dead letters, workflows in a browser) on
    /// console.listen, without consuming anything. Sign in with a token of console.tokens.
    /// `switchyard run` serves the same console when console.listen is set.
    #[command(
        long_about = "Serves the operator console alone (SPEC §11): run history, the dead-letter queue (show, replay with a dry-run preview, export, purge), the loaded workflows and a box to preview an event's requests.\n\nIt listens on console.listen (e.g. 127.0.0.1:9465; SWITCHYARD__CONSOLE__LISTEN) and signs people in with the tokens of console.tokens, each { name, role: operator|viewer, token: \"{{ secrets.NAME }}\" }. It consumes nothing; `switchyard run` serves the same console beside the pipeline when console.listen is set. SIGHUP re-reads the workflow files and secrets (rotated tokens included)."
    )]
    Console,
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    switchyard::app::set_memory_release(allocator::purge);
    // Bad arguments are a user error (exit 1, SPEC §4); clap's own default would be 2, which
    // means "unreachable" here. --help and --version print and exit 0.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(commands::USER_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let config = match commands::load_config(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    match args.command {
        Command::Run { role } => runtime.block_on(run(config, role)),
        Command::Validate => commands::validate(&config, &mut out),
        Command::Test { event } => commands::dry_run(&config, &event, &mut out),
        Command::Publish { event, count, rate } => {
            runtime.block_on(commands::publish(&config, &event, count, rate, &mut out))
        }
        Command::Topology => runtime.block_on(commands::topology(&config, &mut out)),
        Command::Dlq { command } => runtime.block_on(dlq::run(&config, command, &mut out)),
        Command::Reload { pid } => {
            runtime.block_on(reload::reload(&config, &args.config, pid, &mut out))
        }
        Command::Runs { command } => runtime.block_on(runs::run(&config, command, &mut out)),
        Command::Destinations { command } => {
            runtime.block_on(destinations::run(&config, command, &mut out))
        }
        Command::Console => runtime.block_on(console(config)),
    }
}

/// `switchyard console`: the console alone, until SIGTERM or SIGINT; SIGHUP reloads.
async fn console(config: switchyard::Config) -> ExitCode {
    let _log = telemetry::init_logging(&config.log);
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let Some(listen) = config.console.listen else {
        error!(
            "console.listen is empty: set it (e.g. 127.0.0.1:9465, or SWITCHYARD__CONSOLE__LISTEN) and give console.tokens"
        );
        return ExitCode::from(commands::USER_ERROR);
    };
    let shutdown = CancellationToken::new();
    let faults = switchyard::faults::Faults::new(shutdown.clone());
    let app = match switchyard::shared::Shared::new(config, faults) {
        Ok(app) => std::sync::Arc::new(app),
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::from(commands::USER_ERROR);
        }
    };
    if let Err(e) = switchyard::console::start(app.clone(), listen, false, shutdown.clone()).await {
        error!(error = %e, "cannot start the console");
        return ExitCode::from(commands::USER_ERROR);
    }
    tokio::spawn(
        app.faults
            .guard("reload on SIGHUP", reload_on_hangup(app.clone(), hangup)),
    );
    tokio::select! {
        () = wait_for_signal() => info!("shutting down"),
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    app.history.close(std::time::Duration::from_secs(5)).await;
    match app.faults.panicked() {
        Some(panic) => {
            error!(panic = %panic, exit_status = switchyard::faults::PANICKED, "exiting after a panic");
            ExitCode::from(switchyard::faults::PANICKED)
        }
        None => ExitCode::SUCCESS,
    }
}

async fn run(config: switchyard::Config, role: Role) -> ExitCode {
    // Kept until `run` returns: dropping it writes out the log lines still queued.
    let _log = telemetry::init_logging(&config.log);
    // Installed before anything starts: until a handler exists, SIGHUP's default action would
    // kill the process, and `/readyz` can answer before a task spawned later has run.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let shutdown = CancellationToken::new();
    let service = match Service::start(config, role, shutdown.clone()).await {
        Ok(service) => service,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::from(commands::USER_ERROR);
        }
    };
    let app = service.app.clone();
    tokio::spawn(
        app.faults
            .clone()
            .guard("reload on SIGHUP", reload_on_hangup(app, hangup)),
    );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        // Cancelled first: nothing, not even logging, may stand between a stop request and the
        // drain.
        stop.cancel();
        info!("shutting down");
    });
    match service.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ switchyard::app::Error::Panicked(_)) => {
            error!(error = %e, exit_status = switchyard::faults::PANICKED, "exiting after a panic");
            ExitCode::from(switchyard::faults::PANICKED)
        }
        Err(e) => {
            error!(error = %e, "stopped with an error");
            ExitCode::from(commands::UNREACHABLE)
        }
    }
}

/// Re-reads the workflow files and secrets on every SIGHUP (`run` and `console`).
async fn reload_on_hangup(
    app: std::sync::Arc<switchyard::shared::Shared>,
    hangup: std::io::Result<tokio::signal::unix::Signal>,
) {
    let mut hangup = match hangup {
        Ok(signal) => signal,
        Err(e) => {
            warn!(error = %e, "SIGHUP reload unavailable");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match app.reload() {
            Ok(count) => info!(workflows = count, "workflows reloaded"),
            Err(problems) => {
                for problem in &problems {
                    error!(problem = %problem, "reload refused; the previous workflows keep running");
                }
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The service's allocator: jemalloc with one arena.
///
/// Against glibc's malloc (with one arena too), jemalloc cut the service's CPU per action by about
/// an eighth in interleaved runs of `switchyard-bench` (median 0.236 against 0.270 ms over eight
/// each): many of the pipeline's blocks are allocated on one thread (lapin's I/O thread, a runtime
/// worker) and freed on another, which glibc pays for in locks and consolidation. One arena
/// instead of jemalloc's default of four per CPU keeps the peak RSS within a MiB of glibc's (each
/// arena keeps its own partly used pages: 29.3 MiB with the default). `_RJEM_MALLOC_CONF` in the
/// environment overrides these options.
#[cfg(target_os = "linux")]
mod allocator {
    use std::ffi::CStr;
    use std::ptr;

    #[global_allocator]
    static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's compiled-in options, read before `main` (the crate builds it with the `_rjem_`
    /// symbol prefix, so its `malloc_conf` is `_rjem_malloc_conf`).
    #[unsafe(export_name = "_rjem_malloc_conf")]
    static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

    /// Hands every arena's unused dirty pages back to the system now, rather than as they decay.
    pub fn purge() {
        // MALLCTL_ARENAS_ALL: every arena.
        if let Err(code) = write_only(c"arena.4096.purge") {
            tracing::debug!(code, "jemalloc purge refused");
        }
    }

    /// Runs a mallctl that takes and returns nothing.
    fn write_only(name: &CStr) -> Result<(), i32> {
        // SAFETY: a NUL-terminated name and null pointers for a control without values.
        let code = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        if code == 0 { Ok(()) } else { Err(code) }
    }

    /// Reads an `unsigned` option.
    #[cfg(test)]
    fn read_unsigned(name: &CStr) -> Result<u32, i32> {
        let mut value: u32 = 0;
        let mut len = size_of::<u32>();
        // SAFETY: `value` and `len` outlive the call and `len` is `value`'s size, as mallctl
        // expects of an `unsigned` option.
        let code = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&raw mut value).cast::<std::ffi::c_void>(),
                &raw mut len,
                ptr::null_mut(),
                0,
            )
        };
        if code == 0 { Ok(value) } else { Err(code) }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_allocator_is_jemalloc_with_its_compiled_in_single_arena() {
            // Without MALLOC_CONF being read, jemalloc would answer four arenas per CPU.
            assert_eq!(read_unsigned(c"opt.narenas"), Ok(1));
        }

        #[test]
        fn a_purge_of_every_arena_is_accepted() {
            let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![(i % 251) as u8; 4096]).collect();
            drop(blocks);
            assert_eq!(write_only(c"arena.4096.purge"), Ok(()));
            // A name jemalloc does not know is refused (so the Ok above means something).
            assert!(write_only(c"arena.4096.no-such-control").is_err());
        }
    }
}
