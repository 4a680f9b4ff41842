//! How a state held as typed values drops what has expired: the heap backend's incremental
//! cleanup calls this on the entries it visits.

use crate::model::state::ttl::{StateTtlConfig, TtlValue};
use crate::model::state::{Cell, ListCell, MapCell, StateKey, StateValue, StoredState};

/// A stored state with a time to live (what the `*_with_ttl` registrations store).
pub trait ExpiringState: StoredState {
    /// Drops the expired parts at `now` (the value, list elements, map entries) and adds how
    /// many it checked to `checked`; returns whether nothing is left, so the entry can go.
    fn drop_expired(&mut self, ttl: &StateTtlConfig, now: u64, checked: &mut usize) -> bool;
}

impl<V: StateValue> ExpiringState for Cell<TtlValue<V>> {
    fn drop_expired(&mut self, ttl: &StateTtlConfig, now: u64, checked: &mut usize) -> bool {
        *checked += 1;
        ttl.expired(self.0.timestamp, now)
    }
}

impl<T: StateValue> ExpiringState for ListCell<TtlValue<T>> {
    fn drop_expired(&mut self, ttl: &StateTtlConfig, now: u64, checked: &mut usize) -> bool {
        *checked += self.0.len().max(1);
        if self.0.iter().any(|e| ttl.expired(e.timestamp, now)) {
            self.0.retain(|e| !ttl.expired(e.timestamp, now));
        }
        self.0.is_empty()
    }
}

impl<UK: StateKey, UV: StateValue> ExpiringState for MapCell<UK, TtlValue<UV>> {
    fn drop_expired(&mut self, ttl: &StateTtlConfig, now: u64, checked: &mut usize) -> bool {
        *checked += self.0.len().max(1);
        if self.0.values().any(|e| ttl.expired(e.timestamp, now)) {
            self.0.retain(|_, e| !ttl.expired(e.timestamp, now));
        }
        self.0.is_empty()
    }
}
