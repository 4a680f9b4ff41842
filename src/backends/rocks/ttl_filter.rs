//! RocksDB's compaction filter for states with a time to live: compactions drop the rows
//! (and list merge operands) whose every element has expired, so disk usage follows the live
//! state without anyone reading the expired rows.
//!
//! Every state's column family carries a filter factory from the start, bound to a slot that
//! says whether the state has a TTL: a column family's options are fixed when it is opened,
//! and whether its state has a TTL is known only from its record or its registration. Each
//! compaction run reads the slot and the clock once, when RocksDB creates its filter.
//!
//! The filter decides with the byte-level rule every snapshot writer uses
//! ([`row_expiry`]). A list row of which only some elements expired is kept whole: RocksDB's
//! filter can replace a value only with bytes that live for the whole process, so trimming is
//! left to reads and snapshots. Appends are merge operands of one element each, which the
//! filter sees one by one, so a list grown by appends loses its expired elements here too.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rocksdb::Options;
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};

use crate::model::state::StateKind;
use crate::model::state::ttl::rows::{RowExpiry, row_expiry};
use crate::model::state::ttl::{StateTtlConfig, TtlClock};

/// Whether one column family's state has a time to live.
type Slot = Arc<RwLock<Option<(StateKind, StateTtlConfig)>>>;

/// The slots of a backend's column families, and the clock their filters read.
#[derive(Default)]
pub(crate) struct TtlFilters {
    clock: TtlClock,
    slots: Mutex<HashMap<String, Slot>>,
}

impl TtlFilters {
    /// The clock the filters (and the backend's handles) measure on.
    pub(crate) fn clock(&self) -> &TtlClock {
        &self.clock
    }

    fn slot(&self, cf_name: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(cf_name.to_owned()).or_default())
    }

    /// Adds the filter of column family `cf_name` to its options.
    pub(crate) fn install(&self, options: &mut Options, cf_name: &str) {
        options.set_compaction_filter_factory(TtlFilterFactory {
            slot: self.slot(cf_name),
            clock: self.clock.clone(),
        });
    }

    /// Sets what the filter of `cf_name` drops: rows of a `kind` state expired under `ttl`, or
    /// nothing.
    pub(crate) fn set(&self, cf_name: &str, kind: StateKind, ttl: Option<StateTtlConfig>) {
        let slot = self.slot(cf_name);
        *slot.write().unwrap_or_else(PoisonError::into_inner) = ttl.map(|ttl| (kind, ttl));
    }
}

struct TtlFilterFactory {
    slot: Slot,
    clock: TtlClock,
}

const NAME: &CStr = c"statebackend-ttl";

impl CompactionFilterFactory for TtlFilterFactory {
    type Filter = TtlFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> TtlFilter {
        let rule = *self.slot.read().unwrap_or_else(PoisonError::into_inner);
        TtlFilter {
            rule: rule.map(|(kind, ttl)| (kind, ttl, self.clock.now(ttl.time))),
        }
    }

    fn name(&self) -> &CStr {
        NAME
    }
}

/// One compaction run's filter: the state's kind and TTL, and the time the run started.
struct TtlFilter {
    rule: Option<(StateKind, StateTtlConfig, u64)>,
}

impl CompactionFilter for TtlFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> Decision {
        match &self.rule {
            Some((kind, ttl, now)) => match row_expiry(*kind, ttl, *now, value) {
                RowExpiry::Expired => Decision::Remove,
                RowExpiry::Live | RowExpiry::Trimmed(_) => Decision::Keep,
            },
            None => Decision::Keep,
        }
    }

    fn name(&self) -> &CStr {
        NAME
    }
}
