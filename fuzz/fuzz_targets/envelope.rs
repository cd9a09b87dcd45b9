//! The envelope parser (`Event::parse`) on arbitrary bytes: it must return `Ok` or a rejection,
//! never panic, and an accepted event must be an object carrying its id and type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::event::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::parse(data, 262_144) {
        let _ = event.card_id();
        let _ = event.site_id();
    }
});
