//! Sharing of compiled values by their text: thousands of workflows repeat the same few
//! templates (`{{ event.id }}`, a condition) and endpoints, and a compiled one costs far more than
//! its text. Entries are weak, so that a reload that drops the last workflow holding one frees it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// Values by the text they were compiled from, while anything holds them.
pub struct Interned<T> {
    /// By text.
    values: HashMap<String, Weak<T>>,
    /// Dead entries are swept once the map has grown to this size.
    sweep_at: usize,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            values: HashMap::new(),
            sweep_at: Self::SWEEP_FLOOR,
        }
    }
}

impl<T> Interned<T> {
    /// Entries at least, before the first sweep.
    const SWEEP_FLOOR: usize = 1024;

    /// The value compiled from `text`, if something still holds it.
    pub fn get(&self, text: &str) -> Option<Arc<T>> {
        self.values.get(text).and_then(Weak::upgrade)
    }

    /// Shares `value`, compiled from `text`.
    pub fn insert(&mut self, text: String, value: T) -> Arc<T> {
        if self.values.len() >= self.sweep_at {
            self.values.retain(|_, value| value.strong_count() > 0);
            self.sweep_at = (self.values.len() * 2).max(Self::SWEEP_FLOOR);
        }
        let value = Arc::new(value);
        self.values.insert(text, Arc::downgrade(&value));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_text_while_held() {
        let mut interned = Interned::default();
        let one = interned.insert("a".to_owned(), 1);
        assert!(interned.get("a").is_some_and(|a| Arc::ptr_eq(&a, &one)));
        drop(one);
        assert!(interned.get("a").is_none(), "freed once nothing holds it");
        for i in 0..Interned::<i32>::SWEEP_FLOOR + 1 {
            drop(interned.insert(i.to_string(), 0));
        }
        assert!(interned.values.len() < 10, "dead entries are swept");
    }
}
