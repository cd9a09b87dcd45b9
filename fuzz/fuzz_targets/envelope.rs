//! The envelope parser (`Event::parse`) on arbitrary bytes: it must return `Ok` or a rejection,
//! never panic, and read exactly what parsing the whole tree and validating it reads (its routing
//! pass skips building the tree, so the two must not drift apart).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::event::{Event, MAX_DEPTH, Rejection, nesting_depth};

const LIMIT: usize = 262_144;

fuzz_target!(|data: &[u8]| {
    let parsed = Event::parse(data, LIMIT);
    if data.len() > LIMIT || nesting_depth(data) > MAX_DEPTH {
        assert!(parsed.is_err());
        return;
    }
    let tree = serde_json::from_slice::<Value>(data)
        .map_err(|e| Rejection::InvalidJson(e.to_string()))
        .and_then(Event::from_value);
    match (parsed, tree) {
        (Ok(a), Ok(b)) => {
            assert_eq!((&a.id, a.kind.name, &a.workspace), (&b.id, b.kind.name, &b.workspace));
            assert_eq!((a.card_id(), a.site_id()), (b.card_id(), b.site_id()));
            assert_eq!(a.body(), b.body());
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("the routing pass read {a:?}, the tree {b:?}"),
    }
});
