//! Salesforce OAuth 2.0: the client-credentials, refresh-token and JWT-bearer (RS256) flows, and
//! the one access token per connection that every worker task shares.
//!
//! Salesforce tokens carry no `expires_in`: a token lives for the org's session timeout, and the
//! API answers `401 INVALID_SESSION_ID` once it is gone. The cache therefore keeps a token until a
//! call is refused with it; the caller then invalidates that token (only that one: a task that
//! was already handed a newer token is not affected) and fetches again, once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use tracing::{info, warn};
use url::Url;

use crate::connectors::connection::{check_base_url, render_setting, setting};
use crate::connectors::{ConnectorKind, HttpClient, Request};
use crate::outcome::{ErrorClass, Outcome};
use crate::template::{Context, Engine, TextTemplate};

/// How long a refused token request is remembered, so that a burst of actions on a connection
/// with bad credentials does not hammer the token endpoint (or lock the user out).
const REFUSAL_MEMORY: Duration = Duration::from_secs(5);

/// Lifetime of a JWT bearer assertion (Salesforce wants a short `exp`).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(180);

/// `client_credentials:` — the connected app's consumer key and secret (My Domain login URL only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsDef {
    /// The consumer key.
    pub client_id: String,
    /// The consumer secret (usually `{{ secrets.X }}`).
    pub client_secret: String,
}

/// `refresh_token:` — a refresh token obtained once through the web-server flow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenDef {
    /// The consumer key.
    pub client_id: String,
    /// The consumer secret, when the connected app requires it.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The refresh token (usually `{{ secrets.X }}`).
    pub refresh_token: String,
}

/// `jwt_bearer:` — a certificate-based server-to-server login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtBearerDef {
    /// The consumer key (`iss`).
    pub client_id: String,
    /// The Salesforce user to act as (`sub`).
    pub username: String,
    /// The RSA private key in PEM, PKCS#8 or PKCS#1 (usually `{{ secrets.X }}`).
    pub private_key: String,
    /// `aud`; by default `https://login.salesforce.com` (or `https://test.salesforce.com` for a
    /// sandbox login URL), or the login URL itself when it is not a salesforce.com host.
    #[serde(default)]
    pub audience: Option<String>,
}

/// A compiled grant.
#[derive(Debug)]
pub enum Grant {
    /// `grant_type=client_credentials`.
    ClientCredentials {
        /// Consumer key.
        client_id: TextTemplate,
        /// Consumer secret.
        client_secret: TextTemplate,
    },
    /// `grant_type=refresh_token`.
    RefreshToken {
        /// Consumer key.
        client_id: TextTemplate,
        /// Consumer secret, if required.
        client_secret: Option<TextTemplate>,
        /// The refresh token.
        refresh_token: TextTemplate,
    },
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`.
    JwtBearer {
        /// Consumer key (`iss`).
        client_id: TextTemplate,
        /// User (`sub`).
        username: TextTemplate,
        /// PEM private key.
        private_key: TextTemplate,
        /// `aud`, when set explicitly.
        audience: Option<TextTemplate>,
    },
}

impl Grant {
    /// Compiles the one grant a connection names.
    pub fn compile(
        engine: &Engine,
        client_credentials: Option<&ClientCredentialsDef>,
        refresh_token: Option<&RefreshTokenDef>,
        jwt_bearer: Option<&JwtBearerDef>,
        errors: &mut Vec<String>,
    ) -> Option<Grant> {
        match (client_credentials, refresh_token, jwt_bearer) {
            (Some(def), None, None) => Some(Grant::ClientCredentials {
                client_id: setting(
                    engine,
                    "client_credentials.client_id",
                    &def.client_id,
                    errors,
                )?,
                client_secret: setting(
                    engine,
                    "client_credentials.client_secret",
                    &def.client_secret,
                    errors,
                )?,
            }),
            (None, Some(def), None) => {
                let client_secret = match &def.client_secret {
                    Some(src) => Some(setting(engine, "refresh_token.client_secret", src, errors)?),
                    None => None,
                };
                Some(Grant::RefreshToken {
                    client_id: setting(engine, "refresh_token.client_id", &def.client_id, errors)?,
                    client_secret,
                    refresh_token: setting(
                        engine,
                        "refresh_token.refresh_token",
                        &def.refresh_token,
                        errors,
                    )?,
                })
            }
            (None, None, Some(def)) => {
                let private_key =
                    setting(engine, "jwt_bearer.private_key", &def.private_key, errors)?;
                if let Some(literal) = private_key.literal() {
                    // A key written into the file is checked now (and is better kept in a secret).
                    if let Err(e) = KeyPair::from_pem(literal) {
                        errors.push(format!("jwt_bearer.private_key: {e}"));
                    }
                }
                let audience = match &def.audience {
                    Some(src) => Some(setting(engine, "jwt_bearer.audience", src, errors)?),
                    None => None,
                };
                Some(Grant::JwtBearer {
                    client_id: setting(engine, "jwt_bearer.client_id", &def.client_id, errors)?,
                    username: setting(engine, "jwt_bearer.username", &def.username, errors)?,
                    private_key,
                    audience,
                })
            }
            (None, None, None) => {
                errors.push(
                    "name how to log in: client_credentials, refresh_token or jwt_bearer".into(),
                );
                None
            }
            _ => {
                errors.push(
                    "name one way to log in: client_credentials, refresh_token or jwt_bearer"
                        .into(),
                );
                None
            }
        }
    }

    /// The form fields of the token request (they hold secrets: never log them).
    fn form(
        &self,
        ctx: &Context<'_>,
        login_url: &Url,
        now: i64,
    ) -> Result<Vec<(&'static str, String)>, Outcome> {
        Ok(match self {
            Grant::ClientCredentials {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials".to_owned()),
                (
                    "client_id",
                    render_setting(client_id, ctx, "client_credentials.client_id")?,
                ),
                (
                    "client_secret",
                    render_setting(client_secret, ctx, "client_credentials.client_secret")?,
                ),
            ],
            Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_owned()),
                    (
                        "refresh_token",
                        render_setting(refresh_token, ctx, "refresh_token.refresh_token")?,
                    ),
                    (
                        "client_id",
                        render_setting(client_id, ctx, "refresh_token.client_id")?,
                    ),
                ];
                if let Some(secret) = client_secret {
                    form.push((
                        "client_secret",
                        render_setting(secret, ctx, "refresh_token.client_secret")?,
                    ));
                }
                form
            }
            Grant::JwtBearer {
                client_id,
                username,
                private_key,
                audience,
            } => {
                let audience = match audience {
                    Some(t) => render_setting(t, ctx, "jwt_bearer.audience")?,
                    None => default_audience(login_url),
                };
                let pem = render_setting(private_key, ctx, "jwt_bearer.private_key")?;
                let key = KeyPair::from_pem(&pem).map_err(|e| {
                    Outcome::fail(ErrorClass::Config, format!("jwt_bearer.private_key: {e}"))
                })?;
                let claims = serde_json::json!({
                    "iss": render_setting(client_id, ctx, "jwt_bearer.client_id")?,
                    "sub": render_setting(username, ctx, "jwt_bearer.username")?,
                    "aud": audience,
                    "exp": now + ASSERTION_LIFETIME.as_secs() as i64,
                });
                vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
                    ),
                    ("assertion", key.assertion(&claims)?),
                ]
            }
        })
    }
}

/// `aud` when not configured: Salesforce's login host for salesforce.com logins (production or
/// sandbox), the login URL itself otherwise (an Experience Cloud site, a proxy, a test double).
pub fn default_audience(login_url: &Url) -> String {
    let host = login_url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host == "test.salesforce.com" || host.ends_with(".sandbox.my.salesforce.com") {
        "https://test.salesforce.com".to_owned()
    } else if host.ends_with("salesforce.com") {
        "https://login.salesforce.com".to_owned()
    } else {
        login_url.as_str().trim_end_matches('/').to_owned()
    }
}

/// Checks a literal login URL.
pub fn check_login_url(template: &TextTemplate, errors: &mut Vec<String>) {
    check_base_url(template, "login_url", errors);
}

/// An access token and the instance it is valid for. Its `Debug` never shows the token.
pub struct Token {
    /// The bearer token (a secret).
    pub access_token: String,
    /// `instance_url` from the token response: the base of every REST call.
    pub instance_url: Url,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("instance_url", &self.instance_url.as_str())
            .finish()
    }
}

/// One connection's token, shared by every task; fetched by one task at a time.
#[derive(Debug, Default)]
pub struct TokenCache {
    /// The current token, read without locking.
    current: ArcSwapOption<Token>,
    /// Held while fetching (single flight); remembers a recent refusal.
    fetching: tokio::sync::Mutex<Option<(Instant, Outcome)>>,
}

impl TokenCache {
    /// The current token, or a new one from `fetch` (only one task fetches; the others wait and
    /// share its result).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<Token>, Outcome>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, Outcome>>,
    {
        if let Some(token) = self.current.load_full() {
            return Ok(token);
        }
        let mut refused = self.fetching.lock().await;
        if let Some(token) = self.current.load_full() {
            return Ok(token);
        }
        if let Some((at, outcome)) = refused.as_ref()
            && at.elapsed() < REFUSAL_MEMORY
        {
            return Err(outcome.clone());
        }
        match fetch().await {
            Ok(token) => {
                let token = Arc::new(token);
                self.current.store(Some(token.clone()));
                *refused = None;
                Ok(token)
            }
            Err(outcome) => {
                if matches!(outcome, Outcome::Fail(_)) {
                    *refused = Some((Instant::now(), outcome.clone()));
                }
                Err(outcome)
            }
        }
    }

    /// Forgets `used` if it is still the current token (a newer one is kept).
    pub fn invalidate(&self, used: &Arc<Token>) {
        let current = self.current.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, used)) {
            self.current.compare_and_swap(&*current, None);
        }
    }

    /// Whether a token is cached (tests).
    pub fn is_cached(&self) -> bool {
        self.current.load().is_some()
    }
}

/// The token endpoint of a login URL: `{login_url}/services/oauth2/token`.
pub fn token_url(login_url: &Url) -> Result<Url, Outcome> {
    let mut url = login_url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| {
            Outcome::fail(
                ErrorClass::Config,
                "login_url cannot have a path appended".to_owned(),
            )
        })?
        .pop_if_empty()
        .extend(["services", "oauth2", "token"]);
    Ok(url)
}

/// Parses a rendered login URL.
pub fn parse_login_url(text: &str) -> Result<Url, Outcome> {
    let url = Url::parse(text.trim()).map_err(|e| {
        Outcome::fail(
            ErrorClass::Config,
            format!("login_url does not render to a URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Outcome::fail(
            ErrorClass::Blocked,
            format!("login_url scheme {} is not allowed", url.scheme()),
        ));
    }
    Ok(url)
}

/// Builds the token request (form-encoded; the body holds secrets).
pub fn token_request(
    grant: &Grant,
    ctx: &Context<'_>,
    login_url: &Url,
    now: i64,
) -> Result<Request, Outcome> {
    let form = grant.form(ctx, login_url, now)?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    Ok(Request {
        method: Method::POST,
        url: token_url(login_url)?,
        headers,
        body: Some(body.into_bytes()),
        timeout: None,
        connector: ConnectorKind::Salesforce.name(),
        destination: None,
    })
}

/// Fetches a new token for `connection` through the shared client.
pub async fn fetch(
    http: &HttpClient,
    grant: &Grant,
    login_url: &TextTemplate,
    connection: &str,
    ctx: &Context<'_>,
) -> Result<Token, Outcome> {
    let login_url = parse_login_url(&render_setting(login_url, ctx, "login_url")?)?;
    let now = chrono::Utc::now().timestamp();
    let request = token_request(grant, ctx, &login_url, now)?;
    let output = match http
        .send_with(request, super::classify::classify_salesforce_token)
        .await
    {
        Outcome::Success { output, .. } => output,
        failure => {
            warn!(connection, "salesforce token request failed");
            return Err(failure);
        }
    };
    let token = parse_token_response(&output)?;
    info!(
        connection,
        instance = token.instance_url.host_str().unwrap_or(""),
        "salesforce access token fetched"
    );
    Ok(token)
}

/// Reads `access_token` and `instance_url` from a token response.
pub fn parse_token_response(output: &Value) -> Result<Token, Outcome> {
    let text = |key: &str| {
        output
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let access_token = text("access_token").ok_or_else(|| {
        Outcome::fail(
            ErrorClass::Permanent,
            "the Salesforce token response has no access_token",
        )
    })?;
    let instance = text("instance_url").ok_or_else(|| {
        Outcome::fail(
            ErrorClass::Permanent,
            "the Salesforce token response has no instance_url",
        )
    })?;
    let instance_url = Url::parse(instance)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            Outcome::fail(
                ErrorClass::Permanent,
                format!("the Salesforce token response's instance_url {instance:?} is not an http(s) URL"),
            )
        })?;
    Ok(Token {
        access_token: access_token.to_owned(),
        instance_url,
    })
}

/// An RSA private key for RS256 signatures.
pub struct KeyPair(ring::signature::RsaKeyPair);

/// Why a private key could not be used (never quotes the key).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No PEM block.
    #[error(
        "not a PEM private key (expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)"
    )]
    NotPem,
    /// A password-protected key.
    #[error("an encrypted private key cannot be used; store it unencrypted in a secret")]
    Encrypted,
    /// The base64 between the PEM lines is broken.
    #[error("the PEM block is not valid base64")]
    Base64(#[source] base64::DecodeError),
    /// ring refused the key (not RSA, too small, malformed).
    #[error("the key was rejected: {0}")]
    Rejected(ring::error::KeyRejected),
}

impl KeyPair {
    /// Reads a PEM key: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`). Escaped newlines
    /// (`\n` as two characters, as environment variables often carry them) are accepted.
    pub fn from_pem(pem: &str) -> Result<KeyPair, KeyError> {
        let pem = pem.replace("\\n", "\n");
        let (label, der) = pem_block(&pem)?;
        let key = match label {
            "PRIVATE KEY" => ring::signature::RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => ring::signature::RsaKeyPair::from_der(&der),
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
            _ => return Err(KeyError::NotPem),
        };
        key.map(KeyPair).map_err(KeyError::Rejected)
    }

    /// `base64url(header).base64url(claims).base64url(RS256 signature)`.
    pub fn assertion(&self, claims: &Value) -> Result<String, Outcome> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"RS256"}"#);
        let payload = b64.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let rng = ring::rand::SystemRandom::new();
        let mut signature = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| {
                Outcome::fail(
                    ErrorClass::Config,
                    "jwt_bearer: signing the assertion failed",
                )
            })?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }
}

/// The label and DER bytes of the first PEM block.
fn pem_block(pem: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let start = pem.find("-----BEGIN ").ok_or(KeyError::NotPem)?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or(KeyError::NotPem)?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end = body
        .find(&format!("-----END {label}-----"))
        .ok_or(KeyError::NotPem)?;
    let base64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if base64.contains(':') {
        // `Proc-Type: 4,ENCRYPTED` headers of legacy encrypted PKCS#1 keys.
        return Err(KeyError::Encrypted);
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(KeyError::Base64)?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit RSA key made for these tests only (`openssl genrsa 2048`).
    pub const TEST_KEY_PKCS1: &str =
        include_str!("../../../tests/fixtures/salesforce-jwt-test-key.pem");

    #[test]
    fn audiences() {
        let cases = [
            (
                "https://acme.my.salesforce.com",
                "https://login.salesforce.com",
            ),
            (
                "https://login.salesforce.com",
                "https://login.salesforce.com",
            ),
            ("https://test.salesforce.com", "https://test.salesforce.com"),
            (
                "https://acme--uat.sandbox.my.salesforce.com",
                "https://test.salesforce.com",
            ),
            ("http://127.0.0.1:4010/", "http://127.0.0.1:4010"),
        ];
        for (login, want) in cases {
            assert_eq!(
                default_audience(&Url::parse(login).unwrap()),
                want,
                "{login}"
            );
        }
    }

    #[test]
    fn token_url_appends_the_oauth_path() {
        for (login, want) in [
            (
                "https://acme.my.salesforce.com",
                "https://acme.my.salesforce.com/services/oauth2/token",
            ),
            (
                "https://proxy.example/sf/",
                "https://proxy.example/sf/services/oauth2/token",
            ),
        ] {
            assert_eq!(
                token_url(&Url::parse(login).unwrap()).unwrap().as_str(),
                want
            );
        }
    }

    #[test]
    fn jwt_assertion_is_rs256_and_verifies() {
        let key = KeyPair::from_pem(TEST_KEY_PKCS1).expect("the test key reads");
        let claims = serde_json::json!({ "iss": "3MVG9", "sub": "api@acme.com", "aud": "https://login.salesforce.com", "exp": 1_900_000_000 });
        let jwt = key.assertion(&claims).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(b64.decode(parts[0]).unwrap(), br#"{"alg":"RS256"}"#);
        let decoded: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(decoded, claims);
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.0.public().as_ref().to_vec(),
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64.decode(parts[2]).unwrap(),
            )
            .expect("the signature verifies with the public key");
    }

    #[test]
    fn keys_in_other_forms() {
        // Escaped newlines, as an environment variable carries them.
        let escaped = TEST_KEY_PKCS1.replace('\n', "\\n");
        assert!(KeyPair::from_pem(&escaped).is_ok());
        assert!(matches!(
            KeyPair::from_pem("not a key"),
            Err(KeyError::NotPem)
        ));
        assert!(matches!(
            KeyPair::from_pem(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----"
            ),
            Err(KeyError::Encrypted)
        ));
        assert!(matches!(
            KeyPair::from_pem(
                "-----BEGIN RSA PRIVATE KEY-----\n!!!\n-----END RSA PRIVATE KEY-----"
            ),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            KeyPair::from_pem(
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----"
            ),
            Err(KeyError::Rejected(_))
        ));
        // The error text never quotes the key.
        let err = KeyPair::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn token_responses() {
        let ok = parse_token_response(&serde_json::json!({
            "access_token": "00Dxx!AQ0", "instance_url": "https://acme.my.salesforce.com",
            "id": "https://login.salesforce.com/id/00D/005", "token_type": "Bearer",
            "issued_at": "1700000000000", "signature": "sig", "scope": "api"
        }))
        .unwrap();
        assert_eq!(ok.instance_url.as_str(), "https://acme.my.salesforce.com/");
        assert!(!format!("{ok:?}").contains("00Dxx"));
        for bad in [
            serde_json::json!({ "instance_url": "https://acme.my.salesforce.com" }),
            serde_json::json!({ "access_token": "x" }),
            serde_json::json!({ "access_token": "x", "instance_url": "ftp://acme" }),
        ] {
            assert!(parse_token_response(&bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_for_many_tasks_and_invalidate_only_the_used_token() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetcher = |fetches: Arc<AtomicUsize>| async move {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Token {
                access_token: format!("tok-{n}"),
                instance_url: Url::parse("https://acme.my.salesforce.com").unwrap(),
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache.get(|| fetcher(fetches)).await.unwrap()
            }));
        }
        let mut tokens = Vec::new();
        for task in tasks {
            tokens.push(task.await.unwrap());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(tokens.iter().all(|t| t.access_token == "tok-0"));

        let old = tokens[0].clone();
        cache.invalidate(&old);
        let new = cache.get(|| fetcher(fetches.clone())).await.unwrap();
        assert_eq!(new.access_token, "tok-1");
        // A second task refused with the old token does not throw away the new one.
        cache.invalidate(&old);
        assert!(cache.is_cached());
        let same = cache.get(|| fetcher(fetches.clone())).await.unwrap();
        assert!(Arc::ptr_eq(&new, &same));
    }

    #[tokio::test]
    async fn refusals_are_remembered_briefly() {
        let cache = TokenCache::default();
        let refused = || async { Err(Outcome::fail(ErrorClass::Permanent, "invalid_client")) };
        assert!(cache.get(refused).await.is_err());
        let second = cache
            .get(|| async { panic!("the refusal is remembered; no second request") })
            .await;
        assert!(matches!(second, Err(Outcome::Fail(f)) if f.reason == "invalid_client"));
    }
}
