//! The JSON-body template compiler and renderer on arbitrary sources, rendered against a fixed
//! event: compiling may fail, rendering may fail, but neither may panic, and a body recognised as
//! JSON must always render to valid JSON.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::template::{Context, Engine, SecretsView};

static ENGINE: LazyLock<Engine> = LazyLock::new(Engine::new);
static EVENT: LazyLock<Value> = LazyLock::new(|| {
    serde_json::json!({
        "event": { "id": "evt_1", "type": "Form.Submitted", "occurred_at": "2026-11-26T18:00:00Z" },
        "workspace": { "id": "ws_1", "name": "Demo \"Brand\"" },
        "site": { "id": "site_9", "name": "Summer\nPromo", "url": "https://promo.example.com" },
        "contact": { "id": "ct_7", "email": "ana@example.com", "first_name": "Ana</script>",
                     "phone": null, "optin": true, "tags": ["a", "b\u{0}", 3, 4.5, null],
                     "properties": { "nested": { "deep": [1, { "x": "\u{2028}" }] } } },
        "form_fields": { "company": "Acme \\ Co", "email": "ana@example.com", "age": 42 },
        "data": {}
    })
});
static STEPS: LazyLock<Value> =
    LazyLock::new(|| serde_json::json!({ "find": { "records": [{ "Id": "001" }], "total": 1 } }));
static SECRETS: LazyLock<HashMap<String, String>> =
    LazyLock::new(|| HashMap::from([("API_KEY".to_owned(), "s3cr\"et".to_owned())]));

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(body) = ENGINE.body(src) else {
        return;
    };
    let ctx = Context {
        event: &EVENT,
        steps: &STEPS,
        secrets: SecretsView::Real(&SECRETS),
    };
    if let Ok(text) = body.render(&ctx)
        && body.is_json()
    {
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        assert!(
            parsed.is_ok(),
            "a JSON body rendered invalid JSON: {text:?}"
        );
    }
    let _ = body.render_value(&ctx);
});
