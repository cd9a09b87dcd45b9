//! The bench's events: Komo-shaped `Gameplay.DataCaptured` envelopes of about 1 KiB, each carrying
//! its sequence number and publish time in `data`, which the workflow body echoes to the sink.

use std::time::{SystemTime, UNIX_EPOCH};

/// The size the events are padded to.
const TARGET_BYTES: usize = 1024;

/// Builds event bodies.
pub struct EventFactory {
    /// Makes event ids unique to the run.
    run: String,
    /// Filler in `data.note` that brings an event to about [`TARGET_BYTES`].
    pad: String,
}

impl EventFactory {
    /// A factory for the run `run` (its prefix).
    pub fn new(run: &str) -> EventFactory {
        let mut factory = EventFactory {
            run: run.to_owned(),
            pad: String::new(),
        };
        let size = factory.body(99_999, now_us()).len();
        factory.pad = "x".repeat(TARGET_BYTES.saturating_sub(size));
        factory
    }

    /// The size of a typical event, in bytes.
    pub fn typical_size(&self) -> usize {
        self.body(99_999, now_us()).len()
    }

    /// Event number `seq`, stamped as published at `sent_at_us` (µs since the Unix epoch).
    pub fn body(&self, seq: u64, sent_at_us: u64) -> Vec<u8> {
        let occurred_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (run, pad) = (&self.run, &self.pad);
        format!(
            concat!(
                r#"{{"id":"evt_{run}_{seq}","type":"Gameplay.DataCaptured","occurred_at":"{occurred_at}","#,
                r#""workspace":{{"id":"ws_bench","name":"Bench Brand"}},"#,
                r#""site":{{"id":"site_9","name":"Summer Promo","url":"https://promo.example.com"}},"#,
                r#""card":{{"id":"card_42","name":"Spin to Win","type":"SpinToWin"}},"#,
                r#""contact":{{"id":"ct_{seq}","email":"player{seq}@example.com","first_name":"Ana","#,
                r#""last_name":"Silva","phone":null,"optin":true,"properties":{{"tier":"gold"}}}},"#,
                r#""form_fields":{{"company":"Acme","email":"player{seq}@example.com"}},"#,
                r#""gameplay":{{"id":"gp_{seq}","score":120,"completed":true,"duration_ms":53000}},"#,
                r#""data":{{"seq":{seq},"sent_at_us":{sent_at_us},"note":"{pad}"}}}}"#
            ),
            run = run,
            seq = seq,
            occurred_at = occurred_at,
            sent_at_us = sent_at_us,
            pad = pad,
        )
        .into_bytes()
    }
}

/// Microseconds since the Unix epoch (the clock the sink compares against: same machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
