//! The connected apps end to end: events in through the real broker, calls out to fake Salesforce,
//! Mailchimp and Braze servers that reproduce the documented shapes and quirks
//! (`tests/support/apps.rs`), outcomes checked on the wire, in the metrics and in the dead-letter
//! queue.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::apps::{
    FakeBraze, FakeMailchimp, FakeSalesforce, SF_TEST_KEY_PKCS8, SalesforceCredentials, form,
    mailchimp_problem, salesforce_error,
};
use support::{
    AfterGet, FakeServer, Got, Harness, Recorded, Reply, VENDOR_EXAMPLES_ON, attempts, event,
    run_switchyard, wait_until,
};

/// Waits for `n` records in the dead-letter queue and takes them.
async fn dead_letters(h: &Harness, n: usize) -> Vec<Got> {
    let queue = h.name("dead-letter");
    wait_until(&format!("{n} dead-lettered action(s)"), async || {
        h.broker.queue_len(&queue).await as usize >= n
    })
    .await;
    h.broker.take_all(&queue, AfterGet::Ack).await
}

/// The dead-letter record whose reason contains `needle`.
fn record_with<'a>(records: &'a [Got], needle: &str) -> &'a Got {
    records
        .iter()
        .find(|r| {
            r.header_str("x-switchyard-reason")
                .is_some_and(|reason| reason.contains(needle))
        })
        .unwrap_or_else(|| {
            let reasons: Vec<_> = records
                .iter()
                .map(|r| r.header_str("x-switchyard-reason"))
                .collect();
            panic!("no dead letter mentions {needle:?}; reasons: {reasons:#?}")
        })
}

/// A sink for the output of earlier steps (`steps.<id>`), posted by a dependent http action.
async fn sink() -> FakeServer {
    FakeServer::start(|_| Reply::json(200, &json!({ "ok": true }))).await
}

/// The query string parameter `name` of a recorded request.
fn query_param(r: &Recorded, name: &str) -> Option<String> {
    form(r.query.as_deref().unwrap_or("").as_bytes()).remove(name)
}

/// A Salesforce connection block pointing at the fake with client credentials.
fn sf_connection(id: &str, fake: &FakeSalesforce, extra: &str) -> String {
    format!(
        r#"
  - id: {id}
    workspace: ws_demo
    salesforce:
      login_url: "{url}"
      api_version: "61.0"
      client_credentials: {{ client_id: "{client_id}", client_secret: "{{{{ secrets.SF_CLIENT_SECRET }}}}" }}
{extra}"#,
        url = fake.url(),
        client_id = fake.state.credentials.client_id,
    )
}

// ---------------------------------------------------------------------------------------------
// Salesforce

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_find_then_update_or_create_runs_exactly_one_with_the_brief_mapping() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let out = sink().await;
    let workflows = format!(
        r#"
connections:
{connection}
workflows:
  - id: lead-sync
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured, if: "contact.email != blank" }}
    actions:
      - id: find_lead
        salesforce: {{ connection: sf-main, get: {{ query: "SELECT Id, Company FROM Lead WHERE Email = {{{{ contact.email | soql }}}}" }} }}
      - id: update_lead
        needs: find_lead
        if: "steps.find_lead.totalSize > 0"
        salesforce:
          connection: sf-main
          update:
            object: Lead
            id: "{{{{ steps.find_lead.records[0].Id }}}}"
            fields: {{ Company: form_fields.company, NumberOfEmployees: form_fields.employees }}
      - id: create_lead
        needs: find_lead
        if: "steps.find_lead.totalSize == 0"
        salesforce:
          connection: sf-main
          create:
            object: Lead
            fields:
              Email: contact.email
              FirstName: contact.first_name
              LastName: contact.last_name
              Company: form_fields.company
              LeadSource: card.name
              NumberOfEmployees: form_fields.employees
              Komo_Opt_In__c: contact.optin
              MobilePhone: contact.phone
      - id: report_update
        needs: update_lead
        http: {{ url: "{sink}/updated", body: '{{"lead": "{{{{ steps.update_lead.id }}}}", "success": {{{{ steps.update_lead.success }}}}, "found": {{{{ steps.find_lead.totalSize }}}}}}' }}
      - id: report_create
        needs: create_lead
        http: {{ url: "{sink}/created", body: '{{"lead": "{{{{ steps.create_lead.id }}}}", "success": {{{{ steps.create_lead.success }}}}}}' }}
"#,
        connection = sf_connection("sf-main", &fake, ""),
        sink = out.url(),
    );
    let secret = fake.state.credentials.client_secret.clone();
    let h = Harness::start("sf-lead", &workflows, "", &[("SF_CLIENT_SECRET", &secret)]).await;

    // 1. No Lead with this email yet: find → create; update (and its report) skipped.
    let mut first = event("evt_sf_lead_1", "Gameplay.DataCaptured");
    first["form_fields"]["employees"] = json!(250);
    h.publish(&first).await;
    h.wait_metric(&attempts("salesforce", "success"), 2.0).await;
    h.wait_metric(&attempts("http", "success"), 1.0).await;
    assert_eq!(h.metric(&attempts("salesforce", "skipped")).await, 1.0);
    assert_eq!(h.metric(&attempts("http", "skipped")).await, 1.0);

    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1, "one token for the connection");
    assert_eq!(tokens[0].method, "POST");
    assert_eq!(
        tokens[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let sent = form(&tokens[0].body);
    assert_eq!(
        sent.get("grant_type").map(String::as_str),
        Some("client_credentials")
    );
    assert_eq!(
        sent.get("client_id"),
        Some(&fake.state.credentials.client_id)
    );
    assert_eq!(sent.get("client_secret"), Some(&secret));

    let rest = fake.rest_requests();
    assert_eq!(rest.len(), 2, "{rest:#?}");
    let (find, create) = (&rest[0], &rest[1]);
    assert_eq!(find.method, "GET");
    assert_eq!(find.path, "/services/data/v61.0/query");
    assert_eq!(
        query_param(find, "q").as_deref(),
        Some("SELECT Id, Company FROM Lead WHERE Email = 'ana@example.com'")
    );
    assert_eq!(create.method, "POST");
    assert_eq!(create.path, "/services/data/v61.0/sobjects/Lead/");
    assert_eq!(create.header("content-type"), Some("application/json"));
    for r in &rest {
        let auth = r.header("authorization").expect("Authorization");
        assert!(auth.starts_with("Bearer 00D5e0000000fAk!"), "{auth}");
        assert_eq!(r.header_count("authorization"), 1);
    }
    // The product brief's mapping table, JSON types kept, a null field left out.
    assert_eq!(
        create.json(),
        json!({
            "Email": "ana@example.com",
            "FirstName": "Ana",
            "LastName": "Silva",
            "Company": "Acme",
            "LeadSource": "Spin to Win",
            "NumberOfEmployees": 250,
            "Komo_Opt_In__c": true,
        })
    );
    assert!(create.json()["NumberOfEmployees"].is_u64());
    let leads = fake.records("Lead");
    assert_eq!(leads.len(), 1);
    let lead_id = leads[0].id.clone();
    let reports = out.requests();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].path, "/created");
    assert_eq!(
        reports[0].json(),
        json!({ "lead": lead_id, "success": true })
    );

    // 2. The Lead exists now: find → update (204, empty body); create (and its report) skipped.
    let mut second = event("evt_sf_lead_2", "Gameplay.DataCaptured");
    second["form_fields"]["company"] = json!("Acme Corp");
    second["form_fields"]["employees"] = json!(300);
    h.publish(&second).await;
    h.wait_metric(&attempts("salesforce", "success"), 4.0).await;
    h.wait_metric(&attempts("http", "success"), 2.0).await;
    assert_eq!(h.metric(&attempts("salesforce", "skipped")).await, 2.0);
    assert_eq!(h.metric(&attempts("http", "skipped")).await, 2.0);

    let rest = fake.rest_requests();
    assert_eq!(rest.len(), 4, "{rest:#?}");
    let update = &rest[3];
    assert_eq!(update.method, "PATCH");
    assert_eq!(
        update.path,
        format!("/services/data/v61.0/sobjects/Lead/{lead_id}")
    );
    assert_eq!(
        update.json(),
        json!({ "Company": "Acme Corp", "NumberOfEmployees": 300 })
    );
    assert_eq!(fake.records("Lead").len(), 1, "updated, not duplicated");
    assert_eq!(
        fake.records("Lead")[0].fields["Company"],
        json!("Acme Corp")
    );
    // The 204's output, as steps.update_lead.
    let reports = out.requests();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[1].path, "/updated");
    assert_eq!(
        reports[1].json(),
        json!({ "lead": lead_id, "success": true, "found": 1 })
    );
    assert_eq!(fake.tokens_issued(), 1, "the token is reused");
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_shares_one_token_refreshes_once_on_401_and_keeps_it_across_reloads() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let lead = fake.insert(
        "Lead",
        json!({ "Email": "ana@example.com", "LastName": "Silva", "Company": "Acme" }),
    );
    let workflows = format!(
        r#"
connections:
{connection}
workflows:
  - id: read
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: get_lead
        salesforce: {{ connection: sf-main, get: {{ object: Lead, id: "{{{{ data.lead_id }}}}", fields: [Id, Email] }} }}
"#,
        connection = sf_connection("sf-main", &fake, ""),
    );
    let secret = fake.state.credentials.client_secret.clone();
    let h = Harness::start("sf-token", &workflows, "", &[("SF_CLIENT_SECRET", &secret)]).await;
    let with_lead = |id: &str| {
        let mut e = event(id, "Gameplay.DataCaptured");
        e["data"]["lead_id"] = json!(lead);
        e
    };

    // Ten actions at once: one token fetch, shared.
    for i in 0..10 {
        h.publish(&with_lead(&format!("evt_sf_tok_{i}"))).await;
    }
    h.wait_metric(&attempts("salesforce", "success"), 10.0)
        .await;
    assert_eq!(fake.tokens_issued(), 1, "one token per connection");
    let get = &fake.rest_requests()[0];
    assert_eq!(get.method, "GET");
    assert_eq!(
        get.path,
        format!("/services/data/v61.0/sobjects/Lead/{lead}")
    );
    assert_eq!(query_param(get, "fields").as_deref(), Some("Id,Email"));

    // The session times out: 401 INVALID_SESSION_ID → a new token → the call is replayed once.
    fake.expire_sessions();
    let before = fake.rest_requests().len();
    h.publish(&with_lead("evt_sf_tok_expired")).await;
    h.wait_metric(&attempts("salesforce", "success"), 11.0)
        .await;
    assert_eq!(fake.tokens_issued(), 2);
    assert_eq!(
        fake.rest_requests().len(),
        before + 2,
        "one refused call, one replay"
    );
    assert_eq!(h.metric(&attempts("salesforce", "retry")).await, 0.0);

    // A reload with the same connection keeps its token.
    let loaded = h.app().reload().expect("the same files reload");
    assert_eq!(loaded, 1);
    h.publish(&with_lead("evt_sf_tok_reloaded")).await;
    h.wait_metric(&attempts("salesforce", "success"), 12.0)
        .await;
    assert_eq!(fake.tokens_issued(), 2, "the token survived the reload");

    // A 401 that a new token does not cure is replayed only once, then dead-lettered.
    let unauthorized = || salesforce_error(401, "INVALID_SESSION_ID", "Session expired or invalid");
    fake.script([unauthorized(), unauthorized()]);
    let before = fake.rest_requests().len();
    h.publish(&with_lead("evt_sf_tok_refused")).await;
    let records = dead_letters(&h, 1).await;
    assert_eq!(fake.tokens_issued(), 3);
    assert_eq!(
        fake.rest_requests().len(),
        before + 2,
        "replayed once, not more"
    );
    let record = record_with(&records, "INVALID_SESSION_ID");
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("permanent")
    );
    assert_eq!(record.header_int("x-switchyard-last-status"), Some(401));
    assert_eq!(
        record.header_str("x-switchyard-connector").as_deref(),
        Some("salesforce")
    );
    // Neither the client secret nor a token is recorded anywhere.
    let text = format!(
        "{}{}",
        record.headers_text(),
        String::from_utf8_lossy(&record.body)
    );
    assert!(!text.contains(&secret), "{text}");
    assert!(!text.contains("00D5e0000000fAk!"), "{text}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_refresh_token_and_jwt_bearer_flows() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let lead = fake.insert(
        "Lead",
        json!({ "Email": "ana@example.com", "LastName": "Silva", "Company": "Acme" }),
    );
    let c = fake.state.credentials.clone();
    let workflows = format!(
        r#"
connections:
  - id: sf-refresh
    workspace: ws_demo
    salesforce:
      login_url: "{url}"
      refresh_token: {{ client_id: "{client_id}", refresh_token: "{{{{ secrets.SF_REFRESH }}}}" }}
  - id: sf-jwt
    workspace: ws_demo
    salesforce:
      login_url: "{url}"
      api_version: 62.0
      jwt_bearer: {{ client_id: "{client_id}", username: "{username}", private_key: "{{{{ secrets.SF_KEY }}}}" }}
  - id: sf-revoked
    workspace: ws_demo
    salesforce:
      login_url: "{url}"
      refresh_token: {{ client_id: "{client_id}", refresh_token: "{{{{ secrets.SF_REVOKED }}}}" }}
workflows:
  - id: flows
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: via_refresh
        salesforce: {{ connection: sf-refresh, get: {{ object: Lead, id: "{lead}" }} }}
      - id: via_jwt
        salesforce: {{ connection: sf-jwt, get: {{ object: Lead, id: "{lead}" }} }}
      - id: via_revoked
        salesforce: {{ connection: sf-revoked, get: {{ object: Lead, id: "{lead}" }} }}
"#,
        url = fake.url(),
        client_id = c.client_id,
        username = c.username,
    );
    let revoked = format!("5Aep861-revoked-{:016x}", rand::random::<u64>());
    let h = Harness::start(
        "sf-flows",
        &workflows,
        "",
        &[
            ("SF_REFRESH", &c.refresh_token),
            ("SF_KEY", SF_TEST_KEY_PKCS8),
            ("SF_REVOKED", &revoked),
        ],
    )
    .await;

    h.publish(&event("evt_sf_flows_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("salesforce", "success"), 2.0).await;
    let records = dead_letters(&h, 1).await;

    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 3, "one token request per connection");
    let grants: Vec<_> = tokens.iter().map(|t| form(&t.body)).collect();
    let refresh = grants
        .iter()
        .find(|g| g.get("refresh_token") == Some(&c.refresh_token))
        .expect("a refresh_token grant");
    assert_eq!(
        refresh.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(refresh.get("client_id"), Some(&c.client_id));
    assert!(
        !refresh.contains_key("client_secret"),
        "not configured, not sent"
    );
    let jwt = grants
        .iter()
        .find(|g| g.get("assertion").is_some())
        .expect("a JWT bearer grant");
    assert_eq!(
        jwt.get("grant_type").map(String::as_str),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    // The fake verified the RS256 signature with the public key; the claims are Salesforce's.
    let claims = fake.state.jwt_claims.lock().expect("lock").clone();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["iss"], json!(c.client_id));
    assert_eq!(claims[0]["sub"], json!(c.username));
    assert_eq!(claims[0]["aud"], json!(fake.url()));
    let exp = claims[0]["exp"].as_i64().expect("exp");
    let now = chrono::Utc::now().timestamp();
    assert!(exp > now && exp <= now + 300, "a short exp: {exp} vs {now}");
    let paths: Vec<String> = fake
        .rest_requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(
        paths.contains(&format!("/services/data/v61.0/sobjects/Lead/{lead}")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&format!("/services/data/v62.0/sobjects/Lead/{lead}")),
        "{paths:?}"
    );

    // A revoked refresh token: permanent, with the token endpoint's own words.
    let record = record_with(&records, "invalid_grant: expired access/refresh token");
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("permanent")
    );
    assert_eq!(
        record.header_str("x-switchyard-action").as_deref(),
        Some("via_revoked")
    );
    assert!(!record.headers_text().contains(&revoked));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_errors_are_retried_or_dead_lettered_by_error_code() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let workflows = format!(
        r#"
connections:
{connection}
workflows:
  - id: leads
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: create_lead
        salesforce:
          connection: sf-main
          create:
            object: Lead
            fields: {{ Email: contact.email, LastName: contact.last_name, Company: form_fields.company }}
"#,
        connection = sf_connection("sf-main", &fake, ""),
    );
    let secret = fake.state.credentials.client_secret.clone();
    let h = Harness::start(
        "sf-errors",
        &workflows,
        "retry: { schedule: [1s, 1h] }",
        &[("SF_CLIENT_SECRET", &secret)],
    )
    .await;
    let with_email = |id: &str, email: &str| {
        let mut e = event(id, "Gameplay.DataCaptured");
        e["contact"]["email"] = json!(email);
        e
    };
    let success = attempts("salesforce", "success");
    let retry = attempts("salesforce", "retry");

    // UNABLE_TO_LOCK_ROW is retried even though it comes with a 400.
    fake.script([salesforce_error(
        400,
        "UNABLE_TO_LOCK_ROW",
        "unable to obtain exclusive access to this record or 1 records: 00Q5e00000AbCdE",
    )]);
    h.publish(&with_email("evt_sf_err_lock", "ana@example.com"))
        .await;
    h.wait_metric(&success, 1.0).await;
    assert_eq!(h.metric(&retry).await, 1.0);

    // The concurrent-request limit: back off and retry.
    fake.script([salesforce_error(
        403,
        "REQUEST_LIMIT_EXCEEDED",
        "ConcurrentPerOrgLongTxn Limit exceeded.",
    )]);
    h.publish(&with_email("evt_sf_err_concurrent", "bo@example.com"))
        .await;
    h.wait_metric(&success, 2.0).await;
    assert_eq!(h.metric(&retry).await, 2.0);

    // A 500 is retried.
    fake.script([Reply::text(
        500,
        "<html>An unexpected error occurred</html>",
    )]);
    h.publish(&with_email("evt_sf_err_500", "di@example.com"))
        .await;
    h.wait_metric(&success, 3.0).await;
    assert_eq!(h.metric(&retry).await, 3.0);

    // Validation errors are permanent, with Salesforce's message in the reason.
    let mut no_last_name = with_email("evt_sf_err_required", "eve@example.com");
    no_last_name["contact"]["last_name"] = Value::Null;
    h.publish(&no_last_name).await;
    h.publish(&with_email("evt_sf_err_duplicate", "ana@example.com"))
        .await;
    let records = dead_letters(&h, 2).await;
    let required = record_with(
        &records,
        "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]",
    );
    let existing = fake
        .records("Lead")
        .into_iter()
        .find(|l| l.fields["Email"] == json!("ana@example.com"))
        .expect("the first lead");
    // The `duplicateResut` quirk is read: the reason names the record that already exists.
    let duplicate = record_with(&records, "DUPLICATES_DETECTED: Use one of these records?");
    let reason = duplicate
        .header_str("x-switchyard-reason")
        .unwrap_or_default();
    assert!(reason.contains(&existing.id), "{reason}");
    assert!(reason.contains("Standard_Lead_Duplicate_Rule"), "{reason}");
    for record in [required, duplicate] {
        assert_eq!(
            record.header_str("x-switchyard-error-class").as_deref(),
            Some("permanent")
        );
        assert_eq!(record.header_int("x-switchyard-last-status"), Some(400));
        assert_eq!(
            record.header_int("x-switchyard-attempts"),
            Some(1),
            "not retried"
        );
    }
    // The daily limit waits for the longest tier, and holds the whole connection (SPEC §10): an
    // action for it published afterwards is held on the broker, not called.
    fake.script([salesforce_error(
        403,
        "REQUEST_LIMIT_EXCEEDED",
        "TotalRequests Limit exceeded.",
    )]);
    h.publish(&with_email("evt_sf_err_daily", "cy@example.com"))
        .await;
    let longest = h.name("retry.1h");
    wait_until("the daily-limit retry in the 1h tier", async || {
        h.broker.queue_len(&longest).await == 1
    })
    .await;
    assert_eq!(h.metric(&retry).await, 4.0);
    let calls = fake.server.count();
    h.publish(&with_email("evt_sf_err_after_daily", "fy@example.com"))
        .await;
    wait_until("the next action held for the daily limit", async || {
        h.app()
            .connectors
            .http
            .destinations()
            .statuses()
            .iter()
            .any(|s| s.id == "sf-main" && s.holds >= 1)
    })
    .await;
    assert_eq!(fake.server.count(), calls, "not called inside the limit");

    assert_eq!(fake.tokens_issued(), 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_upsert_by_external_id_answers_per_api_version() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let out = sink().await;
    let workflows = format!(
        r#"
connections:
{current}
{old}
workflows:
  - id: score
    workspace: ws_demo
    trigger: {{ event: Gameplay.Ended }}
    actions:
      - id: upsert
        salesforce:
          connection: sf-main
          upsert:
            object: Contact
            external_id_field: Komo_Contact_Id__c
            external_id: "{{{{ contact.id }}}}"
            fields: {{ Email: contact.email, LastName: contact.last_name, Komo_Score__c: gameplay.score }}
      - id: report
        needs: upsert
        http: {{ url: "{sink}/upserted", body: '{{"id": "{{{{ steps.upsert.id }}}}", "created": {{{{ steps.upsert.created }}}}}}' }}
  - id: score-old-api
    workspace: ws_demo
    trigger: {{ event: Contact.Created }}
    actions:
      - id: upsert
        salesforce:
          connection: sf-v45
          upsert: {{ object: Contact, external_id_field: Komo_Contact_Id__c, external_id: "{{{{ contact.id }}}}", fields: {{ Email: contact.email }} }}
      - id: report
        needs: upsert
        http: {{ url: "{sink}/old", body: '{{"success": {{{{ steps.upsert.success }}}}, "created": {{{{ steps.upsert.created }}}}}}' }}
"#,
        current = sf_connection("sf-main", &fake, ""),
        old = sf_connection("sf-v45", &fake, "").replace("\"61.0\"", "\"45.0\""),
        sink = out.url(),
    );
    let secret = fake.state.credentials.client_secret.clone();
    let h = Harness::start(
        "sf-upsert",
        &workflows,
        "",
        &[("SF_CLIENT_SECRET", &secret)],
    )
    .await;

    // Created: 201.
    h.publish(&event("evt_sf_up_1", "Gameplay.Ended")).await;
    h.wait_metric(&attempts("http", "success"), 1.0).await;
    let contacts = fake.records("Contact");
    assert_eq!(contacts.len(), 1);
    let id = contacts[0].id.clone();
    assert_eq!(contacts[0].fields["Komo_Score__c"], json!(120));
    let upsert = &fake.rest_requests()[0];
    assert_eq!(upsert.method, "PATCH");
    assert_eq!(
        upsert.path,
        "/services/data/v61.0/sobjects/Contact/Komo_Contact_Id__c/ct_7"
    );
    assert_eq!(
        upsert.json(),
        json!({ "Email": "ana@example.com", "LastName": "Silva", "Komo_Score__c": 120 })
    );
    assert_eq!(
        out.requests()[0].json(),
        json!({ "id": id, "created": true })
    );

    // Updated: 200 with created false (v46 and later).
    let mut again = event("evt_sf_up_2", "Gameplay.Ended");
    again["gameplay"]["score"] = json!(130);
    h.publish(&again).await;
    h.wait_metric(&attempts("http", "success"), 2.0).await;
    assert_eq!(fake.records("Contact").len(), 1);
    assert_eq!(
        fake.records("Contact")[0].fields["Komo_Score__c"],
        json!(130)
    );
    assert_eq!(
        out.requests()[1].json(),
        json!({ "id": id, "created": false })
    );

    // v45: an update is a 204 without a body; the output still says what happened.
    h.publish(&event("evt_sf_up_3", "Contact.Created")).await;
    h.wait_metric(&attempts("http", "success"), 3.0).await;
    let old = fake.rest_requests().last().cloned().expect("a request");
    assert_eq!(
        old.path,
        "/services/data/v45.0/sobjects/Contact/Komo_Contact_Id__c/ct_7"
    );
    assert_eq!(out.requests()[2].path, "/old");
    assert_eq!(
        out.requests()[2].json(),
        json!({ "success": true, "created": false })
    );

    // Several records with the external id: 300, permanent.
    for _ in 0..2 {
        fake.insert(
            "Contact",
            json!({ "Komo_Contact_Id__c": "ct_twin", "LastName": "Twin" }),
        );
    }
    let mut twin = event("evt_sf_up_twin", "Gameplay.Ended");
    twin["contact"]["id"] = json!("ct_twin");
    h.publish(&twin).await;
    let records = dead_letters(&h, 1).await;
    let record = record_with(&records, "2 records match the external id");
    assert_eq!(record.header_int("x-switchyard-last-status"), Some(300));
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("permanent")
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn soql_values_are_escaped_so_a_quote_is_no_injection() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let name = "O'Neil\\";
    let lead = fake.insert(
        "Lead",
        json!({ "LastName": name, "Company": "Acme", "Email": "o@example.com" }),
    );
    fake.insert(
        "Lead",
        json!({ "LastName": "Other", "Company": "Acme", "Email": "x@example.com" }),
    );
    let out = sink().await;
    let workflows = format!(
        r#"
connections:
{connection}
workflows:
  - id: lookup
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: find
        salesforce: {{ connection: sf-main, get: {{ query: "SELECT Id, LastName FROM Lead WHERE LastName = {{{{ contact.last_name | soql }}}}" }} }}
      - id: report
        needs: find
        http: {{ url: "{sink}/found", body: '{{"total": {{{{ steps.find.totalSize }}}}, "id": "{{{{ steps.find.records[0].Id }}}}", "name": "{{{{ steps.find.records[0].LastName }}}}"}}' }}
"#,
        connection = sf_connection("sf-main", &fake, ""),
        sink = out.url(),
    );
    let secret = fake.state.credentials.client_secret.clone();
    let h = Harness::start("sf-soql", &workflows, "", &[("SF_CLIENT_SECRET", &secret)]).await;
    let mut e = event("evt_sf_soql", "Gameplay.DataCaptured");
    e["contact"]["last_name"] = json!(name);
    h.publish(&e).await;
    h.wait_metric(&attempts("http", "success"), 1.0).await;

    let q = query_param(&fake.rest_requests()[0], "q").expect("q");
    assert_eq!(
        q,
        r"SELECT Id, LastName FROM Lead WHERE LastName = 'O\'Neil\\'"
    );
    assert_eq!(
        out.requests()[0].json(),
        json!({ "total": 1, "id": lead, "name": name })
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_concurrency_limit_holds_under_load() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let lead = fake.insert(
        "Lead",
        json!({ "LastName": "Silva", "Company": "Acme", "Email": "ana@example.com" }),
    );
    fake.set_delay(Duration::from_millis(100));
    let workflows = format!(
        r#"
connections:
{connection}
workflows:
  - id: read
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: get_lead
        salesforce: {{ connection: sf-main, get: {{ object: Lead, id: "{lead}" }} }}
"#,
        connection = sf_connection("sf-main", &fake, "      limits: { concurrency: 3 }"),
    );
    let secret = fake.state.credentials.client_secret.clone();
    let h = Harness::start("sf-limit", &workflows, "", &[("SF_CLIENT_SECRET", &secret)]).await;
    for i in 0..20 {
        h.publish(&event(
            &format!("evt_sf_limit_{i}"),
            "Gameplay.DataCaptured",
        ))
        .await;
    }
    h.wait_metric(&attempts("salesforce", "success"), 20.0)
        .await;
    let max = fake.server.max_in_flight();
    assert!(max <= 3, "{max} calls at once; the limit is 3");
    assert!(
        max >= 2,
        "the load did not overlap ({max}); the test proves nothing"
    );
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Mailchimp

/// A Mailchimp key with a data-centre suffix, random so a leak cannot be a coincidence.
fn mailchimp_key() -> String {
    format!("{:032x}-us6", rand::random::<u128>())
}

fn mailchimp_connection(fake: &FakeMailchimp, extra: &str) -> String {
    format!(
        r#"
connections:
  - id: mc-main
    workspace: ws_demo
    mailchimp:
      api_key: "{{{{ secrets.MAILCHIMP_KEY }}}}"
      base_url: "{base}"
{extra}"#,
        base = fake.base_url(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mailchimp_upsert_then_tag_with_exact_paths_auth_and_bodies() {
    let key = mailchimp_key();
    let fake = FakeMailchimp::start(&key).await;
    let workflows = format!(
        r#"{connection}
workflows:
  - id: subscribe
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: subscribe
        mailchimp:
          connection: mc-main
          upsert:
            list: a1b2c3
            email: "{{{{ contact.email }}}}"
            status_if_new: subscribed
            merge_fields: {{ FNAME: contact.first_name, LNAME: contact.last_name, AGE: form_fields.age, PHONE: contact.phone }}
      - id: tag
        needs: subscribe
        if: "steps.subscribe.status == 'subscribed'"
        mailchimp:
          connection: mc-main
          tag:
            list: a1b2c3
            email: "{{{{ contact.email }}}}"
            tags: [promo-entrant, {{ name: "{{{{ card.name }}}}", status: active }}, {{ name: old-promo, status: inactive }}]
"#,
        connection = mailchimp_connection(&fake, ""),
    );
    let h = Harness::start("mc-upsert", &workflows, "", &[("MAILCHIMP_KEY", &key)]).await;
    let mut e = event("evt_mc_1", "Gameplay.DataCaptured");
    e["contact"]["email"] = json!("Urist.McVankab@FreddiesJokes.com");
    e["contact"]["first_name"] = json!("Urist");
    e["contact"]["last_name"] = json!("McVankab");
    e["form_fields"]["age"] = json!(31);
    h.publish(&e).await;
    h.wait_metric(&attempts("mailchimp", "success"), 2.0).await;

    let hash = "62eeb292278cc15f5817cb78f7790b08";
    let requests = fake.server.requests();
    assert_eq!(requests.len(), 2);
    let (upsert, tag) = (&requests[0], &requests[1]);
    assert_eq!(upsert.method, "PUT");
    assert_eq!(upsert.path, format!("/3.0/lists/a1b2c3/members/{hash}"));
    assert_eq!(
        upsert.json(),
        json!({
            "email_address": "Urist.McVankab@FreddiesJokes.com",
            "status_if_new": "subscribed",
            "merge_fields": { "FNAME": "Urist", "LNAME": "McVankab", "AGE": 31 },
        })
    );
    assert_eq!(tag.method, "POST");
    assert_eq!(tag.path, format!("/3.0/lists/a1b2c3/members/{hash}/tags"));
    assert_eq!(
        tag.json(),
        json!({
            "tags": [
                { "name": "promo-entrant", "status": "active" },
                { "name": "Spin to Win", "status": "active" },
                { "name": "old-promo", "status": "inactive" },
            ],
            "is_syncing": false,
        })
    );
    for r in &requests {
        let basic = r
            .header("authorization")
            .and_then(|h| h.strip_prefix("Basic "))
            .expect("HTTP Basic");
        let pair = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .expect("base64");
        let pair = String::from_utf8(pair).expect("utf-8");
        assert_eq!(pair.split_once(':').map(|(_, p)| p), Some(key.as_str()));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let member = fake.member("a1b2c3", hash).expect("the member exists");
    assert_eq!(member["status"], json!("subscribed"));
    assert_eq!(member["tags"][0]["name"], json!("promo-entrant"));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mailchimp_errors_are_classified_with_or_without_type() {
    let key = mailchimp_key();
    let fake = FakeMailchimp::start(&key).await;
    let workflows = format!(
        r#"{connection}
workflows:
  - id: subscribe
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: subscribe
        mailchimp: {{ connection: mc-main, upsert: {{ list: a1b2c3, email: "{{{{ contact.email }}}}", status_if_new: subscribed }} }}
"#,
        connection = mailchimp_connection(&fake, ""),
    );
    let h = Harness::start("mc-errors", &workflows, "", &[("MAILCHIMP_KEY", &key)]).await;
    let with_email = |id: &str, email: &str| {
        let mut e = event(id, "Gameplay.DataCaptured");
        e["contact"]["email"] = json!(email);
        e
    };

    fake.answer_for(
        "held@example.com",
        mailchimp_problem(
            400,
            "Member In Compliance State",
            "held@example.com is already a list member in compliance state due to unsubscribe, bounce, or compliance review.",
        ),
    );
    fake.answer_for(
        "gone@example.com",
        mailchimp_problem(
            400,
            "Forgotten Email Not Subscribed",
            "gone@example.com was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list.",
        ),
    );
    fake.answer_for(
        "flagged@example.com",
        mailchimp_problem(
            503,
            "ComplianceRelated",
            "This account has been flagged for a compliance reason.",
        ),
    );
    for (id, email) in [
        ("evt_mc_held", "held@example.com"),
        ("evt_mc_gone", "gone@example.com"),
        ("evt_mc_flagged", "flagged@example.com"),
    ] {
        h.publish(&with_email(id, email)).await;
    }
    let records = dead_letters(&h, 3).await;
    let held = record_with(
        &records,
        "Member In Compliance State: held@example.com is already a list member in compliance state",
    );
    let gone = record_with(
        &records,
        "Forgotten Email Not Subscribed: gone@example.com was permanently deleted",
    );
    let flagged = record_with(&records, "ComplianceRelated");
    for (record, status) in [(held, 400), (gone, 400), (flagged, 503)] {
        assert_eq!(
            record.header_str("x-switchyard-error-class").as_deref(),
            Some("permanent")
        );
        assert_eq!(record.header_int("x-switchyard-last-status"), Some(status));
        assert_eq!(record.header_int("x-switchyard-attempts"), Some(1));
        assert!(!record.headers_text().contains(&key), "the key leaked");
    }
    assert_eq!(h.metric(&attempts("mailchimp", "retry")).await, 0.0);

    // 429, 500 and a bare 403 (Mailchimp's throttling at high volume) are retried.
    let retryable = [
        mailchimp_problem(
            429,
            "Too Many Requests",
            "You have exceeded the limit of 10 simultaneous connections.",
        ),
        mailchimp_problem(
            500,
            "Internal Server Error",
            "An unexpected internal error has occurred.",
        ),
        Reply::status(403),
    ];
    for (i, reply) in retryable.into_iter().enumerate() {
        fake.script([reply]);
        h.publish(&with_email(
            &format!("evt_mc_retry_{i}"),
            &format!("r{i}@example.com"),
        ))
        .await;
        h.wait_metric(&attempts("mailchimp", "success"), (i + 1) as f64)
            .await;
        assert_eq!(
            h.metric(&attempts("mailchimp", "retry")).await,
            (i + 1) as f64
        );
    }
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mailchimp_default_concurrency_limit_of_ten_holds_under_load() {
    let key = mailchimp_key();
    let fake = FakeMailchimp::start(&key).await;
    fake.set_delay(Duration::from_millis(150));
    let workflows = format!(
        r#"{connection}
workflows:
  - id: subscribe
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: subscribe
        mailchimp: {{ connection: mc-main, upsert: {{ list: a1b2c3, email: "{{{{ contact.email }}}}", status_if_new: subscribed }} }}
"#,
        connection = mailchimp_connection(&fake, ""),
    );
    let h = Harness::start("mc-limit", &workflows, "", &[("MAILCHIMP_KEY", &key)]).await;
    for i in 0..40 {
        let mut e = event(&format!("evt_mc_load_{i}"), "Gameplay.DataCaptured");
        e["contact"]["email"] = json!(format!("load{i}@example.com"));
        h.publish(&e).await;
    }
    h.wait_metric(&attempts("mailchimp", "success"), 40.0).await;
    let max = fake.server.max_in_flight();
    assert!(
        max <= 10,
        "{max} simultaneous connections; Mailchimp allows 10"
    );
    assert!(
        max >= 5,
        "the load did not overlap ({max}); the test proves nothing"
    );
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Braze

fn braze_connection(fake: &FakeBraze, extra: &str) -> String {
    format!(
        r#"
connections:
  - id: braze-main
    workspace: ws_demo
    braze:
      rest_endpoint: "{url}"
      api_key: "{{{{ secrets.BRAZE_KEY }}}}"
{extra}"#,
        url = fake.url(),
    )
}

/// The Braze connection (with `limits`) and one workflow that tracks each
/// `Gameplay.DataCaptured` with `external_id`. More workflows may be appended as list items.
fn braze_track_workflows(fake: &FakeBraze, limits: &str, external_id: &str) -> String {
    format!(
        r#"{connection}
workflows:
  - id: track
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: track
        braze: {{ connection: braze-main, track: {{ external_id: "{external_id}", attributes: {{ email: contact.email }} }} }}
"#,
        connection = braze_connection(fake, limits),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn braze_track_sends_one_identifier_operators_events_and_purchases() {
    let key = format!("braze-{:032x}", rand::random::<u128>());
    let fake = FakeBraze::start(&key).await;
    let workflows = format!(
        r#"{connection}
workflows:
  - id: track
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: track
        braze:
          connection: braze-main
          track:
            external_id: "{{{{ contact.id }}}}"
            attributes:
              email: contact.email
              first_name: contact.first_name
              komo_last_card: card.name
              komo_optin: contact.optin
              phone: contact.phone
              komo_entries: {{ inc: 1 }}
              komo_points: {{ inc: data.points }}
              komo_cards: {{ add: [card.id] }}
              komo_interests: {{ remove: data.dropped }}
              source: Web
              tier: {{ const: gold.plus }}
            events:
              - name: form_submitted
                properties: {{ card: card.name, company: form_fields.company }}
              - name: late_entry
                time: "{{{{ data.when }}}}"
            purchases:
              - product_id: "{{{{ card.id }}}}"
                currency: EUR
                price: data.price
                quantity: {{ const: 2 }}
      - id: alias
        braze:
          connection: braze-main
          track:
            user_alias: {{ alias_name: "{{{{ contact.email }}}}", alias_label: komo_email }}
            events: [ {{ name: komo_seen, properties: {{ site: site.name }} }} ]
"#,
        connection = braze_connection(&fake, ""),
    );
    let h = Harness::start("braze-track", &workflows, "", &[("BRAZE_KEY", &key)]).await;
    let mut e = event("evt_braze_1", "Gameplay.DataCaptured");
    e["data"] = json!({ "points": 15, "dropped": ["old"], "price": 9.99, "when": "yesterday" });
    h.publish(&e).await;
    h.wait_metric(&attempts("braze", "success"), 2.0).await;

    let requests = fake.server.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/users/track");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {key}").as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let track = requests
        .iter()
        .find(|r| r.json().get("attributes").is_some())
        .expect("the track request");
    assert_eq!(
        track.json(),
        json!({
            "attributes": [{
                "external_id": "ct_7",
                "email": "ana@example.com",
                "first_name": "Ana",
                "komo_last_card": "Spin to Win",
                "komo_optin": true,
                "komo_entries": { "inc": 1 },
                "komo_points": { "inc": 15 },
                "komo_cards": { "add": ["card_42"] },
                "komo_interests": { "remove": ["old"] },
                "source": "Web",
                "tier": "gold.plus",
            }],
            "events": [
                {
                    "external_id": "ct_7",
                    "name": "form_submitted",
                    "time": "2026-11-26T18:00:00Z",
                    "properties": { "card": "Spin to Win", "company": "Acme" },
                },
                { "external_id": "ct_7", "name": "late_entry", "time": "yesterday" },
            ],
            "purchases": [{
                "external_id": "ct_7",
                "product_id": "card_42",
                "currency": "EUR",
                "price": 9.99,
                "quantity": 2,
                "time": "2026-11-26T18:00:00Z",
            }],
        })
    );
    let alias = requests
        .iter()
        .find(|r| r.json().get("attributes").is_none())
        .expect("the alias request");
    assert_eq!(
        alias.json(),
        json!({ "events": [{
            "user_alias": { "alias_name": "ana@example.com", "alias_label": "komo_email" },
            "name": "komo_seen",
            "time": "2026-11-26T18:00:00Z",
            "properties": { "site": "Summer Promo" },
        }]})
    );
    // Braze rejected the event with a bad time but applied the rest: a success, counted, not retried.
    h.wait_metric(
        "switchyard_partial_failures_total{connector=\"braze\"}",
        1.0,
    )
    .await;
    assert_eq!(h.metric(&attempts("braze", "retry")).await, 0.0);
    assert_eq!(fake.server.count(), 2);
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn braze_429_waits_until_the_rate_limit_reset_and_a_400_is_permanent() {
    let key = format!("braze-{:032x}", rand::random::<u128>());
    let fake = FakeBraze::start(&key).await;
    let workflows = braze_track_workflows(&fake, "", "{{ contact.id }}");
    let h = Harness::start(
        "braze-429",
        &workflows,
        "retry: { schedule: [1s, 1m] }",
        &[("BRAZE_KEY", &key)],
    )
    .await;

    let reset = chrono::Utc::now().timestamp() + 5;
    let mut throttled = Reply::json(429, &json!({ "message": "Rate limit exceeded" }));
    throttled.headers.extend([
        ("x-ratelimit-limit".to_owned(), "3000".to_owned()),
        ("x-ratelimit-remaining".to_owned(), "0".to_owned()),
        ("x-ratelimit-reset".to_owned(), reset.to_string()),
    ]);
    fake.script([throttled]);
    h.publish(&event("evt_braze_429", "Gameplay.DataCaptured"))
        .await;
    // Seconds until the reset: past the 1s tier, so the retry waits in the 1m tier (until then).
    let tier = h.name("retry.1m");
    wait_until("the 429 retry in the 1m tier", async || {
        h.broker.queue_len(&tier).await == 1
    })
    .await;
    assert_eq!(h.metric(&attempts("braze", "retry")).await, 1.0);
    assert_eq!(h.broker.queue_len(&h.name("retry.1s")).await, 0);
    assert_eq!(fake.server.count(), 1);

    // The limit is the connection's, not the one action's (SPEC §10): another action for it,
    // published inside the window, is held on the broker and called only after the reset.
    h.publish(&event("evt_braze_held", "Gameplay.DataCaptured"))
        .await;
    wait_until("both actions called after the reset", async || {
        fake.server.count() == 3
    })
    .await;
    let window_end = std::time::UNIX_EPOCH + Duration::from_secs(reset as u64 - 1);
    let calls = fake.server.requests();
    let first = calls[0].at;
    let now = (std::time::Instant::now(), std::time::SystemTime::now());
    for call in &calls[1..] {
        let at = now.1 - now.0.duration_since(call.at);
        assert!(
            at >= window_end,
            "a call went {:?} after the 429, before the reset",
            call.at.duration_since(first)
        );
    }
    let held = h
        .app()
        .connectors
        .http
        .destinations()
        .statuses()
        .into_iter()
        .find(|s| s.id == "braze-main")
        .expect("the connection is a destination");
    assert!(held.holds >= 1, "the second action was held: {held:?}");
    assert_eq!(h.metric(&attempts("braze", "success")).await, 2.0);

    fake.script([Reply::json(
        400,
        &json!({ "message": "Invalid 'attributes' object", "errors": [{ "type": "invalid" }] }),
    )]);
    h.publish(&event("evt_braze_400", "Gameplay.DataCaptured"))
        .await;
    let records = dead_letters(&h, 1).await;
    let record = record_with(&records, "Invalid 'attributes' object");
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("permanent")
    );
    assert!(!record.headers_text().contains(&key));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn braze_rate_limit_spaces_calls() {
    let key = format!("braze-{:032x}", rand::random::<u128>());
    let fake = FakeBraze::start(&key).await;
    let workflows = braze_track_workflows(&fake, "      limits: { rate: 4/s }", "{{ event.id }}");
    let h = Harness::start("braze-rate", &workflows, "", &[("BRAZE_KEY", &key)]).await;
    for i in 0..12 {
        h.publish(&event(
            &format!("evt_braze_rate_{i}"),
            "Gameplay.DataCaptured",
        ))
        .await;
    }
    h.wait_metric(&attempts("braze", "success"), 12.0).await;
    let spread = fake.server.inspect(|requests| {
        let first = requests.iter().map(|r| r.at).min().expect("requests");
        let last = requests.iter().map(|r| r.at).max().expect("requests");
        last - first
    });
    // 4 at once, then one every 250 ms: the twelfth call comes 2 s after the first.
    assert!(
        spread >= Duration::from_millis(1700),
        "12 calls within {spread:?} at 4/s"
    );
    h.finish().await;
}

/// A connection's own rate limit makes its actions wait; the wait must not idle the worker. With
/// one worker slot, the second Braze action waits a minute for the limiter, and the HTTP actions
/// of another workflow still go through meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_connection_does_not_hold_the_worker() {
    let key = format!("braze-{:032x}", rand::random::<u128>());
    let braze = FakeBraze::start(&key).await;
    let healthy = sink().await;
    let workflows = braze_track_workflows(
        &braze,
        "      limits: { rate: 1/min }",
        "{{ event.id }}",
    ) + &format!(
        r#"  - id: notify
    workspace: ws_demo
    trigger: {{ event: Gameplay.Ended }}
    actions:
      - {{ id: post, http: {{ url: "{healthy}/ended", body: '{{"event": "{{{{ event.id }}}}"}}' }} }}
"#,
        healthy = healthy.url(),
    );
    let h = Harness::start(
        "braze-throttle",
        &workflows,
        "worker: { concurrency: 1 }",
        &[("BRAZE_KEY", &key)],
    )
    .await;
    for i in 0..2 {
        h.publish(&event(&format!("evt_thr_{i}"), "Gameplay.DataCaptured"))
            .await;
    }
    // The first call used the burst; the second action now waits for the limiter.
    h.wait_metric(&attempts("braze", "success"), 1.0).await;
    h.wait_metric("switchyard_actions_in_flight{connector=\"braze\"}", 1.0)
        .await;

    for i in 0..5 {
        h.publish(&event(&format!("evt_thr_end_{i}"), "Gameplay.Ended"))
            .await;
    }
    wait_until(
        "the HTTP actions to go through beside the throttled one",
        async || healthy.count() == 5,
    )
    .await;
    assert_eq!(
        braze.server.count(),
        1,
        "the limiter still holds the second call"
    );
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Chaining and the examples

#[tokio::test(flavor = "multi_thread")]
async fn a_skipped_prerequisite_skips_its_dependents() {
    let fake = FakeSalesforce::start(SalesforceCredentials::random()).await;
    let key = mailchimp_key();
    let mailchimp = FakeMailchimp::start(&key).await;
    let workflows = format!(
        r#"
connections:
{sf}
  - id: mc-main
    workspace: ws_demo
    mailchimp: {{ api_key: "{{{{ secrets.MAILCHIMP_KEY }}}}", base_url: "{mc}" }}
workflows:
  - id: chained
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - id: find_lead
        if: "contact.email == blank"
        salesforce: {{ connection: sf-main, get: {{ query: "SELECT Id FROM Lead WHERE Email = {{{{ contact.email | soql }}}}" }} }}
      - id: update_lead
        needs: find_lead
        if: "steps.find_lead.totalSize > 0"
        salesforce: {{ connection: sf-main, update: {{ object: Lead, id: "{{{{ steps.find_lead.records[0].Id }}}}", fields: {{ Company: form_fields.company }} }} }}
      - id: create_lead
        needs: find_lead
        if: "steps.find_lead.totalSize == 0"
        salesforce: {{ connection: sf-main, create: {{ object: Lead, fields: {{ LastName: contact.last_name, Company: form_fields.company }} }} }}
      - id: subscribe
        if: "contact.optin == false"
        mailchimp: {{ connection: mc-main, upsert: {{ list: a1b2c3, email: "{{{{ contact.email }}}}", status_if_new: subscribed }} }}
      - id: tag
        needs: subscribe
        mailchimp: {{ connection: mc-main, tag: {{ list: a1b2c3, email: "{{{{ contact.email }}}}", tags: [promo-entrant] }} }}
"#,
        sf = sf_connection("sf-main", &fake, ""),
        mc = mailchimp.base_url(),
    );
    let secret = fake.state.credentials.client_secret.clone();
    let h = Harness::start(
        "skips",
        &workflows,
        "",
        &[("SF_CLIENT_SECRET", &secret), ("MAILCHIMP_KEY", &key)],
    )
    .await;
    h.publish(&event("evt_skips_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("salesforce", "skipped"), 3.0).await;
    h.wait_metric(&attempts("mailchimp", "skipped"), 2.0).await;
    assert_eq!(h.metric(&attempts("salesforce", "success")).await, 0.0);
    assert_eq!(h.metric(&attempts("mailchimp", "success")).await, 0.0);
    assert_eq!(fake.server.count(), 0, "no token, no call");
    assert_eq!(mailchimp.server.count(), 0);
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_repository_examples_dry_run_every_app_with_secrets_redacted() {
    let secrets = [
        (
            "SWITCHYARD_SECRET_SF_CLIENT_SECRET",
            format!("sf-{:016x}", rand::random::<u64>()),
        ),
        (
            "SWITCHYARD_SECRET_MAILCHIMP_KEY",
            format!("{:032x}-us6", rand::random::<u128>()),
        ),
        (
            "SWITCHYARD_SECRET_BRAZE_KEY",
            format!("bz-{:016x}", rand::random::<u64>()),
        ),
    ];
    let mut envs: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envs.push(("SWITCHYARD__WORKFLOWS__PATHS", VENDOR_EXAMPLES_ON));
    let ran = run_switchyard(
        &[
            "test",
            "--event",
            "examples/events/data-captured.json",
            "--config",
            "config/switchyard.yaml",
        ],
        &envs,
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let out = &ran.stdout;
    for (_, value) in &secrets {
        assert!(!out.contains(value.as_str()), "a secret is printed:\n{out}");
    }
    for needle in [
        "workflow salesforce-lead",
        "action find_lead [salesforce]",
        "GET https://acme.my.salesforce.com/services/data/v61.0/query?q=SELECT+Id+FROM+Lead+WHERE+Email+%3D+%27ana%40example.com%27",
        "POST https://acme.my.salesforce.com/services/data/v61.0/sobjects/Lead/",
        r#"{"Email":"ana@example.com","FirstName":"Ana","LastName":"Silva","Company":"Acme","LeadSource":"Spin to Win"}"#,
        "workflow mailchimp-subscribe",
        "/3.0/lists/a1b2c3d4e5/members/cdb9d6a1dddc375a09cc83e3001598dc",
        "workflow braze-track",
        "POST https://rest.iad-01.braze.com/users/track",
        "authorization: Bearer [redacted]",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
}
