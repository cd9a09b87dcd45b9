//! `switchyard publish`: send an event file, pipelined, at an optional rate.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lapin::BasicProperties;

use super::{UNREACHABLE, USER_ERROR};
use crate::broker::{self, Publisher, Topology};
use crate::config::Config;

/// `switchyard publish`: sends an event file `count` times (ids suffixed when count > 1) at up to
/// `rate` per second, with pipelined confirms.
pub async fn publish(
    config: &Config,
    event_file: &Path,
    count: u64,
    rate: Option<f64>,
    out: &mut impl Write,
) -> ExitCode {
    let raw = match std::fs::read(event_file) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("error: {}: {e}", event_file.display());
            return ExitCode::from(USER_ERROR);
        }
    };
    let mut body: serde_json::Value = match serde_json::from_slice(&raw) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("error: {} is not JSON: {e}", event_file.display());
            return ExitCode::from(USER_ERROR);
        }
    };
    let base_id = body
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("evt")
        .to_owned();
    let routing_key = body
        .get("type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let topology = Topology::new(config);
    let started = Instant::now();
    let result = async {
        let connection = broker::connect_any(&config.amqp, "switchyard publish")
            .await?
            .connection;
        let publisher = Publisher::open(&connection).await?;
        let mut window = std::collections::VecDeque::new();
        for i in 0..count {
            if let Some(rate) = rate.filter(|r| *r > 0.0) {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            if count > 1 {
                body["id"] = serde_json::Value::String(format!("{base_id}-{i}"));
            }
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let properties =
                BasicProperties::default().with_content_type("application/json".into());
            window.push_back(
                publisher
                    .send(&topology.events, &routing_key, &bytes, properties)
                    .await?,
            );
            if window.len() >= 1000
                && let Some(pending) = window.pop_front()
            {
                Publisher::confirmed(pending, &routing_key).await?;
            }
        }
        for pending in window {
            Publisher::confirmed(pending, &routing_key).await?;
        }
        broker::close_connection(&connection, 200, "done").await;
        Ok::<(), broker::BrokerError>(())
    }
    .await;
    match result {
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            let _ = writeln!(
                out,
                "published {count} event(s) to {} in {secs:.2}s ({:.0}/s)",
                topology.events,
                count as f64 / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(broker::BrokerError::Unroutable(what)) => {
            eprintln!(
                "error: the broker did not route {what}; run `switchyard topology` (or start the service) first"
            );
            ExitCode::from(UNREACHABLE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(UNREACHABLE)
        }
    }
}
