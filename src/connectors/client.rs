//! The one outbound HTTP client: timeouts, a bounded response read, and errors that never echo a
//! URL (URLs may hold secrets).

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderValue, USER_AGENT};

use std::sync::Arc;

use super::Request;
use super::bulkhead::{Bulkheads, without_slot};
use super::proxy::{BadProxy, ProxyRules};
use crate::config::HttpConfig;
use crate::destinations::limits::Limits;
use crate::destinations::{Admit, BUSY_WAIT, Destination, Destinations, Report};
use crate::net::{Guard, GuardedResolver, ResolveError, find_blocked};
use crate::outcome::ErrorClass;
use crate::outcome::{self, Outcome};
use crate::trace::{self, TraceContext};

/// Redirects followed at most, each hop re-checked.
const MAX_REDIRECTS: usize = 5;

/// `User-Agent` of every request.
pub const AGENT: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));

/// A shared, cheaply cloned HTTP client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// The connection pool.
    client: reqwest::Client,
    /// The private-network guard (also inside the resolver and the redirect policy).
    guard: Arc<Guard>,
    /// Which requests go through a proxy (their target is checked before the call).
    proxies: Arc<ProxyRules>,
    /// Every destination's state: breaker, pause, quarantine, rate limit (SPEC §10).
    destinations: Arc<Destinations>,
    /// At most `worker.max_per_host` calls in flight per host.
    bulkheads: Arc<Bulkheads>,
    /// Rendered bodies larger than this are refused.
    max_body_bytes: usize,
    /// Response bodies are read up to this many bytes.
    max_response_bytes: usize,
    /// The default whole-request timeout, for error messages.
    timeout: Duration,
}

impl HttpClient {
    /// Builds the client from `http:` settings, with at most `max_per_host` calls in flight to
    /// one host.
    pub fn new(
        config: &HttpConfig,
        max_per_host: usize,
        destinations: Arc<Destinations>,
    ) -> Result<HttpClient, ClientError> {
        let guard = Arc::new(Guard::new(&config.allow_networks));
        let proxies = Arc::new(ProxyRules::new(&config.proxy, &config.no_proxy)?);
        let hops = guard.clone();
        let hop_proxies = proxies.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            if !matches!(attempt.url().scheme(), "http" | "https") {
                return attempt.error("redirect to a scheme other than http or https");
            }
            // Names are checked when resolved; literals here.
            if let Err(blocked) = hops.check_url(attempt.url()) {
                return attempt.error(blocked);
            }
            // Through a proxy nothing here resolves the new host: check it now. Only a hop to
            // another host needs it (the first one was checked before the call); this policy
            // cannot wait, so the lookup blocks, on this rare path only.
            let url = attempt.url();
            let same_host = attempt
                .previous()
                .last()
                .is_some_and(|prev| prev.host_str() == url.host_str());
            if hop_proxies.proxy_for(url).is_some()
                && !same_host
                && let Some(url::Host::Domain(host)) = url.host()
                && let Err(e) = hops.resolve_blocking(host)
            {
                return attempt.error(e.into_inner());
            }
            attempt.follow()
        });
        let route = proxies.clone();
        let builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(redirects)
            .dns_resolver(Arc::new(GuardedResolver::new(
                guard.clone(),
                proxies.proxy_hosts(),
            )))
            // One set of rules for reqwest and for the guard (no reqwest reading the environment
            // on its own): `http.proxy`, or HTTPS_PROXY / HTTP_PROXY / NO_PROXY.
            .no_proxy()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true);
        // Without a proxy, no rule to ask: reqwest would parse each request's URL again to call
        // one (about 5 % of the service's instructions per action, callgrind).
        let client = if proxies.is_empty() {
            builder
        } else {
            builder.proxy(reqwest::Proxy::custom(move |url| {
                route.proxy_for(url).cloned()
            }))
        }
        .build()?;
        Ok(HttpClient {
            client,
            guard,
            proxies,
            destinations,
            bulkheads: Arc::new(Bulkheads::new(max_per_host)),
            max_body_bytes: config.max_body_bytes,
            max_response_bytes: config.max_response_bytes,
            timeout: config.timeout,
        })
    }

    /// The destinations' state this client keeps.
    pub fn destinations(&self) -> &Arc<Destinations> {
        &self.destinations
    }

    /// [`Outcome::Held`] when `request`'s destination holds its calls now (checked before any
    /// wait for a connection's or a host's limits, so that held actions never queue there).
    pub fn held(&self, request: &Request) -> Option<Outcome> {
        self.destinations
            .check(&destination_of(request))
            .map(Outcome::Held)
    }

    /// Sends a request and classifies what comes back.
    pub async fn send(&self, request: Request) -> Outcome {
        self.send_with(request, outcome::classify_response).await
    }

    /// Sends a request and classifies what comes back with a connector's own classifier (its
    /// `classify.rs`), keeping the guard, the breaker, the timeouts and the response cap.
    pub async fn send_with(&self, request: Request, classify: outcome::Classifier) -> Outcome {
        let host = request.url.host_str().unwrap_or("?").to_owned();
        // Every connector, not only `http`: a webhook URL rendered to `file://…` is refused here.
        if !matches!(request.url.scheme(), "http" | "https") {
            return Outcome::fail(
                ErrorClass::Blocked,
                format!(
                    "scheme {} is not allowed; only http and https",
                    request.url.scheme()
                ),
            );
        }
        if let Err(blocked) = self.guard.check_url(&request.url) {
            return Outcome::fail(ErrorClass::Blocked, blocked.to_string());
        }
        // Through a proxy the proxy resolves the target, not this process: check it here.
        if let (Some(_), Some(url::Host::Domain(name))) =
            (self.proxies.proxy_for(&request.url), request.url.host())
        {
            match self.guard.resolve(name).await {
                Ok(_) => {}
                Err(ResolveError::Blocked(blocked)) => {
                    return Outcome::fail(ErrorClass::Blocked, blocked.to_string());
                }
                // The proxy may well resolve what this process cannot (split DNS): let it try.
                Err(ResolveError::Lookup(_)) => {}
            }
        }
        let body_len = request.body.as_ref().map_or(0, Vec::len);
        if body_len > self.max_body_bytes {
            return Outcome::fail(
                ErrorClass::Permanent,
                format!(
                    "the rendered body is {body_len} bytes, over http.max_body_bytes ({}); not sent to {host}",
                    self.max_body_bytes
                ),
            );
        }
        let connector = request.connector;
        let destination = destination_of(&request);
        if let Some(hold) = self.destinations.check(&destination) {
            return Outcome::Held(hold);
        }
        // Room at the host first (waiting without a worker slot, at most BUSY_WAIT: a host this
        // slow must not fill the worker's prefetch with waiting actions), then the destination's
        // admission: its breaker may have opened, or a pause come, while this call waited.
        let host_port = Destination::host(&request.url).id;
        let room = tokio::time::timeout(BUSY_WAIT, self.bulkheads.enter(&host_port));
        let _room = match room.await {
            Ok(Ok(room)) => room,
            Ok(Err(abandoned)) => return abandoned.into(),
            Err(_) => return Outcome::Held(Destinations::busy(&destination)),
        };
        let ticket = match self.destinations.admit(&destination, connector) {
            Admit::Hold(hold) => return Outcome::Held(hold),
            Admit::Call { after, ticket } => {
                if !after.is_zero()
                    && let Err(abandoned) = without_slot(tokio::time::sleep(after)).await
                {
                    return abandoned.into();
                }
                ticket
            }
        };
        // Run history records where the call went (a no-op outside a worker's call).
        let _ = crate::destinations::CALLED.try_with(|called| {
            called.replace(Some(destination.clone()));
        });
        let (outcome, limits) = self.call(request, &host, classify).await;
        self.destinations.record(ticket, report(&outcome, limits));
        outcome
    }

    async fn call(
        &self,
        request: Request,
        host: &str,
        classify: outcome::Classifier,
    ) -> (Outcome, Limits) {
        let host = host.to_owned();
        let timeout = request.timeout.unwrap_or(self.timeout);
        // Every call of an action sends its trace with a span of its own (SPEC §12), unless the
        // action sets traceparent itself.
        let call_trace = trace::CURRENT
            .try_with(TraceContext::child)
            .ok()
            .filter(|_| !request.headers.contains_key(trace::TRACEPARENT));
        let mut builder = self
            .client
            .request(request.method, request.url)
            .headers(request.headers)
            .header(USER_AGENT, HeaderValue::from_static(AGENT));
        if let Some(call_trace) = call_trace {
            builder = builder.header(trace::TRACEPARENT, call_trace.traceparent());
            if let Some(state) = call_trace.tracestate() {
                builder = builder.header(trace::TRACESTATE, state);
            }
        }
        if let Some(t) = request.timeout {
            builder = builder.timeout(t);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let mut response = match builder.send().await {
            Ok(response) => response,
            Err(e) => return (transport_failure(&e, &host, timeout), Limits::default()),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let limits = Limits::from_headers(&headers, std::time::SystemTime::now());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(None) => break,
                Ok(Some(chunk)) => {
                    let room = self.max_response_bytes.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if chunk.len() >= room {
                        break;
                    }
                }
                Err(e) => return (transport_failure(&e, &host, timeout), limits),
            }
        }
        (classify(status, &headers, &body, &host), limits)
    }
}

/// Where a request goes: the destination its sender named, or its URL's `host[:port]`.
fn destination_of(request: &Request) -> Destination {
    request
        .destination
        .clone()
        .unwrap_or_else(|| Destination::host(&request.url))
}

/// What an outcome tells of its destination.
fn report(outcome: &Outcome, limits: Limits) -> Report {
    let (failure, retryable) = match outcome {
        Outcome::Retry(failure) => (failure, true),
        Outcome::Fail(failure) => (failure, false),
        Outcome::Success { .. } | Outcome::Held(_) => {
            return Report {
                limits,
                ..Report::default()
            };
        }
    };
    let throttled = failure.status == Some(429) || (retryable && failure.retry_after.is_some());
    Report {
        failed: retryable && !throttled,
        refused: !retryable,
        throttled,
        retry_after: failure.retry_after.filter(|_| throttled),
        error: Some(failure.reason.clone()),
        limits,
    }
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// reqwest refused the settings.
    #[error(transparent)]
    Build(#[from] reqwest::Error),
    /// A proxy setting is not a URL.
    #[error(transparent)]
    Proxy(#[from] BadProxy),
}

/// A failure before a complete response: always retryable, described without the URL.
fn transport_failure(error: &reqwest::Error, host: &str, timeout: Duration) -> Outcome {
    if let Some(blocked) = find_blocked(error) {
        return Outcome::fail(ErrorClass::Blocked, blocked.to_string());
    }
    if error.is_timeout() {
        return Outcome::retry(format!(
            "no response from {host} within {}",
            crate::config::format_delay(timeout)
        ));
    }
    let what = if error.is_connect() {
        "could not connect to"
    } else {
        "request failed to"
    };
    // The innermost source says why (refused, reset, DNS); reqwest's own text names the URL.
    let detail = match error.source() {
        None => "transport error".to_owned(),
        Some(mut cause) => {
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        }
    };
    Outcome::retry(format!("{what} {host}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a webhook URL rendered to `file://…` used to reach reqwest, fail as a transport
    /// error and be retried until exhausted; every connector now refuses it as `blocked`.
    #[tokio::test]
    async fn a_scheme_other_than_http_or_https_is_blocked_without_a_call() {
        let config = crate::Config::from_yaml("{}").expect("the defaults are valid");
        let destinations = Destinations::new(
            config.destinations.clone(),
            crate::telemetry::Metrics::new(&["webhook"]),
        );
        let client = HttpClient::new(&config.http, 8, destinations).expect("a client");
        let outcome = client
            .send(Request {
                method: reqwest::Method::POST,
                url: url::Url::parse("file:///etc/passwd").expect("a URL"),
                headers: reqwest::header::HeaderMap::new(),
                body: None,
                timeout: None,
                connector: "webhook",
                destination: None,
            })
            .await;
        match outcome {
            Outcome::Fail(failure) => {
                assert_eq!(failure.class, ErrorClass::Blocked);
                assert!(failure.reason.contains("file"), "{}", failure.reason);
            }
            other => panic!("expected a permanent blocked failure, got {other:?}"),
        }
    }
}
