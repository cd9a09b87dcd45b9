//! The demo sink: an HTTP server that answers `200 {"ok":true}` to any request and prints it.
//!
//! `make sink` (or `cargo run --example sink`) listens on 127.0.0.1:8080, where
//! `config/workflows/demo-sink.yaml` sends its requests. Change the address with
//! `--listen 127.0.0.1:9000` or `SINK_LISTEN=127.0.0.1:9000`.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri, header};
use clap::Parser;

/// Answers 200 {"ok":true} to every request and prints what it received.
#[derive(Debug, Parser)]
struct Args {
    /// The address to listen on.
    #[arg(long, env = "SINK_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// The headers worth seeing; everything else is left out to keep the output short.
const SHOWN: [&str; 7] = [
    "content-type",
    "user-agent",
    "idempotency-key",
    "authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!(
        "sink: listening on http://{}; every request is answered 200 {{\"ok\":true}} (Ctrl-C stops)",
        listener.local_addr()?
    );
    let app = Router::new().fallback(receive);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Prints one request and answers it.
async fn receive(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ([(header::HeaderName, &'static str); 1], &'static str) {
    let now = chrono::Local::now().format("%H:%M:%S%.3f");
    let mut out = format!("\n{now}  {method} {uri}\n");
    for name in SHOWN {
        if let Some(value) = headers.get(name) {
            let value = value.to_str().unwrap_or("[not text]");
            // Show the scheme of a credential, never the credential itself.
            let value = if name == "authorization" {
                format!("{} [hidden]", value.split(' ').next().unwrap_or(""))
            } else {
                value.to_owned()
            };
            out.push_str(&format!("  {name}: {value}\n"));
        }
    }
    if !body.is_empty() {
        let shown = match serde_json::from_slice::<serde_json::Value>(&body) {
            // Pretty-printing a parsed value cannot fail.
            Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(&body).into_owned(),
        };
        out.push('\n');
        for line in shown.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    print!("{out}");
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"ok\":true}",
    )
}
