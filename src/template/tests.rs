use super::*;
use serde_json::{Map, json};

const NASTY: &str = "Ana \"The Ace\" O'Neil\\\nJosé Ñandú 🎉\t</script>";

fn event() -> Value {
    json!({
        "id": "evt_01JD8X4Q2M3N",
        "type": "Gameplay.DataCaptured",
        "occurred_at": "2026-11-26T18:00:00Z",
        "workspace": { "id": "ws_demo", "name": "Demo Brand" },
        "site": { "id": "site_9", "name": "Summer Promo", "url": "https://promo.example.com" },
        "card": { "id": "card_42", "name": "Spin to Win", "type": "SpinToWin" },
        "contact": { "id": "ct_7", "email": "ana@example.com", "first_name": "Ana",
                     "last_name": "Silva", "phone": null, "optin": true, "properties": {} },
        "form_fields": { "company": "Acme", "email": "ana@example.com" },
        "gameplay": { "id": "gp_3", "score": 120, "completed": true, "duration_ms": 53000 },
        "data": { "ratio": 0.5, "tags": ["a", "b"] }
    })
}

fn steps() -> Value {
    json!({ "find_lead": { "totalSize": 2, "records": [ { "Id": "00Q1" }, { "Id": "00Q2" } ] } })
}

fn secrets() -> HashMap<String, String> {
    HashMap::from([("HUBSPOT_TOKEN".to_owned(), "pat-123".to_owned())])
}

fn ctx<'a>(
    event: &'a Value,
    steps: &'a Value,
    secrets: &'a HashMap<String, String>,
) -> Context<'a> {
    Context {
        event: event.into(),
        steps,
        secrets: SecretsView::Real(secrets),
    }
}

/// Renders `src` as a text template against the sample event, steps and secrets.
fn text(src: &str) -> String {
    let (event, steps, secrets) = (event(), steps(), secrets());
    Engine::new()
        .text(src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .render(&ctx(&event, &steps, &secrets))
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn body_json(engine: &Engine, src: &str, event: &Value) -> Value {
    let body = engine.body(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    assert!(body.is_json(), "{src} should read as JSON");
    let (steps, secrets) = (steps(), secrets());
    let ctx = ctx(event, &steps, &secrets);
    let rendered = body.render(&ctx).unwrap();
    let parsed: Value = serde_json::from_str(&rendered)
        .unwrap_or_else(|e| panic!("{src} rendered invalid JSON {rendered}: {e}"));
    assert_eq!(
        parsed,
        body.render_value(&ctx).unwrap(),
        "render and render_value agree"
    );
    parsed
}

#[test]
fn filters() {
    let cases = [
        (r#"{{ "O'Neil" | soql }}"#, r"'O\'Neil'"),
        ("{{ contact.nope | soql }}", "''"),
        ("{{ contact.email | soql }}", "'ana@example.com'"),
        (r#"{{ "a b&c/é" | url_encode }}"#, "a%20b%26c%2F%C3%A9"),
        ("{{ contact.nope | url_encode }}", ""),
        (
            r#"{{ "urist.mcvankab@freddiesjokes.com" | md5 }}"#,
            "62eeb292278cc15f5817cb78f7790b08",
        ),
        ("{{ contact.nope | md5 }}", ""),
        ("{{ contact.first_name | json }}", r#""Ana""#),
        ("{{ gameplay.score | json }}", "120"),
        ("{{ data.ratio | json }}", "0.5"),
        ("{{ contact.optin | json }}", "true"),
        ("{{ contact.phone | json }}", "null"),
        ("{{ contact.nope | json }}", "null"),
        ("{{ data.tags | json }}", r#"["a","b"]"#),
        (
            "{{ gameplay | json }}",
            r#"{"completed":true,"duration_ms":53000,"id":"gp_3","score":120}"#,
        ),
        ("{{ contact.first_name | upcase }}", "ANA"),
    ];
    for (src, expected) in cases {
        assert_eq!(text(src), expected, "{src}");
    }
}

#[test]
fn soql_escapes_every_special_character() {
    let event = json!({ "contact": { "name": NASTY } });
    let (steps, secrets) = (Value::Null, secrets());
    let out = Engine::new()
        .text("{{ contact.name | soql }}")
        .unwrap()
        .render(&ctx(&event, &steps, &secrets))
        .unwrap();
    assert_eq!(
        out,
        "'Ana \\\"The Ace\\\" O\\'Neil\\\\\\nJosé Ñandú 🎉\\t</script>'"
    );
}

#[test]
fn lookups() {
    let cases = [
        (
            "{{ event.id }}/{{ event.type }}",
            "evt_01JD8X4Q2M3N/Gameplay.DataCaptured",
        ),
        ("{{ event.occurred_at }}", "2026-11-26T18:00:00Z"),
        ("{{ id }}", "evt_01JD8X4Q2M3N"),
        ("{{ event.workspace.id }}", ""),
        ("{{ workspace.id }}", "ws_demo"),
        ("{{ steps.find_lead.records[0].Id }}", "00Q1"),
        ("{{ steps.find_lead.records[-1].Id }}", "00Q2"),
        ("{{ steps.find_lead.records.first.Id }}", "00Q1"),
        ("{{ steps.find_lead.records.last.Id }}", "00Q2"),
        ("{{ steps.find_lead.records.size }}", "2"),
        ("{{ steps.find_lead.records | size }}", "2"),
        ("{{ steps['find_lead'].totalSize }}", "2"),
        ("{{ gameplay.size }}", "4"),
        ("{{ contact.email.size }}", "15"),
        ("{{ gameplay.score | plus: 1 }}", "121"),
        ("{{ data.ratio | times: 2 }}", "1"),
        ("{{ contact.optin }}", "true"),
        (
            "{% for t in data.tags %}[{{ t }}{{ forloop.index }}]{% endfor %}",
            "[a1][b2]",
        ),
        (
            "{% assign n = card.name %}{{ n | downcase }}",
            "spin to win",
        ),
        ("{{ contact.nope | default: 'friend' }}", "friend"),
        ("{{ contact.phone | default: 'none' }}", "none"),
    ];
    for (src, expected) in cases {
        assert_eq!(text(src), expected, "{src}");
    }
}

#[test]
fn missing_values_render_empty() {
    let cases = [
        "[{{ nope }}]",
        "[{{ contact.nope }}]",
        "[{{ contact.phone }}]",
        "[{{ contact.nope.deeper.still }}]",
        "[{{ nope[3].x }}]",
        "[{{ steps.nope.records[0].Id }}]",
        "[{{ steps.find_lead.records[9].Id }}]",
        "[{{ event.nope }}]",
        "[{{ contact.properties.nope }}]",
        "[{% if nope %}x{% endif %}]",
    ];
    for src in cases {
        assert_eq!(text(src), "[]", "{src}");
    }
    // No steps at all (`Null`), as for an action without `needs`.
    let event = event();
    let secrets = secrets();
    let out = Engine::new()
        .text("[{{ steps.find_lead.records[0].Id }}]")
        .unwrap()
        .render(&ctx(&event, &Value::Null, &secrets))
        .unwrap();
    assert_eq!(out, "[]");
}

#[test]
fn indexing_a_string_by_name_is_a_render_error() {
    let (event, steps, secrets) = (event(), steps(), secrets());
    let err = Engine::new()
        .text("{{ contact.email.domain }}")
        .unwrap()
        .render(&ctx(&event, &steps, &secrets))
        .unwrap_err();
    assert!(matches!(err, TemplateError::Render(_)), "{err}");
}

#[test]
fn conditions() {
    let engine = Engine::new();
    let with_empty_email = json!({ "contact": { "email": "  " } });
    let no_contact = json!({ "id": "e" });
    let cases: [(&str, &Value, bool); 16] = [
        ("contact.email != blank", &event(), true),
        ("contact.email == blank", &event(), false),
        ("contact.email != blank", &with_empty_email, false),
        ("contact.email != blank", &no_contact, false),
        ("contact.email == blank", &no_contact, true),
        ("contact.email == empty", &no_contact, true),
        ("contact.email == nil", &no_contact, true),
        ("contact.phone == blank", &event(), true),
        ("steps.find_lead.totalSize > 0", &event(), true),
        ("steps.find_lead.totalSize == 0", &event(), false),
        ("gameplay.score >= 100 and contact.optin", &event(), true),
        ("gameplay.score > 200 or contact.nope", &event(), false),
        ("contact.optin", &event(), true),
        ("contact.nope", &event(), false),
        ("card.name contains \"Spin\"", &event(), true),
        ("event.type == \"Gameplay.DataCaptured\"", &event(), true),
    ];
    let (steps, secrets) = (steps(), secrets());
    for (src, event, expected) in cases {
        let condition = engine.condition(src).unwrap();
        assert_eq!(condition.source(), src);
        let got = condition.eval(&ctx(event, &steps, &secrets)).unwrap();
        assert_eq!(got, expected, "{src} on {event}");
    }
    // Steps missing entirely: neither branch of find_lead fires, and nothing errors.
    let event = event();
    for src in [
        "steps.find_lead.totalSize > 0",
        "steps.find_lead.totalSize == 0",
    ] {
        let got = engine
            .condition(src)
            .unwrap()
            .eval(&ctx(&event, &Value::Null, &secrets));
        assert!(!got.unwrap(), "{src}");
    }
    assert!(matches!(
        engine.condition("  "),
        Err(TemplateError::Parse(_))
    ));
    assert!(matches!(
        engine.condition("a %}{% if b"),
        Err(TemplateError::Parse(_))
    ));
    assert!(matches!(
        engine.condition("a ==="),
        Err(TemplateError::Parse(_))
    ));
}

#[test]
fn hubspot_body_from_the_product_brief() {
    let src = r#"{
  "properties": {
"email": "{{ contact.email }}",
"firstname": "{{ contact.first_name }}",
"lastname": "{{ contact.last_name }}",
"lead_source": "Komo - {{ card.name }}",
"komo_score": "{{ gameplay.score }}",
  }
}
"#;
    let engine = Engine::new();
    let body = engine.body(src).unwrap();
    assert!(body.is_json());
    let (event, steps, secrets) = (event(), steps(), secrets());
    assert_eq!(
        body.render(&ctx(&event, &steps, &secrets)).unwrap(),
        r#"{"properties":{"email":"ana@example.com","firstname":"Ana","lastname":"Silva","lead_source":"Komo - Spin to Win","komo_score":"120"}}"#
    );
    assert_eq!(
        body.variables(),
        [
            vec!["contact", "email"],
            vec!["contact", "first_name"],
            vec!["contact", "last_name"],
            vec!["card", "name"],
            vec!["gameplay", "score"],
        ]
    );
}

#[test]
fn nasty_values_stay_valid_json() {
    let src = r#"{ "name": "{{ contact.first_name }}", "hi": "Hello {{ contact.first_name }}!",
                  "soql": "{{ contact.first_name | soql }}", "raw": {{ contact.first_name }},
                  "{{ contact.first_name }}": 1 }"#;
    let event = json!({ "contact": { "first_name": NASTY } });
    let got = body_json(&Engine::new(), src, &event);
    let mut expected = Map::new();
    expected.insert("name".into(), json!(NASTY));
    expected.insert("hi".into(), json!(format!("Hello {NASTY}!")));
    expected.insert(
        "soql".into(),
        json!("'Ana \\\"The Ace\\\" O\\'Neil\\\\\\nJosé Ñandú 🎉\\t</script>'"),
    );
    expected.insert("raw".into(), json!(NASTY));
    expected.insert(NASTY.into(), json!(1));
    assert_eq!(got, Value::Object(expected));
}

#[test]
fn bare_placeholders_keep_json_types() {
    let engine = Engine::new();
    let event = event();
    let cases = [
        (
            r#"{"score": {{ gameplay.score }}}"#,
            json!({ "score": 120 }),
        ),
        (
            r#"{"score": {{- gameplay.score -}}}"#,
            json!({ "score": 120 }),
        ),
        (r#"{"ratio": {{ data.ratio }}}"#, json!({ "ratio": 0.5 })),
        (
            r#"{"optin": {{ contact.optin }}}"#,
            json!({ "optin": true }),
        ),
        (
            r#"{"game": {{ gameplay }}}"#,
            json!({ "game": { "id": "gp_3", "score": 120, "completed": true, "duration_ms": 53000 } }),
        ),
        (
            r#"{"nope": {{ contact.nope }}, "phone": {{ contact.phone }}}"#,
            json!({ "nope": null, "phone": null }),
        ),
        (
            r#"{"id": {{ steps.find_lead.records[1].Id }}}"#,
            json!({ "id": "00Q2" }),
        ),
        (
            r#"{"n": {{ steps.find_lead.records.size }}}"#,
            json!({ "n": 2 }),
        ),
        (
            r#"{"event": {{ event }}}"#,
            json!({ "event": {
            "id": "evt_01JD8X4Q2M3N", "type": "Gameplay.DataCaptured", "occurred_at": "2026-11-26T18:00:00Z" } }),
        ),
        (
            r#"{"next": {{ gameplay.score | plus: 1 }}}"#,
            json!({ "next": 121 }),
        ),
        (
            r#"{"up": {{ contact.first_name | upcase }}}"#,
            json!({ "up": "ANA" }),
        ),
        (
            r#"{"tags": {{ data.tags | json }}}"#,
            json!({ "tags": ["a", "b"] }),
        ),
        (
            r#"{"t": {{ true }}, "s": {{ "x" }}}"#,
            json!({ "t": true, "s": "x" }),
        ),
        (
            r#"{"empty": {{ contact.nope | upcase }}}"#,
            json!({ "empty": "" }),
        ),
        (
            r#"{"quoted": "{{ gameplay.score }}"}"#,
            json!({ "quoted": "120" }),
        ),
    ];
    for (src, expected) in cases {
        assert_eq!(body_json(&engine, src, &event), expected, "{src}");
    }
    // Key order follows the event, not the alphabet.
    let out = engine
        .body(r#"{"game": {{ gameplay }}}"#)
        .unwrap()
        .render(&ctx(&event, &steps(), &secrets()))
        .unwrap();
    assert_eq!(
        out,
        r#"{"game":{"id":"gp_3","score":120,"completed":true,"duration_ms":53000}}"#
    );
}

#[test]
fn lenient_json_forms() {
    let engine = Engine::new();
    let event = event();
    let cases = [
        (r#"[1, "{{ card.id }}", ]"#, json!([1, "card_42"])),
        (
            r#"{"a": [ {{ gameplay.score }}, [true, null,], ], "b": {"c": -1.5e2,},}"#,
            json!({ "a": [120, [true, null]], "b": { "c": -150.0 } }),
        ),
        (
            r#"  {"k": "\u00e9\ud83c\udf89\n\"\/"}  "#,
            json!({ "k": "é🎉\n\"/" }),
        ),
        (
            r#"{"greeting": "{{ contact.nope | default: "friend" }}"}"#,
            json!({ "greeting": "friend" }),
        ),
        (
            r#"{"greeting": "{{ contact.nope | default: \"pal\" }}"}"#,
            json!({ "greeting": "pal" }),
        ),
        (
            r#"{"x": "{% if contact.optin %}yes{% else %}no{% endif %}"}"#,
            json!({ "x": "yes" }),
        ),
        (
            r#"{"big": 12345678901234567890, "small": 0}"#,
            json!({ "big": 12345678901234567890_u64, "small": 0 }),
        ),
        ("{}", json!({})),
        ("[]", json!([])),
    ];
    for (src, expected) in cases {
        assert_eq!(body_json(&engine, src, &event), expected, "{src}");
    }
}

#[test]
fn non_json_bodies_are_text() {
    let engine = Engine::new();
    let (event, steps, secrets) = (event(), steps(), secrets());
    let ctx = ctx(&event, &steps, &secrets);
    let cases = [
        ("Hello {{ contact.first_name }}", "Hello Ana"),
        ("{ not json {{ card.id }}", "{ not json card_42"),
        (r#"{"a": 1} trailing"#, r#"{"a": 1} trailing"#),
        (r#"{"a": 1,, }"#, r#"{"a": 1,, }"#),
        ("{{ gameplay.score }}", "120"),
        ("{% if contact.optin %}{\"a\":1}{% endif %}", "{\"a\":1}"),
        (
            "email={{ contact.email | url_encode }}",
            "email=ana%40example.com",
        ),
    ];
    for (src, expected) in cases {
        let body = engine.body(src).unwrap();
        assert!(!body.is_json(), "{src}");
        assert_eq!(body.render(&ctx).unwrap(), expected, "{src}");
        assert_eq!(body.source(), src);
    }
}

#[test]
fn secrets_real_redacted_and_missing() {
    let engine = Engine::new();
    let (event, steps, real) = (event(), steps(), secrets());
    let redacted = Context {
        event: (&event).into(),
        steps: &steps,
        secrets: SecretsView::Redacted,
    };
    let real = ctx(&event, &steps, &real);

    let auth = engine.text("Bearer {{ secrets.HUBSPOT_TOKEN }}").unwrap();
    assert_eq!(auth.secrets(), ["HUBSPOT_TOKEN"]);
    assert_eq!(auth.render(&real).unwrap(), "Bearer pat-123");
    assert_eq!(auth.render(&redacted).unwrap(), "Bearer [redacted]");

    let missing = engine.text("{{ secrets.NOPE }}").unwrap();
    assert!(matches!(missing.render(&real), Err(TemplateError::MissingSecret(n)) if n == "NOPE"));
    assert_eq!(missing.render(&redacted).unwrap(), "[redacted]");
    let err = missing.render(&real).unwrap_err().to_string();
    assert!(err.contains("SWITCHYARD_SECRET_NOPE"), "{err}");

    let body = engine
        .body(r#"{"t": "{{ secrets.HUBSPOT_TOKEN }}", "n": "{{ secrets.NOPE }}"}"#)
        .unwrap();
    assert_eq!(body.secrets(), ["HUBSPOT_TOKEN", "NOPE"]);
    assert!(matches!(body.render(&real), Err(TemplateError::MissingSecret(n)) if n == "NOPE"));
    assert_eq!(
        body.render(&redacted).unwrap(),
        r#"{"t":"[redacted]","n":"[redacted]"}"#
    );
    let bare = engine
        .body(r#"{"t": {{ secrets.HUBSPOT_TOKEN }}}"#)
        .unwrap();
    assert_eq!(bare.render(&real).unwrap(), r#"{"t":"pat-123"}"#);

    let condition = engine.condition("secrets.NOPE != blank").unwrap();
    assert!(matches!(
        condition.eval(&real),
        Err(TemplateError::MissingSecret(_))
    ));

    for unnamed in [
        "{{ secrets }}",
        "{{ secrets[contact.id] }}",
        "{{ secrets | json }}",
    ] {
        assert!(
            matches!(engine.text(unnamed), Err(TemplateError::Parse(_))),
            "{unnamed}"
        );
    }
    let ctx_debug = format!("{real:?}");
    assert!(!ctx_debug.contains("pat-123"), "{ctx_debug}");
    assert!(ctx_debug.contains("HUBSPOT_TOKEN"), "{ctx_debug}");
}

#[test]
fn literals_are_not_parsed() {
    let engine = Engine::new();
    let (event, steps, secrets) = (event(), steps(), secrets());
    let ctx = ctx(&event, &steps, &secrets);
    for src in [
        "https://api.hubapi.com/crm/v3/objects/contacts",
        "a } b { c",
        "{ single }",
        "",
    ] {
        let t = engine.text(src).unwrap();
        assert_eq!(t.literal(), Some(src));
        assert_eq!(t.source(), src);
        assert!(t.variables().is_empty());
        assert!(matches!(t.render_cow(&ctx).unwrap(), Cow::Borrowed(s) if s == src));
    }
    let t = engine.text("{{ card.id }}").unwrap();
    assert_eq!(t.literal(), None);
    assert!(matches!(
        engine.text("{{ card.id | no_such_filter }}"),
        Err(TemplateError::Parse(_))
    ));
    assert!(matches!(
        engine.text("{% if %}"),
        Err(TemplateError::Parse(_))
    ));
    assert!(matches!(
        engine.body(r#"{"a": "{{ x | nope }}"}"#),
        Err(TemplateError::Parse(_))
    ));
}

#[test]
fn variables_extraction() {
    let engine = Engine::new();
    let cases: [(&str, &[&[&str]]); 11] = [
        ("{{ contact.email }}", &[&["contact", "email"]]),
        (
            "{{ steps.find_lead.records[0].Id | soql }}",
            &[&["steps", "find_lead", "records", "0", "Id"]],
        ),
        ("{{ a.b }}{{ a.b }}{{- c -}}", &[&["a", "b"], &["c"]]),
        (
            "{{ x | default: contact.name | append: \"y.z\" }}",
            &[&["x"], &["contact", "name"]],
        ),
        ("{{ x | slice: 1, y.z }}", &[&["x"], &["y", "z"]]),
        (
            "{% if contact.email != blank and gameplay.score > 10 or card.name contains 'a.b' %}{% elsif z == nil %}{% endif %}",
            &[
                &["contact", "email"],
                &["gameplay", "score"],
                &["card", "name"],
                &["z"],
            ],
        ),
        (
            "{% unless contact.optin == true %}{% endunless %}",
            &[&["contact", "optin"]],
        ),
        (
            "{% for r in steps.x.records reversed limit: 2 %}{{ r.Id }}{{ forloop.index }}{% endfor %}",
            &[&["steps", "x", "records"]],
        ),
        (
            "{% assign n = card.name | upcase %}{{ n }}{{ site.url }}",
            &[&["card", "name"], &["site", "url"]],
        ),
        (
            "{{ data[contact.key].x }}{{ data['a b'] }}",
            &[&["data"], &["contact", "key"], &["data", "a b"]],
        ),
        (
            "{% raw %}{{ not.a.var }}{% endraw %}{% comment %}{{ nor.this }}{% endcomment %}{{ yes }}",
            &[&["yes"]],
        ),
    ];
    for (src, expected) in cases {
        let t = engine.text(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(t.variables(), expected, "{src}");
    }
    let condition = engine.condition("steps.find_lead.totalSize > 0").unwrap();
    assert_eq!(
        condition.variables(),
        [vec!["steps", "find_lead", "totalSize"]]
    );
}

#[test]
fn mapping_forms() {
    let engine = Engine::new();
    let (event, steps, secrets) = (event(), steps(), secrets());
    let ctx = ctx(&event, &steps, &secrets);
    let cases = [
        (json!("contact.email"), Some(json!("ana@example.com"))),
        (json!("gameplay.score"), Some(json!(120))),
        (json!("contact.optin"), Some(json!(true))),
        (json!("contact.properties"), Some(json!({}))),
        (json!("form_fields.company"), Some(json!("Acme"))),
        (json!(" card.name "), Some(json!("Spin to Win"))),
        (json!("steps.find_lead.records[0].Id"), Some(json!("00Q1"))),
        (
            json!("steps.find_lead.records.last.Id"),
            Some(json!("00Q2")),
        ),
        (json!("steps.find_lead.records[7].Id"), None),
        (json!("event.type"), Some(json!("Gameplay.DataCaptured"))),
        (json!("contact.phone"), None),
        (json!("contact.nope"), None),
        (json!("nope.deeper"), None),
        (
            json!("{{ contact.first_name }} {{ contact.last_name }}"),
            Some(json!("Ana Silva")),
        ),
        (json!("{{ gameplay.score }}"), Some(json!("120"))),
        (json!("{{ contact.nope }}"), None),
        (json!("{{ contact.nope }} "), None),
        (json!("Web"), Some(json!("Web"))),
        (json!("v1.2"), Some(json!("v1.2"))),
        (json!("ana@example.com"), Some(json!("ana@example.com"))),
        (json!(42), Some(json!(42))),
        (json!(false), Some(json!(false))),
        (
            json!({ "const": "contact.email" }),
            Some(json!("contact.email")),
        ),
        (json!({ "const": [1, 2] }), Some(json!([1, 2]))),
        (json!({ "const": null }), Some(Value::Null)),
        (json!({ "other": 1 }), Some(json!({ "other": 1 }))),
        (json!(["promo-entrant"]), Some(json!(["promo-entrant"]))),
    ];
    for (value, expected) in cases {
        let mapped = engine
            .mapping(&value)
            .unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(mapped.resolve(&ctx).unwrap(), expected, "{value}");
    }
    let path = engine
        .mapping(&json!("steps.find_lead.records[0].Id"))
        .unwrap();
    assert!(matches!(&path, MappedValue::Path(p) if p == &[
        PathSegment::Key("steps".into()), PathSegment::Key("find_lead".into()),
        PathSegment::Key("records".into()), PathSegment::Index(0), PathSegment::Key("Id".into()),
    ]));
    assert_eq!(
        path.variables(),
        [vec!["steps", "find_lead", "records", "0", "Id"]]
    );
    assert!(matches!(
        engine.mapping(&json!("Web")).unwrap(),
        MappedValue::Literal(_)
    ));
    assert!(
        engine
            .mapping(&json!("Web"))
            .unwrap()
            .variables()
            .is_empty()
    );
    assert!(matches!(
        engine.mapping(&json!("{{ a }}")).unwrap(),
        MappedValue::Template(_)
    ));
    assert!(matches!(
        engine.mapping(&json!("secrets.KEY")),
        Err(TemplateError::Parse(_))
    ));
}

#[test]
fn paths_parse() {
    let key = |k: &str| PathSegment::Key(k.to_owned());
    let cases = [
        ("contact.email", Some(vec![key("contact"), key("email")])),
        (
            "form_fields.opt-in",
            Some(vec![key("form_fields"), key("opt-in")]),
        ),
        (
            "a[0][12].b",
            Some(vec![
                key("a"),
                PathSegment::Index(0),
                PathSegment::Index(12),
                key("b"),
            ]),
        ),
        ("Web", None),
        ("a[0]", None),
        ("a.", None),
        (".a", None),
        ("a..b", None),
        ("a.1b", None),
        ("a[x].b", None),
        ("a.b c", None),
        ("1.5", None),
    ];
    for (src, expected) in cases {
        assert_eq!(parse_path(src), expected, "{src}");
    }
}

#[test]
fn compiled_parts_are_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone + fmt::Debug>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<TextTemplate>();
    assert_send_sync::<Condition>();
    assert_send_sync::<BodyTemplate>();
    assert_send_sync::<MappedValue>();
}

/// Regression (found by the `json_template` fuzz target): the `liquid` parser panics on an
/// integer literal larger than an `i64`; it is now a parse error.
#[test]
fn an_integer_literal_too_large_is_a_parse_error_not_a_panic() {
    let engine = Engine::new();
    for src in [
        "{{ 99999999999999999999 }}",
        "{{ contact.score | plus: 99999999999999999999 }}",
        "{% for i in (1..99999999999999999999) %}{{ i }}{% endfor %}",
        "{{ -99999999999999999999 }}",
        r#"{"b": "{{ 2222222222222222222222222222222222222222 -}}"}"#,
    ] {
        match engine.text(src) {
            Err(TemplateError::Parse(message)) => {
                assert!(message.contains("too large"), "{src}: {message}")
            }
            other => panic!("{src}: {other:?}"),
        }
        let _ = engine.body(src);
    }
    // What still compiles: the largest integers, big floats, digits in strings and text.
    for src in [
        "{{ 9223372036854775807 }}",
        "{{ -9223372036854775808 }}",
        "{{ 99999999999999999999.5 }}",
        "{{ 1.99999999999999999999 }}",
        "{{ \"99999999999999999999\" }}",
        "99999999999999999999 {{ contact.id }}",
    ] {
        assert!(engine.text(src).is_ok(), "{src}");
    }
}

/// Regression (found by the `json_template` fuzz target): scanning a tag for its closing
/// `}}` walked byte by byte and sliced the source at every byte, so a multi-byte character
/// inside a tag panicked ("byte index is not a char boundary").
#[test]
fn multibyte_characters_inside_a_tag_do_not_panic() {
    let engine = Engine::new();
    for src in [
        "{{ contactۂ }}",
        "{{ a | append: ۂ }}",
        "{% if ۂ %}x{% endif %}",
        r#"{"k{{ site.id }}": {{ steps.find ۂ }}, "e": "{{ é }}"}"#,
    ] {
        // Compiling may fail (not Liquid); it must not panic.
        let _ = engine.text(src);
        let _ = engine.body(src);
    }
    // The fuzzer's input, as found.
    let found = b"{\"k{{ siteid.id }}\": {{ steps.finXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXYXXXXXXXXXXXXXXXXXXXXXXXXXXXXX iXXXXXXXXXXX\x18\x00XXXXXXXet\x0e\x00\x00\x00\x00\x00\x00\x00s.API_KEY\xdb\x82}\"}";
    let _ = engine.body(std::str::from_utf8(found).expect("UTF-8"));
    // And a tag holding one still reads its variables.
    let t = engine
        .text("{{ contact.first_name | append: \"é\" }}")
        .expect("compiles");
    assert_eq!(
        t.variables(),
        [vec!["contact".to_owned(), "first_name".to_owned()]]
    );
}

#[test]
fn templates_of_one_source_are_compiled_once_and_freed_with_their_last_user() {
    let engine = Engine::new();
    let a = engine.text("{{ contact.email }}").expect("compiles");
    let b = engine
        .clone()
        .text("{{ contact.email }}")
        .expect("compiles");
    assert!(Arc::ptr_eq(&a.0, &b.0), "one compiled template, shared");
    let other = engine.text("{{ event.id }}").expect("compiles");
    assert!(!Arc::ptr_eq(&a.0, &other.0));
    let literal = engine.text("application/json").expect("a literal");
    assert!(Arc::ptr_eq(
        &literal.0,
        &engine.text("application/json").expect("a literal").0
    ));
    let weak = Arc::downgrade(&a.0);
    drop((a, b));
    assert_eq!(
        weak.strong_count(),
        0,
        "the engine holds no strong reference"
    );
    let again = engine.text("{{ contact.email }}").expect("compiles again");
    assert_eq!(again.source(), "{{ contact.email }}");
    // A condition's template is shared the same way.
    let c1 = engine
        .condition("contact.email != blank")
        .expect("compiles");
    let c2 = engine
        .condition("contact.email != blank")
        .expect("compiles");
    assert!(Arc::ptr_eq(&c1.template.0, &c2.template.0));
}

/// A partly parsed event renders every template exactly as the whole event does: the fields the
/// template names come from the part, the others (a name the scan could not see, a whole-root
/// read) from the whole, parsed on demand.
#[test]
fn a_partial_event_renders_as_the_whole_one() {
    let engine = Engine::new();
    let whole = event();
    let text = whole.to_string();
    let (steps, secrets) = (steps(), secrets());
    let sources = [
        "{{ contact.email }} {{ event.id }} {{ event.type }} {{ data.tags | join: ',' }}",
        "{{ gameplay.score }} {{ card.name }}",
        "{% if site.id == 'site_9' %}{{ site.url }}{% endif %}{{ missing.deep }}",
        // (A whole object renders through a Liquid object, whose key order is its hash map's.)
        "{{ event.occurred_at }}|{{ workspace.name }}|{{ event | size }}",
        "{% for t in data.tags %}{{ forloop.index }}{{ t }}{% endfor %}{{ form_fields.company }}",
    ];
    for src in sources {
        let template = engine.text(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let mut named = Vec::new();
        event_fields(template.variables(), &mut named);
        // As a worker reads it: the action's names plus ALWAYS; and with no names of its own.
        for extra in [named.as_slice(), &[]] {
            let mut names = PartialEvent::ALWAYS.to_vec();
            names.extend(extra.iter().map(|n| &**n));
            let fields = PartialEvent::parse_fields(&text, extra).expect("an object");
            for (key, value) in fields.as_object().into_iter().flatten() {
                assert!(names.contains(&key.as_str()), "{key} was not named");
                assert_eq!(Some(value), whole.get(key));
            }
            let partial = PartialEvent::new(&fields, extra, &text);
            let as_part = Context {
                event: EventRef::Partial(&partial),
                steps: &steps,
                secrets: SecretsView::Real(&secrets),
            };
            let expected = template.render(&ctx(&whole, &steps, &secrets));
            assert_eq!(
                template.render(&as_part).map_err(|e| e.to_string()),
                expected.map_err(|e| e.to_string()),
                "{src} with {names:?}"
            );
        }
    }
}

#[test]
fn the_fields_a_template_names() {
    let engine = Engine::new();
    let template = engine
        .text("{{ contact.email }}{{ event.id }}{{ steps.find_lead.Id }}{{ secrets.T }}{% for t in data.tags %}{{ t }}{% endfor %}{{ event }}")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut named = Vec::new();
    event_fields(template.variables(), &mut named);
    named.sort_unstable();
    named.dedup();
    let named: Vec<&str> = named.iter().map(|n| &**n).collect();
    assert_eq!(named, ["contact", "data", "id", "occurred_at", "type"]);
}

/// A repeated key keeps its last value in its first place, as in a parsed tree; a text that is
/// not one object is not read in part.
#[test]
fn fields_parse_as_a_tree_does() {
    let text =
        r#"{"contact":{"a":1},"id":"e","x":[1,{"contact":2}],"contact":{"b":2},"d\u0061ta":3}"#;
    // ALWAYS holds contact and id.
    let named: [Box<str>; 1] = ["data".into()];
    let names = ["contact", "data", "id"];
    let fields = PartialEvent::parse_fields(text, &named).expect("an object");
    let tree: Value = serde_json::from_str(text).expect("valid");
    let expected: Map<String, Value> = tree
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(fields, Value::Object(expected));
    assert_eq!(
        serde_json::to_string(&fields).ok().as_deref(),
        Some(r#"{"contact":{"b":2},"id":"e","data":3}"#)
    );
    for not_one_object in ["[1]", "{\"id\":1} {}", "{\"id\":", "\"s\""] {
        assert_eq!(PartialEvent::parse_fields(not_one_object, &named), None);
    }
}
