//! A record as a pass reads it: the dead letter (its format is `delivery::dead_letter`, shared
//! with the worker that writes it) and the delivery tag that removes it.

use std::ops::Deref;

use crate::delivery::dead_letter::DeadLetter;

/// One dead-lettered action as a pass read it from the queue.
#[derive(Debug)]
pub struct Record {
    /// The delivery tag on the pass's channel, to ack it.
    pub(super) tag: u64,
    /// What the record says.
    pub(super) letter: DeadLetter,
}

/// A record reads as its dead letter (`record.connector()`, `record.body`); the tag is the
/// pass's business.
impl Deref for Record {
    type Target = DeadLetter;

    fn deref(&self) -> &DeadLetter {
        &self.letter
    }
}
