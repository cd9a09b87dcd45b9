//! Fake Salesforce, Mailchimp and Braze servers that reproduce the documented shapes and quirks
//! of the real APIs (`shared/reference/connectors.md`), built on [`FakeServer`]:
//!
//! - [`FakeSalesforce`]: the OAuth token endpoint (client credentials, refresh token, JWT bearer
//!   with a real RS256 check) and the REST API over an in-memory store — create 201, update 204
//!   with an empty body, upsert 201/200 (204 on API v45 and older, 300 on several matches), SOQL
//!   queries with real string-literal parsing (an unescaped quote is `MALFORMED_QUERY`), error
//!   arrays, `DUPLICATES_DETECTED` with the misspelled `duplicateResut` key, and
//!   `401 INVALID_SESSION_ID` for unknown or expired tokens.
//! - [`FakeMailchimp`]: Basic auth with the key, member upsert by subscriber hash, tags (204), and
//!   `application/problem+json` errors without `type`.
//! - [`FakeBraze`]: `/users/track` with Bearer auth, 201, partial-success `errors`, rate-limit
//!   headers.
//!
//! Each fake can be told to answer its next calls with scripted replies (errors, throttling).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use super::{FakeServer, Recorded, Reply};

/// The test RSA key (PKCS#1) the Salesforce JWT tests sign with.
pub const SF_TEST_KEY: &str = include_str!("../fixtures/salesforce-jwt-test-key.pem");
/// The same key as PKCS#8.
pub const SF_TEST_KEY_PKCS8: &str = include_str!("../fixtures/salesforce-jwt-test-key.pkcs8.pem");

/// A problem+json reply as Mailchimp sends them nowadays: no `type`.
pub fn mailchimp_problem(status: u16, title: &str, detail: &str) -> Reply {
    Reply {
        headers: vec![("content-type".into(), "application/problem+json".into())],
        body: json!({
            "title": title,
            "status": status,
            "detail": detail,
            "instance": "2a0a4d3b-61c4-4c2b-9a7e-2d4c8f1b0e6d",
        })
        .to_string()
        .into_bytes(),
        ..Reply::status(status)
    }
}

/// A Salesforce error array with one error.
pub fn salesforce_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!([{ "message": message, "errorCode": code, "fields": [] }]),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Salesforce

/// The credentials the fake Salesforce accepts.
#[derive(Clone, Debug)]
pub struct SalesforceCredentials {
    /// Consumer key.
    pub client_id: String,
    /// Consumer secret.
    pub client_secret: String,
    /// A valid refresh token.
    pub refresh_token: String,
    /// The JWT `sub`.
    pub username: String,
}

impl SalesforceCredentials {
    /// Random secrets, so a leak cannot be a coincidence.
    pub fn random() -> SalesforceCredentials {
        SalesforceCredentials {
            client_id: "3MVG9fakeConsumerKey".into(),
            client_secret: format!("sf-secret-{:016x}", rand::random::<u64>()),
            refresh_token: format!("5Aep861-refresh-{:016x}", rand::random::<u64>()),
            username: "integration@acme.example".into(),
        }
    }
}

/// One stored record.
#[derive(Clone, Debug)]
pub struct SfRecord {
    /// sObject type.
    pub kind: String,
    /// Record id.
    pub id: String,
    /// Field values.
    pub fields: Map<String, Value>,
}

/// The fake org.
pub struct SalesforceState {
    /// The server's own URL (`instance_url`, JWT audience).
    url: OnceLock<String>,
    /// What the token endpoint accepts.
    pub credentials: SalesforceCredentials,
    /// Public key (PKCS#1 DER) that JWT assertions must verify with.
    public_key: Vec<u8>,
    /// Tokens that are currently valid.
    valid_tokens: Mutex<Vec<String>>,
    /// Tokens issued so far.
    issued: AtomicUsize,
    /// Claims of every JWT accepted.
    pub jwt_claims: Mutex<Vec<Value>>,
    /// The org's records.
    records: Mutex<Vec<SfRecord>>,
    /// Record ids handed out.
    next_id: AtomicUsize,
    /// Replies for the next REST calls (after the session check).
    scripted: Mutex<VecDeque<Reply>>,
    /// Every REST reply is held this long.
    delay: Mutex<Duration>,
}

/// A fake Salesforce org (token endpoint + REST API).
pub struct FakeSalesforce {
    /// The HTTP server.
    pub server: FakeServer,
    /// Its state.
    pub state: Arc<SalesforceState>,
}

impl FakeSalesforce {
    /// Starts an empty org accepting `credentials`.
    pub async fn start(credentials: SalesforceCredentials) -> FakeSalesforce {
        let public_key = public_key_der(SF_TEST_KEY);
        let state = Arc::new(SalesforceState {
            url: OnceLock::new(),
            credentials,
            public_key,
            valid_tokens: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            jwt_claims: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(1),
            scripted: Mutex::new(VecDeque::new()),
            delay: Mutex::new(Duration::ZERO),
        });
        let handler = state.clone();
        let server = FakeServer::start(move |r| handler.handle(r)).await;
        let _ = state.url.set(server.url());
        FakeSalesforce { server, state }
    }

    /// `http://127.0.0.1:PORT` (the login URL and the instance URL).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Makes every issued token invalid (the session timed out).
    pub fn expire_sessions(&self) {
        lock(&self.state.valid_tokens).clear();
    }

    /// The next REST calls get these replies, in order (after the session check).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.scripted).extend(replies);
    }

    /// Holds every REST reply this long.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Adds a record; returns its id.
    pub fn insert(&self, kind: &str, fields: Value) -> String {
        let fields = fields.as_object().cloned().unwrap_or_default();
        self.state.insert(kind, fields)
    }

    /// The stored records of a type.
    pub fn records(&self, kind: &str) -> Vec<SfRecord> {
        lock(&self.state.records)
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    /// REST requests (everything but the token endpoint).
    pub fn rest_requests(&self) -> Vec<Recorded> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/services/data/"))
            .collect()
    }

    /// Token requests.
    pub fn token_requests(&self) -> Vec<Recorded> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.path == "/services/oauth2/token")
            .collect()
    }
}

/// The DER `RSAPublicKey` of a PEM private key (what a connected app's certificate holds).
pub fn public_key_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("the test key is base64");
    let pair = ring::signature::RsaKeyPair::from_der(&der)
        .or_else(|_| ring::signature::RsaKeyPair::from_pkcs8(&der))
        .expect("the test key is an RSA key");
    pair.public().as_ref().to_vec()
}

/// Parses a form-encoded body.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

impl SalesforceState {
    fn url(&self) -> &str {
        self.url
            .get()
            .map(String::as_str)
            .unwrap_or("http://127.0.0.1")
    }

    fn insert(&self, kind: &str, mut fields: Map<String, Value>) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let prefix = match kind {
            "Lead" => "00Q",
            "Contact" => "003",
            "Account" => "001",
            _ => "a00",
        };
        let id = format!("{prefix}5e00000{n:08}");
        fields.insert("Id".into(), Value::String(id.clone()));
        lock(&self.records).push(SfRecord {
            kind: kind.into(),
            id: id.clone(),
            fields,
        });
        id
    }

    fn handle(&self, r: &Recorded) -> Reply {
        if r.path == "/services/oauth2/token" && r.method == "POST" {
            return self.token(r);
        }
        let Some(rest) = r.path.strip_prefix("/services/data/") else {
            return Reply::status(404);
        };
        let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(version) = version
            .strip_prefix('v')
            .and_then(|v| v.strip_suffix(".0"))
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return salesforce_error(404, "NOT_FOUND", "The requested resource does not exist");
        };
        let bearer = r
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "));
        let valid = bearer.is_some_and(|t| lock(&self.valid_tokens).iter().any(|v| v == t));
        if !valid {
            return salesforce_error(401, "INVALID_SESSION_ID", "Session expired or invalid");
        }
        let delay = *lock(&self.delay);
        let reply = match lock(&self.scripted).pop_front() {
            Some(reply) => reply,
            None => self.rest(r, version, rest),
        };
        let used = self.issued.load(Ordering::SeqCst) + r.path.len();
        let mut reply = reply.after(delay);
        reply.headers.push((
            "sforce-limit-info".into(),
            format!("api-usage={used}/15000"),
        ));
        reply
    }

    fn token(&self, r: &Recorded) -> Reply {
        let form = form(&r.body);
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let c = &self.credentials;
        let refused = |error: &str, description: &str| {
            Reply::json(
                400,
                &json!({ "error": error, "error_description": description }),
            )
        };
        match get("grant_type") {
            "client_credentials" => {
                if get("client_id") != c.client_id || get("client_secret") != c.client_secret {
                    return refused("invalid_client", "invalid client credentials");
                }
            }
            "refresh_token" => {
                if get("client_id") != c.client_id {
                    return refused("invalid_client_id", "client identifier invalid");
                }
                if get("refresh_token") != c.refresh_token {
                    return refused("invalid_grant", "expired access/refresh token");
                }
            }
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => match self.check_jwt(get("assertion"))
            {
                Ok(claims) => lock(&self.jwt_claims).push(claims),
                Err(why) => return refused("invalid_grant", why),
            },
            _ => return refused("unsupported_grant_type", "grant type not supported"),
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("00D5e0000000fAk!AQ0AQtok{n}.{:08x}", rand::random::<u32>());
        lock(&self.valid_tokens).push(token.clone());
        let url = self.url();
        Reply::json(
            200,
            &json!({
                "access_token": token,
                "instance_url": url,
                "id": format!("{url}/id/00D5e0000000fAkEAE/0055e000000AbCdAAK"),
                "token_type": "Bearer",
                "issued_at": chrono::Utc::now().timestamp_millis().to_string(),
                "signature": "Zm9vYmFy",
                "scope": "api",
            }),
        )
    }

    fn check_jwt(&self, assertion: &str) -> Result<Value, &'static str> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else {
            return Err("invalid assertion");
        };
        let header: Value = b64
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or("invalid assertion")?;
        if header["alg"] != "RS256" {
            return Err("invalid assertion");
        }
        let signature = b64.decode(signature).map_err(|_| "invalid assertion")?;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &self.public_key,
        )
        .verify(
            format!("{header_b64}.{payload}", header_b64 = parts[0]).as_bytes(),
            &signature,
        )
        .map_err(|_| "invalid assertion")?;
        let claims: Value = b64
            .decode(payload)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or("invalid assertion")?;
        let c = &self.credentials;
        if claims["iss"] != c.client_id.as_str() {
            return Err("invalid client identifier");
        }
        if claims["sub"] != c.username.as_str() {
            return Err("user hasn't approved this consumer");
        }
        if claims["aud"] != self.url() {
            return Err("audience is invalid");
        }
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let now = chrono::Utc::now().timestamp();
        if exp <= now || exp > now + 600 {
            return Err("expired authorization code");
        }
        Ok(claims)
    }

    fn rest(&self, r: &Recorded, version: u32, rest: &str) -> Reply {
        let segments: Vec<String> = rest
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let not_found =
            || salesforce_error(404, "NOT_FOUND", "The requested resource does not exist");
        match (r.method.as_str(), segments.as_slice()) {
            ("GET", ["query"]) => {
                let q = form(r.query.as_deref().unwrap_or("").as_bytes())
                    .remove("q")
                    .unwrap_or_default();
                self.query(&q)
            }
            ("POST", ["sobjects", kind] | ["sobjects", kind, ""]) => self.create(kind, r),
            ("GET", ["sobjects", kind, id]) => {
                let fields = form(r.query.as_deref().unwrap_or("").as_bytes())
                    .remove("fields")
                    .unwrap_or_default();
                let records = lock(&self.records);
                match records
                    .iter()
                    .find(|rec| rec.kind == *kind && rec.id == *id)
                {
                    Some(record) => {
                        let mut out = Map::new();
                        out.insert("attributes".into(), self.attributes(record, version));
                        for (k, v) in &record.fields {
                            if fields.is_empty() || k == "Id" || fields.split(',').any(|f| f == k) {
                                out.insert(k.clone(), v.clone());
                            }
                        }
                        Reply::json(200, &Value::Object(out))
                    }
                    None => not_found(),
                }
            }
            ("PATCH", ["sobjects", kind, id]) => {
                let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&r.body) else {
                    return salesforce_error(
                        400,
                        "JSON_PARSER_ERROR",
                        "The request body is not JSON",
                    );
                };
                let mut records = lock(&self.records);
                match records
                    .iter_mut()
                    .find(|rec| rec.kind == *kind && rec.id == *id)
                {
                    Some(record) => {
                        record.fields.extend(fields);
                        // Update: 204 and an empty body.
                        Reply::status(204)
                    }
                    None => not_found(),
                }
            }
            ("PATCH", ["sobjects", kind, field, value]) => {
                self.upsert(kind, field, value, version, r)
            }
            _ => not_found(),
        }
    }

    fn attributes(&self, record: &SfRecord, version: u32) -> Value {
        json!({
            "type": record.kind,
            "url": format!("/services/data/v{version}.0/sobjects/{}/{}", record.kind, record.id),
        })
    }

    fn create(&self, kind: &str, r: &Recorded) -> Reply {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&r.body) else {
            return salesforce_error(400, "JSON_PARSER_ERROR", "The request body is not JSON");
        };
        if fields.contains_key("Id") {
            return Reply::json(
                400,
                &json!([{ "message": "Unable to create/update fields: Id. Please check the security settings of this field and verify that it is read/write for your profile or permission set.", "errorCode": "INVALID_FIELD_FOR_INSERT_UPDATE", "fields": ["Id"] }]),
            );
        }
        if kind == "Lead" {
            let missing: Vec<&str> = ["LastName", "Company"]
                .into_iter()
                .filter(|f| {
                    fields
                        .get(*f)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                })
                .collect();
            if !missing.is_empty() {
                return Reply::json(
                    400,
                    &json!([{
                        "message": format!("Required fields are missing: [{}]", missing.join(", ")),
                        "errorCode": "REQUIRED_FIELD_MISSING",
                        "fields": missing,
                    }]),
                );
            }
            let duplicate = fields.get("Email").and_then(|email| {
                lock(&self.records)
                    .iter()
                    .find(|rec| rec.kind == "Lead" && rec.fields.get("Email") == Some(email))
                    .map(|rec| rec.id.clone())
            });
            if let Some(existing) = duplicate {
                // The misspelled key is what Salesforce sends in the wild.
                return Reply::json(
                    400,
                    &json!([{
                        "duplicateResut": {
                            "allowSave": false,
                            "duplicateRule": "Standard_Lead_Duplicate_Rule",
                            "duplicateRuleEntityType": "Lead",
                            "errorMessage": "Use one of these records?",
                            "matchResults": [{
                                "entityType": "Lead",
                                "errorMessage": null,
                                "matchEngine": "FuzzyMatchEngine",
                                "matchRecords": [{
                                    "additionalInformation": [],
                                    "fieldDiffs": [],
                                    "matchConfidence": 100.0,
                                    "record": {
                                        "attributes": { "type": "Lead", "url": format!("/services/data/v61.0/sobjects/Lead/{existing}") },
                                        "Id": existing,
                                    },
                                }],
                                "rule": "Standard_Lead_Match_Rule_v1_0",
                                "size": 1,
                                "success": true,
                            }],
                        },
                        "errorCode": "DUPLICATES_DETECTED",
                        "message": "Use one of these records?",
                    }]),
                );
            }
        }
        let id = self.insert(kind, fields);
        Reply::json(201, &json!({ "id": id, "success": true, "errors": [] }))
    }

    fn upsert(&self, kind: &str, field: &str, value: &str, version: u32, r: &Recorded) -> Reply {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&r.body) else {
            return salesforce_error(400, "JSON_PARSER_ERROR", "The request body is not JSON");
        };
        let update_only = r
            .query
            .as_deref()
            .is_some_and(|q| q.contains("updateOnly=true"));
        let matching: Vec<String> = lock(&self.records)
            .iter()
            .filter(|rec| {
                rec.kind == kind && rec.fields.get(field).and_then(Value::as_str) == Some(value)
            })
            .map(|rec| rec.id.clone())
            .collect();
        match matching.as_slice() {
            [] if update_only => salesforce_error(
                404,
                "NOT_FOUND",
                "Provided external ID field does not exist or is not accessible",
            ),
            [] => {
                let mut fields = fields;
                fields.insert(field.into(), Value::String(value.into()));
                let id = self.insert(kind, fields);
                Reply::json(
                    201,
                    &json!({ "id": id, "success": true, "errors": [], "created": true }),
                )
            }
            [id] => {
                let mut records = lock(&self.records);
                if let Some(record) = records.iter_mut().find(|rec| &rec.id == id) {
                    record.fields.extend(fields);
                }
                if version >= 46 {
                    Reply::json(
                        200,
                        &json!({ "id": id, "success": true, "errors": [], "created": false }),
                    )
                } else {
                    Reply::status(204)
                }
            }
            several => Reply::json(
                300,
                &Value::Array(
                    several
                        .iter()
                        .map(|id| {
                            Value::String(format!(
                                "/services/data/v{version}.0/sobjects/{kind}/{id}"
                            ))
                        })
                        .collect(),
                ),
            ),
        }
    }

    /// `SELECT a, b FROM T [WHERE F = 'literal'] [LIMIT n]`, with SOQL string escapes.
    fn query(&self, soql: &str) -> Reply {
        let malformed =
            |why: &str| salesforce_error(400, "MALFORMED_QUERY", &format!("{why}: {soql}"));
        let Some(rest) = soql.trim().strip_prefix("SELECT ") else {
            return malformed("expecting SELECT");
        };
        let Some((fields, rest)) = rest.split_once(" FROM ") else {
            return malformed("expecting FROM");
        };
        let fields: Vec<&str> = fields.split(',').map(str::trim).collect();
        let (kind, condition) = match rest.split_once(" WHERE ") {
            Some((kind, condition)) => (kind.trim(), Some(condition.trim())),
            None => (rest.trim(), None),
        };
        let filter = match condition {
            None => None,
            Some(condition) => {
                let Some((field, literal)) = condition.split_once('=') else {
                    return malformed("unexpected token");
                };
                let Some((value, tail)) = soql_literal(literal.trim()) else {
                    return malformed("unterminated string literal");
                };
                let tail = tail.trim();
                if !(tail.is_empty() || tail.starts_with("LIMIT ")) {
                    return malformed(&format!("unexpected token: '{tail}'"));
                }
                Some((field.trim().to_owned(), value))
            }
        };
        let records: Vec<Value> = lock(&self.records)
            .iter()
            .filter(|rec| rec.kind == kind)
            .filter(|rec| match &filter {
                Some((field, value)) => {
                    rec.fields.get(field).and_then(Value::as_str) == Some(value.as_str())
                }
                None => true,
            })
            .map(|rec| {
                let mut out = Map::new();
                out.insert("attributes".into(), self.attributes(rec, 61));
                for field in &fields {
                    out.insert(
                        (*field).to_owned(),
                        rec.fields.get(*field).cloned().unwrap_or(Value::Null),
                    );
                }
                Value::Object(out)
            })
            .collect();
        Reply::json(
            200,
            &json!({ "totalSize": records.len(), "done": true, "records": records }),
        )
    }
}

/// Reads a SOQL string literal at the start of `text`: the value and what follows it.
pub fn soql_literal(text: &str) -> Option<(String, &str)> {
    let mut chars = text.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                let (_, escaped) = chars.next()?;
                value.push(match escaped {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    other => other,
                });
            }
            '\'' => return Some((value, &text[i + 1..])),
            other => value.push(other),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Mailchimp

/// The fake account.
pub struct MailchimpState {
    /// The API key the account accepts (Basic password).
    pub api_key: String,
    /// Members by (list, subscriber hash).
    members: Mutex<HashMap<(String, String), Value>>,
    /// Replies for particular emails (compliance state, forgotten, …).
    by_email: Mutex<HashMap<String, Reply>>,
    /// Replies for the next calls.
    scripted: Mutex<VecDeque<Reply>>,
    /// Every reply is held this long.
    delay: Mutex<Duration>,
}

/// A fake Mailchimp Marketing API under `/3.0`.
pub struct FakeMailchimp {
    /// The HTTP server.
    pub server: FakeServer,
    /// Its state.
    pub state: Arc<MailchimpState>,
}

impl FakeMailchimp {
    /// Starts an account that accepts `api_key`.
    pub async fn start(api_key: &str) -> FakeMailchimp {
        let state = Arc::new(MailchimpState {
            api_key: api_key.into(),
            members: Mutex::new(HashMap::new()),
            by_email: Mutex::new(HashMap::new()),
            scripted: Mutex::new(VecDeque::new()),
            delay: Mutex::new(Duration::ZERO),
        });
        let handler = state.clone();
        let server = FakeServer::start(move |r| handler.handle(r)).await;
        FakeMailchimp { server, state }
    }

    /// The `base_url` of a connection: `http://127.0.0.1:PORT/3.0`.
    pub fn base_url(&self) -> String {
        format!("{}/3.0", self.server.url())
    }

    /// Answers calls about `email` with `reply`.
    pub fn answer_for(&self, email: &str, reply: Reply) {
        lock(&self.state.by_email).insert(email.to_lowercase(), reply);
    }

    /// The next calls get these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.scripted).extend(replies);
    }

    /// Holds every reply this long.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// A member of a list, by subscriber hash.
    pub fn member(&self, list: &str, hash: &str) -> Option<Value> {
        lock(&self.state.members)
            .get(&(list.to_owned(), hash.to_owned()))
            .cloned()
    }
}

impl MailchimpState {
    fn handle(&self, r: &Recorded) -> Reply {
        let delay = *lock(&self.delay);
        self.answer(r).after(delay)
    }

    fn answer(&self, r: &Recorded) -> Reply {
        let password = r
            .header("authorization")
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned()));
        if password.as_deref() != Some(self.api_key.as_str()) {
            return mailchimp_problem(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            );
        }
        if let Some(reply) = lock(&self.scripted).pop_front() {
            return reply;
        }
        let segments: Vec<&str> = r.path.split('/').skip(1).collect();
        match (r.method.as_str(), segments.as_slice()) {
            ("PUT", ["3.0", "lists", list, "members", hash]) => self.upsert(list, hash, r),
            ("POST", ["3.0", "lists", list, "members", hash, "tags"]) => self.tag(list, hash, r),
            _ => mailchimp_problem(
                404,
                "Resource Not Found",
                "The requested resource could not be found.",
            ),
        }
    }

    fn upsert(&self, list: &str, hash: &str, r: &Recorded) -> Reply {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.body) else {
            return mailchimp_problem(
                400,
                "JSON Parse Error",
                "We encountered an unspecified JSON parsing error.",
            );
        };
        let email = body
            .get("email_address")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(reply) = lock(&self.by_email).get(&email.to_lowercase()) {
            return reply.clone();
        }
        if hex::encode(Md5::digest(email.to_lowercase().as_bytes())) != hash {
            return mailchimp_problem(
                400,
                "Invalid Resource",
                "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
            );
        }
        let key = (list.to_owned(), hash.to_owned());
        let mut members = lock(&self.members);
        let existing = members.get(&key).cloned();
        let status = match (&existing, body.get("status"), body.get("status_if_new")) {
            (_, Some(status), _) => status.clone(),
            (Some(member), None, _) => member["status"].clone(),
            (None, None, Some(status)) => status.clone(),
            (None, None, None) => {
                return mailchimp_problem(
                    400,
                    "Invalid Resource",
                    "The resource submitted could not be validated: status_if_new is required for a new member.",
                );
            }
        };
        let mut merge = existing
            .as_ref()
            .and_then(|m| m["merge_fields"].as_object().cloned())
            .unwrap_or_default();
        if let Some(Value::Object(fields)) = body.get("merge_fields") {
            merge.extend(fields.clone());
        }
        let member = json!({
            "id": hash,
            "email_address": email,
            "unique_email_id": &hash[..10],
            "status": status,
            "merge_fields": merge,
            "tags": existing.as_ref().map(|m| m["tags"].clone()).unwrap_or_else(|| json!([])),
            "list_id": list,
        });
        members.insert(key, member.clone());
        Reply::json(200, &member)
    }

    fn tag(&self, list: &str, hash: &str, r: &Recorded) -> Reply {
        let mut members = lock(&self.members);
        let Some(member) = members.get_mut(&(list.to_owned(), hash.to_owned())) else {
            return mailchimp_problem(
                404,
                "Resource Not Found",
                "The requested resource could not be found.",
            );
        };
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let mut tags: Vec<Value> = member["tags"].as_array().cloned().unwrap_or_default();
        for tag in body["tags"].as_array().into_iter().flatten() {
            let name = tag["name"].clone();
            tags.retain(|t| t["name"] != name);
            if tag["status"] == "active" {
                tags.push(json!({ "id": tags.len() + 1, "name": name }));
            }
        }
        member["tags"] = Value::Array(tags);
        // Tags: 204, empty body.
        Reply::status(204)
    }
}

// ---------------------------------------------------------------------------------------------
// Braze

/// The fake workspace.
pub struct BrazeState {
    /// The REST API key it accepts (Bearer).
    pub api_key: String,
    /// Replies for the next calls.
    scripted: Mutex<VecDeque<Reply>>,
}

/// A fake Braze REST endpoint (`/users/track`).
pub struct FakeBraze {
    /// The HTTP server.
    pub server: FakeServer,
    /// Its state.
    pub state: Arc<BrazeState>,
}

impl FakeBraze {
    /// Starts an endpoint that accepts `api_key`.
    pub async fn start(api_key: &str) -> FakeBraze {
        let state = Arc::new(BrazeState {
            api_key: api_key.into(),
            scripted: Mutex::new(VecDeque::new()),
        });
        let handler = state.clone();
        let server = FakeServer::start(move |r| handler.handle(r)).await;
        FakeBraze { server, state }
    }

    /// The connection's `rest_endpoint`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The next calls get these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.scripted).extend(replies);
    }
}

const IDENTIFIERS: [&str; 5] = ["external_id", "user_alias", "braze_id", "email", "phone"];

impl BrazeState {
    fn handle(&self, r: &Recorded) -> Reply {
        let reset = chrono::Utc::now().timestamp() + 3;
        let mut reply = self.answer(r);
        for (name, value) in [
            ("x-ratelimit-limit", "3000".to_owned()),
            ("x-ratelimit-remaining", "2999".to_owned()),
        ] {
            if !reply.headers.iter().any(|(n, _)| n == name) {
                reply.headers.push((name.into(), value));
            }
        }
        if !reply.headers.iter().any(|(n, _)| n == "x-ratelimit-reset") {
            reply
                .headers
                .push(("x-ratelimit-reset".into(), reset.to_string()));
        }
        reply
    }

    fn answer(&self, r: &Recorded) -> Reply {
        if r.header("authorization") != Some(format!("Bearer {}", self.api_key).as_str()) {
            return Reply::json(401, &json!({ "message": "Invalid API key" }));
        }
        if let Some(reply) = lock(&self.scripted).pop_front() {
            return reply;
        }
        if (r.method.as_str(), r.path.as_str()) != ("POST", "/users/track") {
            return Reply::json(404, &json!({ "message": "Not found" }));
        }
        if r.header("content-type") != Some("application/json") {
            return Reply::json(415, &json!({ "message": "Unsupported Media Type" }));
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.body) else {
            return Reply::json(400, &json!({ "message": "Invalid JSON", "errors": [] }));
        };
        let arrays = ["attributes", "events", "purchases"];
        let total: usize = arrays
            .iter()
            .map(|a| body.get(*a).and_then(Value::as_array).map_or(0, Vec::len))
            .sum();
        if total > 75 {
            return Reply::json(
                400,
                &json!({ "message": "Max Input Length Exceeded", "errors": [] }),
            );
        }
        let mut errors = Vec::new();
        let mut processed = [0usize; 3];
        for (k, array) in arrays.iter().enumerate() {
            for (index, object) in body
                .get(*array)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                // `email` and `phone` are also ordinary attributes: they identify the user only
                // when no external_id, user_alias or braze_id does.
                let ids = IDENTIFIERS[..3]
                    .iter()
                    .filter(|id| object.get(**id).is_some())
                    .count();
                let by_contact = IDENTIFIERS[3..].iter().any(|id| object.get(*id).is_some());
                let problem = if ids > 1 || (ids == 0 && !by_contact) {
                    Some("'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required")
                } else if *array != "attributes"
                    && object["time"]
                        .as_str()
                        .is_none_or(|t| chrono::DateTime::parse_from_rfc3339(t).is_err())
                {
                    Some("'time' must be a valid ISO 8601 timestamp")
                } else if *array == "events" && object["name"].as_str().is_none_or(str::is_empty) {
                    Some("'name' is required")
                } else {
                    None
                };
                match problem {
                    Some(kind) => {
                        errors.push(json!({ "type": kind, "input_array": array, "index": index }))
                    }
                    None => processed[k] += 1,
                }
            }
        }
        let mut out = json!({ "message": "success" });
        for (k, array) in arrays.iter().enumerate() {
            if body.contains_key(*array) {
                out[format!("{array}_processed")] = json!(processed[k]);
            }
        }
        if !errors.is_empty() {
            out["errors"] = Value::Array(errors);
        }
        Reply::json(201, &out)
    }
}
