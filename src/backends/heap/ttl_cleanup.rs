//! The heap backend's incremental cleanup of expired entries in states with a time to live.
//!
//! Expired entries nobody reads again would stay in memory for ever. Every access to a TTL
//! state earns the state a credit of [`HeapBackend::set_ttl_cleanup_entries`] checks
//! (default [`DEFAULT_CLEANUP_ENTRIES`]); once the credit covers the next key group's entry
//! count, that key group is cleaned (its expired values, list elements and map entries
//! dropped) and the credit pays for every value, element and entry checked, so a key group of
//! long lists costs its elements, not its entries. Key groups are visited in a cycle, so
//! everything stored is checked once per `stored ÷ credit per access` accesses: memory follows
//! the live state at a cost per access bounded on average, one key group's scan at a time.
//!
//! [`HeapBackend::set_ttl_cleanup_entries`]: super::HeapBackend::set_ttl_cleanup_entries

use std::any::Any;

use super::table::{AnyTable, Table};
use crate::model::state::StateKey;
use crate::model::state::ttl::{ExpiringState, StateTtlConfig};

/// Entries of credit each access to a TTL state earns by default.
pub const DEFAULT_CLEANUP_ENTRIES: usize = 1;

/// The cleanup of one state.
pub(crate) struct TtlCleanup {
    pub(crate) ttl: StateTtlConfig,
    /// Cleans one key group; returns how many values, list elements and map entries it checked.
    clean_group: fn(&mut dyn AnyTable, usize, &StateTtlConfig, u64) -> usize,
    group_len: fn(&dyn AnyTable, usize) -> usize,
    next_group: usize,
    /// Entries the next key group had when last looked at: no work until the credit covers it.
    needed: i64,
    /// Checks earned and not yet spent; negative after a key group of long lists or large
    /// maps cost more than its entry count promised, so that the average stays bounded.
    credit: i64,
}

impl TtlCleanup {
    /// The cleanup of a table holding `S`, keyed by `(K, N)`.
    pub(crate) fn new<K: StateKey, N: StateKey, S: ExpiringState>(ttl: StateTtlConfig) -> Self {
        Self {
            ttl,
            clean_group: clean_group::<K, N, S>,
            group_len: group_len::<K, N, S>,
            next_group: 0,
            needed: 1,
            credit: 0,
        }
    }

    /// One access's step over `table` (of `groups` key groups): earns `checks`, and cleans the
    /// next key groups while the credit covers them (at most a few per step).
    #[inline]
    pub(crate) fn step(
        &mut self,
        table: &mut dyn AnyTable,
        groups: usize,
        checks: usize,
        now: impl Fn(&StateTtlConfig) -> u64,
    ) {
        self.credit = self.credit.saturating_add(checks as i64);
        if self.credit >= self.needed {
            self.clean(table, groups, now(&self.ttl));
        }
    }

    #[cold]
    fn clean(&mut self, table: &mut dyn AnyTable, groups: usize, now: u64) {
        if groups == 0 {
            return;
        }
        // Empty key groups cost nothing; a bound keeps one step short all the same.
        for _ in 0..groups.min(16) {
            let len = (self.group_len)(table, self.next_group) as i64;
            if len > self.credit {
                self.needed = len;
                return;
            }
            if len > 0 {
                let checked = (self.clean_group)(table, self.next_group, &self.ttl, now);
                self.credit -= checked as i64;
            }
            self.next_group = (self.next_group + 1) % groups;
            if self.credit <= 0 {
                break;
            }
        }
        self.needed = 1;
    }
}

fn typed<K: StateKey, N: StateKey, S: ExpiringState>(
    table: &mut dyn AnyTable,
) -> Option<&mut Table<K, N, S>> {
    let any: &mut dyn Any = table;
    any.downcast_mut()
}

fn clean_group<K: StateKey, N: StateKey, S: ExpiringState>(
    table: &mut dyn AnyTable,
    group: usize,
    ttl: &StateTtlConfig,
    now: u64,
) -> usize {
    let mut checked = 0;
    if let Some(table) = typed::<K, N, S>(table) {
        table
            .group_mut(group)
            .retain(|_, stored| !stored.drop_expired(ttl, now, &mut checked));
    }
    checked
}

fn group_len<K: StateKey, N: StateKey, S: ExpiringState>(
    table: &dyn AnyTable,
    group: usize,
) -> usize {
    let any: &dyn Any = table;
    any.downcast_ref::<Table<K, N, S>>()
        .map_or(0, |t| t.group(group).len())
}
