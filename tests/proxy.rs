//! Outbound HTTP through a proxy (`http.proxy`, as `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` would
//! set it), against the real broker: plain http goes to the proxy in absolute form and https as a
//! CONNECT tunnel, `no_proxy` hosts go direct, and the private-network guard is applied to the real
//! target, never to the proxy's own address.
//!
//! The proxy listens on 127.0.0.1 and is named `localhost`, while `http.allow_networks` allows only
//! 127.0.0.2 and 127.0.0.3: were the guard applied to the proxy, nothing would get through.

mod support;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use support::{AfterGet, Harness, event, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A forwarding HTTP proxy on 127.0.0.1 that records the request line of every connection it
/// serves (`CONNECT host:port HTTP/1.1`, or `GET http://host:port/path HTTP/1.1`); plain requests
/// are forwarded with `Connection: close`, so that each connection carries one request.
struct FakeProxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    async fn start() -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let _ = FakeProxy::serve(client, record).await;
                });
            }
        });
        FakeProxy { port, seen, task }
    }

    /// Reads the request head, records its first line, connects to the target it names and
    /// relays bytes both ways (after a `200` for CONNECT; the head itself for absolute form).
    async fn serve(client: TcpStream, record: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
        let mut client = BufReader::new(client);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if client.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let first = head.lines().next().unwrap_or_default().to_owned();
        record.lock().expect("lock").push(first.clone());
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let authority = if method == "CONNECT" {
            target.to_owned()
        } else {
            let url = url::Url::parse(target).map_err(std::io::Error::other)?;
            format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(80)
            )
        };
        let mut upstream = TcpStream::connect(&authority).await?;
        if method == "CONNECT" {
            client
                .get_mut()
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
        } else {
            // Origin servers accept the absolute form too: forward the head as it came, but
            // asking the origin to close after its answer, so that the client's next request opens
            // a new connection whose first line is recorded (a reused one would go unseen).
            let head: String = head
                .split_inclusive("\r\n")
                .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
                .collect();
            let head = format!(
                "{}Connection: close\r\n\r\n",
                head.strip_suffix("\r\n").unwrap_or(&head)
            );
            upstream.write_all(head.as_bytes()).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok(())
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A remote on `ip` that records the path of every request and answers 200, or, on `/redirect`,
/// a redirect to `http://localhost:<port>/private-hop` (a loopback target).
struct Remote {
    url: String,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Remote {
    async fn start(ip: &str, loopback_port: u16) -> Remote {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("127.0.0.0/8 is bindable on Linux");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let record = paths.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            record.lock().expect("lock").push(uri.path().to_owned());
            let redirect = uri.path() == "/redirect";
            async move {
                let to = format!("http://localhost:{loopback_port}/private-hop");
                if redirect {
                    (StatusCode::FOUND, [(axum::http::header::LOCATION, to)]).into_response()
                } else {
                    StatusCode::OK.into_response()
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Remote { url, paths, task }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("lock").clone()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_go_through_the_proxy_and_the_guard_checks_the_real_target() {
    let proxy = FakeProxy::start().await;
    let proxied = Remote::start("127.0.0.2", proxy.port).await;
    let direct = Remote::start("127.0.0.3", proxy.port).await;
    let tls_authority = proxied.url.trim_start_matches("http://").to_owned();
    let actions = [
        ("via_proxy", format!("{}/through-the-proxy", proxied.url)),
        ("bypass", format!("{}/direct", direct.url)),
        // localhost is 127.0.0.1: not allowed, even though the proxy would fetch it.
        (
            "blocked_name",
            format!("http://localhost:{}/private", proxy.port),
        ),
        ("tls", format!("https://{tls_authority}/tls")),
        // An allowed target redirecting to loopback: the hop's host is checked before the proxy.
        ("redirected", format!("{}/redirect", proxied.url)),
    ];
    let mut workflows = String::from(
        "workflows:\n  - id: proxied\n    workspace: ws_demo\n    trigger: { event: Gameplay.DataCaptured }\n    actions:\n",
    );
    for (id, url) in &actions {
        workflows.push_str(&format!(
            "      - {{ id: {id}, http: {{ url: \"{url}\" }} }}\n"
        ));
    }
    let h = Harness::start(
        "proxy",
        &workflows,
        &format!(
            "http: {{ allow_networks: [127.0.0.2/32, 127.0.0.3/32], proxy: \"http://localhost:{}\", no_proxy: \"127.0.0.3\" }}",
            proxy.port
        ),
        &[],
    )
    .await;

    h.publish(&event("evt_proxy_1", "Gameplay.DataCaptured"))
        .await;
    let dead_letter = h.name("dead-letter");
    wait_until(
        "the proxied and the direct calls, and three dead letters",
        async || {
            proxied.paths().len() >= 2
                && !direct.paths().is_empty()
                && h.broker.queue_len(&dead_letter).await >= 3
        },
    )
    .await;

    // Plain http: the absolute form, to the proxy, which fetched it from the real target.
    let seen = proxy.seen();
    let via = format!("POST {}/through-the-proxy HTTP/1.1", proxied.url);
    assert!(seen.contains(&via), "the proxy saw {seen:?}, not {via}");
    let mut paths = proxied.paths();
    paths.sort();
    assert_eq!(paths, ["/redirect", "/through-the-proxy"]);
    // https: a CONNECT to the target's own name and port (the proxy resolves it, not us).
    let connect = format!("CONNECT {tls_authority} HTTP/1.1");
    assert!(
        seen.contains(&connect),
        "the proxy saw {seen:?}, not {connect}"
    );
    // no_proxy: straight to the remote, never through the proxy.
    assert_eq!(direct.paths(), ["/direct"]);
    assert!(
        !seen.iter().any(|line| line.contains("127.0.0.3")),
        "a no_proxy host went through the proxy: {seen:?}"
    );
    // The guard resolved the real target (localhost = loopback) and refused it before the proxy.
    assert!(
        !seen.iter().any(|line| line.contains("localhost")),
        "a blocked target reached the proxy: {seen:?}"
    );

    let records = h.broker.take_all(&dead_letter, AfterGet::Ack).await;
    let class_of = |action: &str| {
        records
            .iter()
            .find(|r| r.header_str("x-switchyard-action").as_deref() == Some(action))
            .and_then(|r| r.header_str("x-switchyard-error-class"))
            .unwrap_or_else(|| panic!("no dead letter for {action}"))
    };
    assert_eq!(class_of("blocked_name"), "blocked");
    assert_eq!(class_of("redirected"), "blocked");
    let reason = records
        .iter()
        .find(|r| r.header_str("x-switchyard-action").as_deref() == Some("blocked_name"))
        .and_then(|r| r.header_str("x-switchyard-reason"))
        .unwrap_or_default();
    assert!(reason.contains("loopback"), "{reason}");
    // The tunnel reached a server that speaks no TLS: a failed call, not a blocked one.
    assert_eq!(class_of("tls"), "exhausted");
    h.finish().await;
}
