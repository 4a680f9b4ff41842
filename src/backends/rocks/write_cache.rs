//! The write-back cache in front of RocksDB: recently used rows of every state, bounded in bytes.
//!
//! A state operation on RocksDB costs a memtable search, often a bloom filter and block cache
//! probe, and for every write a memtable insert that the next checkpoint's flush pays for again.
//! Most streaming workloads touch a hot set of keys over and over. The cache keeps the rows of
//! those keys in a hash table: a read of a cached row is a hash probe, a write replaces the
//! cached bytes and marks the row dirty, a list append extends them. Dirty rows reach RocksDB
//! in one `WriteBatch` when the cache evicts them and when the backend needs RocksDB to hold
//! everything: the synchronous part of a checkpoint, a savepoint's view, an iteration, a flush.
//! So a hot key updated a thousand times between two checkpoints is one memtable entry, not a
//! thousand, and the checkpoint's flush has that much less to write.
//!
//! What a row holds in the cache ([`Cached`]):
//! - `Present(bytes)`: the row's whole value, as RocksDB would store it;
//! - `Absent`: RocksDB has no such row (read and found missing, or deleted here);
//! - `Appended(bytes)`: list elements appended to a list whose stored value was not read; they
//!   reach RocksDB as a merge operand, so an append never reads.
//!
//! A cached list that only grew since RocksDB last had it (`Present`, clean, then appended to)
//! remembers how much of it RocksDB holds, and a write-back merges the appended tail: a long
//! list grown by small appends costs what was appended, not its whole length at every
//! write-back (a 32,000-element list grown by 30,000 appends of 41 bytes handed RocksDB
//! 22.9 GB that way; now 1.44 MB).
//!
//! A row lives in its slot: key and value in one buffer, inline up to [`INLINE`] bytes (a value
//! state's row: key group, key, namespace, value), on the heap beyond. A hit on a small row is a
//! hash-table probe and one slot, with no key box or value vector to chase, and costs no
//! allocation.
//!
//! Eviction is CLOCK (second chance): a hit sets a row's reference bit, the hand clears set
//! bits and evicts rows whose bit is clear. The bound counts what the cache allocates: every
//! row's key and value buffers, the slots array and the hash table (see [`WriteCache::charged`]).
//! Eviction writes first and forgets afterwards: a failed write leaves every row cached and
//! dirty, so nothing is lost.

use hashbrown::HashTable;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use crate::model::error::Result;

/// What the cache knows about one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cached {
    /// RocksDB has (or, when dirty, will have) no such row.
    Absent,
    /// The row's whole value.
    Present(Vec<u8>),
    /// Bytes to append to the stored value, which the cache has not read (list state only).
    Appended(Vec<u8>),
}

impl Cached {
    /// The length of its bytes.
    pub(super) fn len(&self) -> usize {
        self.bytes().len()
    }

    fn kind(&self) -> Kind {
        match self {
            Cached::Absent => Kind::Absent,
            Cached::Present(_) => Kind::Present,
            Cached::Appended(_) => Kind::Appended,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Cached::Absent => &[],
            Cached::Present(bytes) | Cached::Appended(bytes) => bytes,
        }
    }
}

/// A cached row as a read sees it: [`Cached`], borrowed from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CachedRef<'a> {
    /// See [`Cached::Absent`].
    Absent,
    /// See [`Cached::Present`].
    Present(&'a [u8]),
    /// See [`Cached::Appended`].
    Appended(&'a [u8]),
}

#[cfg(test)]
impl CachedRef<'_> {
    /// An owned copy.
    pub(super) fn to_cached(self) -> Cached {
        match self {
            CachedRef::Absent => Cached::Absent,
            CachedRef::Present(bytes) => Cached::Present(bytes.to_vec()),
            CachedRef::Appended(bytes) => Cached::Appended(bytes.to_vec()),
        }
    }
}

/// What a slot's value is (the [`Cached`] variant, its bytes kept in the slot's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Absent,
    Present,
    Appended,
    /// A row dropped as expired while changed ([`WriteCache::drop_expired`]): a deletion, read
    /// as absent, that leaves the cache once written back instead of staying as a known
    /// absence.
    Expired,
}

/// A cursor of [`WriteCache::drop_expired`]: the slot it looked at last, and the bytes of
/// looking it has left.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sweep {
    hand: usize,
    credit: usize,
}

/// Bytes of key and value a slot holds inline; a longer row's buffer is on the heap.
pub(super) const INLINE: usize = 24;

/// A row's key followed by its value.
type RowBytes = SmallVec<[u8; INLINE]>;

/// What caching a row of `key_len` and `value_len` bytes costs: its slot and table entry
/// ([`ROW_OVERHEAD`]), and its buffer if the row does not fit inline.
pub(super) fn row_cost(key_len: usize, value_len: usize) -> usize {
    let len = key_len + value_len;
    ROW_OVERHEAD + if len > INLINE { len } else { 0 }
}

/// What reaches RocksDB for one dirty row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowWrite<'a> {
    /// Delete the row.
    Delete,
    /// Put the row's whole value.
    Put(&'a [u8]),
    /// Merge these bytes into the stored value (list appends): elements appended to a list the
    /// cache never read, or the appended tail of a cached list whose stored value is the rest.
    Merge(&'a [u8]),
}

/// A changed row of a map as an iteration applies it: row key, and value (`None`: deleted).
pub(super) type MapChange = (Box<[u8]>, Option<Box<[u8]>>);

/// A dirty row as the cache hands it to RocksDB: state index, row key, what to write.
pub(super) type DirtyRow<'a> = (u32, &'a [u8], RowWrite<'a>);

/// The end of the free-slot list.
const NO_SLOT: u32 = u32::MAX;

/// What a row costs besides its key and value buffers: its slot and a hash-table bucket (a
/// `u32` and a control byte). The eviction target counts rows at this cost; the bound itself
/// counts the arrays' real capacities ([`WriteCache::charged`]).
pub(super) const ROW_OVERHEAD: usize =
    std::mem::size_of::<Slot>() + 2 * std::mem::size_of::<u32>() + 1;

/// What a map's list of dirty rows costs per map besides its table bucket: its vector's
/// allocation header; and per row, its index with the vector's spare capacity (counted in
/// [`WriteCache::charged`]).
const GROUP_OVERHEAD: usize = 32;
const GROUP_ENTRY: usize = 2 * std::mem::size_of::<u32>();

/// One cached row.
struct Slot {
    hash: u64,
    /// The row key, then the value.
    bytes: RowBytes,
    state: u32,
    key_len: u32,
    /// For a dirty `Present` list row changed by appends only: how many leading bytes of the
    /// value RocksDB holds already, so that a write-back merges the appended tail instead of
    /// putting the whole list again (a long list grown by small appends would otherwise be
    /// rewritten in full at every write-back: quadratic in its length).
    stored_prefix: Option<u32>,
    kind: Kind,
    /// For a map row: the length of its map's prefix (key group, key, namespace) in the row
    /// key, by which its changes are grouped per map; 0 otherwise.
    group_len: u16,
    /// The slot has an entry in its map's group (kept when the row is written, until the
    /// group is consumed; see `WriteCache::groups`).
    grouped: bool,
    dirty: bool,
    /// The slot has an entry in the dirty list (kept when the row is evicted: the entry then
    /// stands for whatever row the slot holds next).
    listed: bool,
    referenced: bool,
    live: bool,
}

impl Slot {
    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }

    /// The row as a read sees it.
    fn cached(&self) -> CachedRef<'_> {
        match self.kind {
            Kind::Absent | Kind::Expired => CachedRef::Absent,
            Kind::Present => CachedRef::Present(self.value()),
            Kind::Appended => CachedRef::Appended(self.value()),
        }
    }

    /// Bytes of its buffer on the heap (0 while inline).
    fn heap_bytes(&self) -> usize {
        if self.bytes.spilled() {
            self.bytes.capacity()
        } else {
            0
        }
    }

    /// Replaces the value.
    fn set_value(&mut self, kind: Kind, value: &[u8]) {
        self.bytes.truncate(self.key_len as usize);
        self.bytes.extend_from_slice(value);
        if self.bytes.spilled() && self.bytes.len() <= INLINE {
            // Back inline: the heap buffer is given back.
            self.bytes.shrink_to_fit();
        }
        self.kind = kind;
    }

    /// What a write-back of this row hands to RocksDB.
    fn row_write(&self) -> RowWrite<'_> {
        match (self.kind, self.stored_prefix) {
            (Kind::Absent | Kind::Expired, _) => RowWrite::Delete,
            (Kind::Present, Some(stored)) => RowWrite::Merge(&self.value()[stored as usize..]),
            (Kind::Present, None) => RowWrite::Put(self.value()),
            (Kind::Appended, _) => RowWrite::Merge(self.value()),
        }
    }

    /// What the row counts against the dirty limit while dirty: its key, and the value bytes a
    /// write-back would hand over (only the appended tail of a list whose stored value is the
    /// rest, or its whole value).
    fn dirty_cost(&self) -> usize {
        self.key_len as usize
            + match (self.kind, self.stored_prefix) {
                (Kind::Present, Some(stored)) => self.value().len() - stored as usize,
                _ => self.value().len(),
            }
    }
}

/// Counters of a backend's write-back cache, for monitoring and for the benchmarks' hit rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCacheStats {
    /// The bound, in bytes ([`crate::rocks::RocksDbOptions::write_cache_bytes`]).
    pub capacity_bytes: usize,
    /// Bytes the cache holds now: row keys and values, slots and hash table.
    pub charged_bytes: usize,
    /// Rows cached.
    pub rows: usize,
    /// Rows cached with changes RocksDB does not have yet.
    pub dirty_rows: usize,
    /// Their key and value bytes (bounded by
    /// [`crate::rocks::RocksDbOptions::write_cache_dirty_bytes`] between operations).
    pub dirty_bytes: usize,
    /// Reads answered by the cache.
    pub hits: u64,
    /// Reads that went to RocksDB.
    pub misses: u64,
    /// Rows evicted to keep the bound.
    pub evicted_rows: u64,
    /// Dirty rows written to RocksDB (by eviction, by write-back over the dirty limit, or by a
    /// flush).
    pub written_rows: u64,
    /// Value bytes those writes handed to RocksDB (puts and merge operands).
    pub written_bytes: u64,
}

impl WriteCacheStats {
    /// Hits over all reads; 0 before the first read.
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// The cache: rows in a slot array, found through a hash table of slot indices.
pub(super) struct WriteCache {
    capacity: usize,
    /// Heap bytes of the live rows' buffers (rows too long to be inline; the slots and table
    /// are added in `charged`).
    row_bytes: usize,
    table: HashTable<u32>,
    slots: Vec<Slot>,
    /// The first free slot ([`NO_SLOT`] if none); a free slot's `state` holds the next one.
    free_head: u32,
    hand: usize,

    rows: usize,
    dirty: usize,
    /// Key and value bytes of the dirty rows.
    dirty_bytes: usize,
    /// Above this many dirty bytes, the oldest dirty rows are written back (and stay cached).
    dirty_limit: usize,
    /// Slots with dirty rows, in the order they became dirty (a slot at most once, see
    /// `Slot::listed`; entries of slots evicted or written since are skipped when reached).
    dirty_list: VecDeque<u32>,
    /// The dirty rows of each map, by the hash of (state, map prefix): what an iteration over
    /// one map needs written first, found without scanning every dirty row. Entries are
    /// removed lazily: a group may list rows written since, or (after a hash collision or a
    /// slot's reuse) rows of another map, which a flush skips; `grouped_entries` bounds them.
    groups: hashbrown::HashMap<u64, Vec<u32>>,
    /// Entries in `groups`.
    grouped_entries: usize,
    /// The map prefix length of the row the current operation works on (0: not a map row):
    /// set by the backend around each operation on a map row.
    pub(super) group_len: u16,
    hasher: hashbrown::DefaultHashBuilder,
    stats: WriteCacheStats,
    /// A row key buffer the backend borrows per operation instead of allocating one.
    pub(super) scratch: Vec<u8>,
}

impl WriteCache {
    /// An empty cache holding at most `capacity` bytes, of which at most `dirty_limit` bytes
    /// of changed rows before the oldest are written back.
    pub(super) fn new(capacity: usize, dirty_limit: usize) -> Self {
        Self {
            capacity,
            dirty_limit,
            dirty_bytes: 0,
            dirty_list: VecDeque::new(),
            groups: hashbrown::HashMap::new(),
            grouped_entries: 0,
            group_len: 0,
            row_bytes: 0,
            table: HashTable::new(),
            slots: Vec::new(),
            free_head: NO_SLOT,
            hand: 0,

            rows: 0,
            dirty: 0,
            hasher: hashbrown::DefaultHashBuilder::default(),
            stats: WriteCacheStats::default(),
            scratch: Vec::new(),
        }
    }

    /// Bytes the cache holds: every live row's key and value buffers, the slot array (free
    /// slots included) and the hash table's buckets (a `u32` and a control byte each). The
    /// scratch buffer (one row key, lent out during an operation) is not counted, like the
    /// other buffers an operation holds while it runs.
    pub(super) fn charged(&self) -> usize {
        self.row_bytes
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.table.allocation_size()
            + self.dirty_list.capacity() * std::mem::size_of::<u32>()
            + self.groups.allocation_size()
            + self.groups.len() * GROUP_OVERHEAD
            + self.grouped_entries * GROUP_ENTRY
    }

    /// The counters, with the current sizes.
    pub(super) fn stats(&self) -> WriteCacheStats {
        WriteCacheStats {
            capacity_bytes: self.capacity,
            charged_bytes: self.charged(),
            rows: self.rows,
            dirty_rows: self.dirty,
            dirty_bytes: self.dirty_bytes,
            ..self.stats
        }
    }

    fn hash(&self, state: u32, key: &[u8]) -> u64 {
        self.hasher.hash_one((state, key))
    }

    fn find(&self, hash: u64, state: u32, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                let s = &slots[i as usize];
                s.state == state && s.key() == key
            })
            .copied()
    }

    /// The hash of a map: its state and prefix.
    fn group_hash(&self, state: u32, prefix: &[u8]) -> u64 {
        self.hasher.hash_one((state, prefix, "group"))
    }

    /// The cached row `key` of state `state`, counted as a hit or a miss.
    pub(super) fn get(&mut self, state: u32, key: &[u8]) -> Option<CachedRef<'_>> {
        let hash = self.hash(state, key);
        match self.find(hash, state, key) {
            Some(i) => {
                self.stats.hits += 1;
                let slot = &mut self.slots[i as usize];
                slot.referenced = true;
                Some(slot.cached())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Caches what RocksDB holds for a row that missed (not dirty).
    pub(super) fn fill(&mut self, state: u32, key: &[u8], value: Cached) {
        self.set(state, key, value, false);
    }

    /// Records a change of a row (dirty until written).
    pub(super) fn write(&mut self, state: u32, key: &[u8], value: Cached) {
        self.set(state, key, value, true);
    }

    /// Appends `operand` to a list row: to its cached value if there is one, else to the
    /// operands waiting for a merge.
    pub(super) fn append(&mut self, state: u32, key: &[u8], operand: &[u8]) {
        let hash = self.hash(state, key);
        let Some(i) = self.find(hash, state, key) else {
            self.insert(hash, state, key, Cached::Appended(operand.to_vec()), true);
            return;
        };
        let slot = &mut self.slots[i as usize];
        slot.group_len = self.group_len;
        let before = (slot.heap_bytes(), slot.dirty_cost());
        match slot.kind {
            Kind::Present => {
                if !slot.dirty {
                    // RocksDB holds exactly this value: only what follows needs writing.
                    slot.stored_prefix = u32::try_from(slot.value().len()).ok();
                }
                slot.bytes.extend_from_slice(operand);
            }
            Kind::Appended => slot.bytes.extend_from_slice(operand),
            Kind::Absent | Kind::Expired => slot.set_value(Kind::Present, operand),
        }
        slot.referenced = true;
        self.value_changed(i, before, true);
    }

    /// Accounts for slot `i`'s value having changed from `before` (its heap bytes and dirty
    /// cost), and marks the row dirty if `dirty`.
    fn value_changed(&mut self, i: u32, before: (usize, usize), dirty: bool) {
        let slot = &mut self.slots[i as usize];
        let after = slot.heap_bytes();
        self.row_bytes = self.row_bytes - before.0 + after;
        if slot.dirty {
            self.dirty_bytes = self.dirty_bytes - before.1 + slot.dirty_cost();
        } else if dirty {
            slot.dirty = true;
            self.dirty += 1;
            self.dirty_bytes += slot.dirty_cost();
            if !slot.listed {
                slot.listed = true;
                self.dirty_list.push_back(i);
            }
            if self.group(i) && self.grouped_entries > 2 * self.dirty + 4096 {
                self.regroup();
            }
        }
    }

    /// Adds dirty map row `i` to its map's group unless it is there; whether it was added.
    fn group(&mut self, i: u32) -> bool {
        let slot = &mut self.slots[i as usize];
        if slot.group_len == 0 || slot.grouped {
            return false;
        }
        slot.grouped = true;
        let prefix = &slot.key()[..slot.group_len as usize];
        let hash = self.hasher.hash_one((slot.state, prefix, "group"));
        self.groups.entry(hash).or_default().push(i);
        self.grouped_entries += 1;
        true
    }

    /// Rebuilds the groups from the dirty rows: drops the entries of rows written since, and
    /// of slots reused by other rows.
    fn regroup(&mut self) {
        for i in self.groups.drain().flat_map(|(_, rows)| rows) {
            self.slots[i as usize].grouped = false;
        }
        self.grouped_entries = 0;
        self.group_dirty_rows();
    }

    /// Groups every dirty map row that is not grouped.
    fn group_dirty_rows(&mut self) {
        for position in 0..self.dirty_list.len() {
            let i = self.dirty_list[position];
            let slot = &self.slots[i as usize];
            if slot.live && slot.dirty {
                self.group(i);
            }
        }
    }

    /// Marks slot `i` clean, its changes written.
    fn mark_clean(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        if slot.dirty {
            self.dirty_bytes -= slot.dirty_cost();
            slot.dirty = false;
            slot.stored_prefix = None;
            self.dirty -= 1;
            // Its group entry stays (removed lazily).
        }
    }

    fn set(&mut self, state: u32, key: &[u8], value: Cached, dirty: bool) {
        let hash = self.hash(state, key);
        match self.find(hash, state, key) {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                let before = (slot.heap_bytes(), slot.dirty_cost());
                slot.set_value(value.kind(), value.bytes());
                slot.group_len = self.group_len;
                // The whole value is new: a write-back puts it.
                slot.stored_prefix = None;
                slot.referenced = true;
                self.value_changed(i, before, dirty);
            }
            None => self.insert(hash, state, key, value, dirty),
        }
    }

    fn insert(&mut self, hash: u64, state: u32, key: &[u8], value: Cached, dirty: bool) {
        let mut bytes = RowBytes::with_capacity(key.len() + value.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value.bytes());
        let slot = Slot {
            hash,
            bytes,
            state,
            key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
            kind: value.kind(),
            group_len: self.group_len,
            grouped: false,
            dirty: false,
            stored_prefix: None,
            listed: false,
            // A new row has not been used twice yet: the first sweep may take it.
            referenced: false,
            live: true,
        };
        let index = match self.free_head {
            NO_SLOT => {
                if self.slots.len() == self.slots.capacity() {
                    // Grow by a quarter, not by doubling: the slots count towards the bound,
                    // and a doubling would take half of a small cache at once.
                    self.slots.reserve_exact((self.slots.len() / 4).max(16));
                }
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
            free => {
                self.free_head = self.slots[free as usize].state;
                let listed = self.slots[free as usize].listed;
                self.slots[free as usize] = Slot { listed, ..slot };
                free
            }
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, index, |&i| slots[i as usize].hash);
        self.rows += 1;
        self.value_changed(index, (0, 0), dirty);
    }

    /// Forgets row `key` of state `state` (its RocksDB row was deleted behind the cache). The
    /// row must not be dirty: flush first.
    pub(super) fn forget(&mut self, state: u32, key: &[u8]) {
        let hash = self.hash(state, key);
        if let Some(i) = self.find(hash, state, key) {
            debug_assert!(!self.slots[i as usize].dirty, "forgetting a dirty row");
            self.remove(i);
        }
    }

    /// Earns `budget` bytes of credit and looks at the next slots (in a cycle over all of
    /// them) while it lasts, each costing its value's bytes, since judging a list scans its
    /// elements: drops each row that `expired(state, value)` judges expired (a state with a
    /// time to live). A clean row leaves the cache, RocksDB's copy being older and expired
    /// too; a changed row becomes a dirty deletion, so its write-back removes what RocksDB
    /// holds; appended elements not yet written leave without being written. Returns how many
    /// rows it dropped.
    /// `sweep` is the caller's cursor: one per state, so that each state's sweep covers every
    /// slot whatever other states' accesses do.
    pub(super) fn drop_expired(
        &mut self,
        sweep: &mut Sweep,
        budget: usize,
        expired: impl Fn(u32, &[u8]) -> bool,
    ) -> usize {
        let mut dropped = 0;
        sweep.credit = sweep.credit.saturating_add(budget);
        for _ in 0..self.slots.len() {
            let next = (sweep.hand + 1) % self.slots.len();
            let cost = self.slots[next].value().len().max(8);
            if cost > sweep.credit {
                break;
            }
            sweep.credit -= cost;
            sweep.hand = next;
            let i = next as u32;
            let slot = &self.slots[i as usize];
            let judged = matches!(slot.kind, Kind::Present | Kind::Appended);
            if !slot.live || !judged || !expired(slot.state, slot.value()) {
                continue;
            }
            dropped += 1;
            match (slot.dirty, slot.kind) {
                (true, Kind::Present) => {
                    let slot = &mut self.slots[i as usize];
                    let before = (slot.heap_bytes(), slot.dirty_cost());
                    slot.set_value(Kind::Expired, &[]);
                    slot.stored_prefix = None;
                    self.value_changed(i, before, true);
                }
                _ => self.remove(i),
            }
        }
        dropped
    }

    /// Removes slot `i` from the table and frees it.
    fn remove(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        let hash = slot.hash;
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        self.mark_clean(i);
        let slot = &mut self.slots[i as usize];
        self.row_bytes -= slot.heap_bytes();
        slot.live = false;
        slot.bytes = RowBytes::new();
        slot.key_len = 0;
        slot.kind = Kind::Absent;
        slot.state = self.free_head;
        self.free_head = i;
        self.rows -= 1;
    }

    /// Writes every dirty row through `write` (one call with all of them), then marks them
    /// clean. Rows of appended elements are forgotten instead: RocksDB merges them into a value
    /// the cache never read. Nothing changes if `write` fails. The work is proportional to the
    /// dirty rows, not to the cache.
    pub(super) fn flush(
        &mut self,
        write: impl FnOnce(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        let count = self.dirty_list.len();
        self.write_back(count, write)?;
        // Nothing is dirty: no group is needed (and their table is given back).
        for i in std::mem::take(&mut self.groups).into_values().flatten() {
            self.slots[i as usize].grouped = false;
        }
        self.grouped_entries = 0;
        Ok(())
    }

    /// [`WriteCache::flush`] for the rows of state `state` whose key starts with `prefix` only
    /// (before an iteration over one map, with the map's prefix, or over the whole state, with
    /// an empty one): the other rows stay dirty in the cache. For a map's prefix (`map` true),
    /// the work is proportional to the map's rows changed since it was last flushed, found in
    /// its group; otherwise to the dirty rows of every state.
    pub(super) fn flush_prefix(
        &mut self,
        state: u32,
        prefix: &[u8],
        map: bool,
        write: impl FnOnce(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        let matches = |s: &Slot| {
            s.live
                && s.state == state
                && s.key().starts_with(prefix)
                && (!map || usize::from(s.group_len) == prefix.len())
        };
        let dirty: Vec<u32> = if map {
            let hash = self.group_hash(state, prefix);
            let Some(mut rows) = self.groups.remove(&hash) else {
                return Ok(());
            };
            self.grouped_entries -= rows.len();
            rows.sort_unstable();
            rows.dedup();
            let (mine, others): (Vec<u32>, Vec<u32>) = rows
                .into_iter()
                .partition(|&i| matches(&self.slots[i as usize]));
            // Rows of another map with the same hash stay grouped; this map's rows leave the
            // group (the clean ones have no change to write).
            let others: Vec<u32> = others
                .into_iter()
                .filter(|&i| {
                    let s = &self.slots[i as usize];
                    s.live && s.grouped && s.group_len > 0
                })
                .collect();
            if !others.is_empty() {
                self.grouped_entries += others.len();
                self.groups.insert(hash, others);
            }
            for &i in &mine {
                self.slots[i as usize].grouped = false;
            }
            mine.into_iter()
                .filter(|&i| self.slots[i as usize].dirty)
                .collect()
        } else {
            let slots = &self.slots;
            self.dirty_list
                .iter()
                .copied()
                .filter(|&i| slots[i as usize].dirty && matches(&slots[i as usize]))
                .collect()
        };
        if !dirty.is_empty() {
            self.write_sorted(&dirty, write)?;
            // Their dirty-list entries stay, and are skipped (clean) or stand for the row's
            // next change (a slot is listed at most once).
            self.written(dirty);
        }
        Ok(())
    }

    /// The changed rows of one map (state `state`, rows starting with `prefix`, grouped by
    /// it), sorted by row key: the value of each, `None` for a deleted row. What an iteration
    /// over the map applies to what RocksDB holds, instead of writing them back first. Copies
    /// them: the work is proportional to the map's changed rows.
    pub(super) fn map_changes(&self, state: u32, prefix: &[u8]) -> Vec<MapChange> {
        let Some(rows) = self.groups.get(&self.group_hash(state, prefix)) else {
            return Vec::new();
        };
        let mut changes: Vec<MapChange> = rows
            .iter()
            .map(|&i| &self.slots[i as usize])
            .filter(|s| {
                s.live
                    && s.dirty
                    && s.state == state
                    && usize::from(s.group_len) == prefix.len()
                    && s.key().starts_with(prefix)
            })
            .map(|s| {
                let value = (s.kind == Kind::Present).then(|| Box::from(s.value()));
                (Box::from(s.key()), value)
            })
            .collect();
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // A slot is listed at most twice (a reuse); either entry is the same row.
        changes.dedup_by(|a, b| a.0 == b.0);
        changes
    }

    /// Records that the rows of slots `rows` reached RocksDB: clean now, except rows of
    /// appended elements, which are forgotten (RocksDB merges them into a value the cache
    /// never read).
    fn written(&mut self, rows: Vec<u32>) {
        self.count_written(&rows);
        for i in rows {
            if matches!(self.slots[i as usize].kind, Kind::Appended | Kind::Expired) {
                self.remove(i);
            } else {
                self.mark_clean(i);
            }
        }
    }

    /// Counts the rows of slots `rows`, and the value bytes, as handed to RocksDB.
    fn count_written(&mut self, rows: &[u32]) {
        self.stats.written_rows += rows.len() as u64;
        for &i in rows {
            self.stats.written_bytes += match self.slots[i as usize].row_write() {
                RowWrite::Delete => 0,
                RowWrite::Put(bytes) | RowWrite::Merge(bytes) => bytes.len() as u64,
            };
        }
    }

    /// Writes back the rows of the first `count` entries of the dirty list (one `write` call),
    /// marks them clean and takes the entries off the list; if `write` fails, nothing changes.
    fn write_back(
        &mut self,
        count: usize,
        write: impl FnOnce(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        let dirty: Vec<u32> = self
            .dirty_list
            .iter()
            .take(count)
            .copied()
            .filter(|&i| {
                let s = &self.slots[i as usize];
                s.live && s.dirty
            })
            .collect();
        if !dirty.is_empty() {
            self.write_sorted(&dirty, write)?;
        }
        for i in self.dirty_list.drain(..count) {
            self.slots[i as usize].listed = false;
        }
        self.written(dirty);
        Ok(())
    }

    /// Writes back the oldest dirty rows while their bytes and `incoming` more exceed the
    /// dirty limit, down to half of it, so that a flush (a checkpoint's synchronous part) has
    /// a bounded amount to write. The rows stay cached, clean.
    fn write_back_over_limit(
        &mut self,
        incoming: usize,
        write: &mut impl FnMut(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        if self.dirty_bytes + incoming <= self.dirty_limit {
            return Ok(());
        }
        let mut excess = (self.dirty_bytes + incoming).saturating_sub(self.dirty_limit / 2);
        let mut count = 0;
        for &i in &self.dirty_list {
            if excess == 0 {
                break;
            }
            count += 1;
            let s = &self.slots[i as usize];
            if s.live && s.dirty {
                excess = excess.saturating_sub(s.dirty_cost());
            }
        }
        self.write_back(count, write)
    }

    /// Hands the rows of slots `indices` to `write` in (state, row key) order: RocksDB inserts
    /// a sorted batch into its skip list from the previous insert's position instead of
    /// searching from the top for each row (a checkpoint's flush of 300,000 rows took 2.0 s
    /// unsorted, mostly in `InlineSkipList::FindSpliceForLevel`).
    fn write_sorted(
        &self,
        indices: &[u32],
        write: impl FnOnce(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        let slots = &self.slots;
        // Sorted by (state, first 8 key bytes) without touching the rows, which are spread
        // over memory; only rows whose first 8 bytes tie are compared in full.
        let mut order: Vec<(u32, u64, u32)> = indices
            .iter()
            .map(|&i| {
                let s = &slots[i as usize];
                let mut head = [0u8; 8];
                let n = s.key().len().min(8);
                head[..n].copy_from_slice(&s.key()[..n]);
                (s.state, u64::from_be_bytes(head), i)
            })
            .collect();
        order.sort_unstable_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| slots[a.2 as usize].key().cmp(slots[b.2 as usize].key()))
        });
        write(&mut order.iter().map(|&(_, _, i)| -> DirtyRow<'_> {
            let s = &slots[i as usize];
            (s.state, s.key(), s.row_write())
        }))
    }

    /// Forgets every row (they must be clean: flush first). For RocksDB changed behind the
    /// cache: an import, a key-group range cut.
    pub(super) fn clear(&mut self) {
        debug_assert_eq!(self.dirty, 0, "clearing dirty rows");
        self.reset();
    }

    /// Empties the cache, keeping its settings, its counters and the current operation's
    /// context (it may run inside one: an eviction making room for its row).
    fn reset(&mut self) {
        let (capacity, dirty_limit, stats) = (self.capacity, self.dirty_limit, self.stats);
        let group_len = self.group_len;
        *self = Self::new(capacity, dirty_limit);
        self.stats = stats;
        self.group_len = group_len;
    }

    /// Makes room for a row of `incoming` bytes (`ROW_OVERHEAD` included; its bytes also
    /// count as changed if `changed`): writes back the oldest changed rows beyond the dirty
    /// limit, then evicts if the cache would exceed its capacity ([`WriteCache::evict_if_full`]).
    /// Called before a change is recorded, so that a refused write leaves the change
    /// unrecorded and the operation can fail as a whole.
    pub(super) fn make_room(
        &mut self,
        incoming: usize,
        changed: bool,
        mut write: impl FnMut(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        let incoming_dirty = if changed { incoming } else { 0 };
        self.write_back_over_limit(incoming_dirty, &mut write)?;
        self.evict_if_full(incoming, write)
    }

    /// After a change: evicts what the arrays' growth put over the bound. A refused write is
    /// not the operation's failure (its change is recorded and stays dirty, for the next flush
    /// or snapshot to write or report): it is logged, and the cache stays over its bound until
    /// a later eviction succeeds.
    pub(super) fn settle(
        &mut self,
        write: impl FnMut(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) {
        if let Err(e) = self.evict_if_full(0, write) {
            tracing::warn!(error = %e, "write cache: eviction failed; the cache stays over its bound");
        }
    }

    /// Evicts rows until the cache holds at most seven eighths of its capacity less
    /// `incoming` (so the next evictions come in batches, not one row per operation). The
    /// dirty ones among the rows chosen are written through `write` first; if that fails
    /// nothing is evicted.
    pub(super) fn evict_if_full(
        &mut self,
        incoming: usize,
        mut write: impl FnMut(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        let mut target = (self.capacity - self.capacity / 8).saturating_sub(incoming);
        while self.charged() + incoming > self.capacity {
            if self.rows == 0 {
                // Nothing left to evict (so nothing dirty): give back the arrays too.
                self.reset();
                break;
            }
            self.evict_down_to(target, &mut write)?;
            if self.charged() > self.capacity {
                self.compact();
            }
            // Still over (the arrays' rounding): aim lower.
            target /= 2;
        }
        Ok(())
    }

    /// One round of eviction: chooses rows until the rest, counted at [`ROW_OVERHEAD`] each,
    /// fits in `target`; writes the dirty ones, then forgets them all.
    fn evict_down_to(
        &mut self,
        target: usize,
        write: &mut impl FnMut(&mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()>,
    ) -> Result<()> {
        // Choose victims without removing them, counting rows at their own cost (the arrays'
        // spare capacity is given back by `compact` if it is what keeps the cache over).
        let mut remaining = self.row_bytes + self.rows * ROW_OVERHEAD;
        let mut victims: Vec<u32> = Vec::new();
        let mut steps = 0usize;
        // Two full turns at most: the first clears every reference bit.
        while remaining > target && steps < 2 * self.slots.len() {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            steps += 1;
            let slot = &mut self.slots[i];
            if !slot.live {
                continue;
            }
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            // Chosen: marked referenced so that the second turn passes it by.
            slot.referenced = true;
            remaining -= slot.heap_bytes() + ROW_OVERHEAD;
            victims.push(i as u32);
        }
        let dirty_victims: Vec<u32> = victims
            .iter()
            .copied()
            .filter(|&i| self.slots[i as usize].dirty)
            .collect();
        if !dirty_victims.is_empty() {
            if let Err(e) = self.write_sorted(&dirty_victims, write) {
                for &i in &victims {
                    self.slots[i as usize].referenced = false;
                }
                return Err(e);
            }
            self.count_written(&dirty_victims);
        }
        self.stats.evicted_rows += victims.len() as u64;
        for i in victims {
            self.remove(i);
        }
        Ok(())
    }

    /// Rebuilds the slot array and the hash table to the live rows' size, giving back the
    /// capacity that rows evicted since they grew left unused.
    fn compact(&mut self) {
        let mut slots = Vec::with_capacity(self.rows + self.rows / 8);
        slots.extend(
            std::mem::take(&mut self.slots)
                .into_iter()
                .filter(|s| s.live),
        );
        let mut table = HashTable::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            table.insert_unique(slot.hash, i as u32, |&j| slots[j as usize].hash);
        }
        // Slots moved: list and index the dirty ones again under their new indices.
        self.dirty_list = VecDeque::with_capacity(self.dirty);
        for (i, slot) in slots.iter_mut().enumerate() {
            slot.listed = slot.dirty;
            slot.grouped = false;
            if slot.dirty {
                self.dirty_list.push_back(i as u32);
            }
        }
        self.slots = slots;
        self.groups.clear();
        self.grouped_entries = 0;
        self.group_dirty_rows();
        self.table = table;
        self.free_head = NO_SLOT;
        self.hand = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write as the tests keep it: a put as `Present`, a merge as `Appended`.
    fn owned(write: RowWrite<'_>) -> Cached {
        match write {
            RowWrite::Delete => Cached::Absent,
            RowWrite::Put(bytes) => Cached::Present(bytes.to_vec()),
            RowWrite::Merge(bytes) => Cached::Appended(bytes.to_vec()),
        }
    }

    #[test]
    fn appends_to_a_cached_list_write_what_was_appended_not_the_list_again() {
        // A 4 KiB list read into the cache, then grown by 20,000 appends of 40 bytes with a
        // changed-rows limit of 1 KiB: each write-back used to put the whole list again.
        let limit = 1024;
        let mut cache = WriteCache::new(64 << 20, limit);
        let base = vec![7u8; 4096];
        cache.fill(0, b"list", Cached::Present(base.clone()));
        // The store: puts replace, merges append (the list merge operator).
        let mut stored: Vec<u8> = base.clone();
        let mut write = |rows: &mut dyn Iterator<Item = DirtyRow<'_>>| {
            for (_, _, w) in rows {
                match w {
                    RowWrite::Put(bytes) => stored = bytes.to_vec(),
                    RowWrite::Merge(bytes) => stored.extend_from_slice(bytes),
                    RowWrite::Delete => stored.clear(),
                }
            }
            Ok(())
        };
        let element = [3u8; 40];
        let appends = 20_000u64;
        for _ in 0..appends {
            cache
                .make_room(4 + element.len() + ROW_OVERHEAD, true, &mut write)
                .unwrap();
            cache.append(0, b"list", &element);
            assert!(cache.stats().dirty_bytes <= limit + 4 + element.len());
        }
        cache.flush(&mut write).unwrap();
        let appended = appends * element.len() as u64;
        let stats = cache.stats();
        assert!(
            stats.written_bytes <= 2 * appended,
            "{} bytes written for {appended} appended",
            stats.written_bytes
        );
        // What reached the store is the list the cache holds.
        let Some(CachedRef::Present(value)) = cache.get(0, b"list") else {
            panic!("the list stays cached");
        };
        assert_eq!(value.len() as u64, base.len() as u64 + appended);
        assert_eq!(&stored, value);
        // A replaced list is written whole again, then appends go as merges once more.
        cache.write(0, b"list", Cached::Present(vec![1; 10]));
        cache.append(0, b"list", &element);
        let mut writes = Vec::new();
        cache
            .flush(|rows| {
                writes.extend(rows.map(|(_, _, w)| owned(w)));
                Ok(())
            })
            .unwrap();
        let mut whole = vec![1; 10];
        whole.extend_from_slice(&element);
        assert_eq!(writes, vec![Cached::Present(whole)]);
    }

    fn write_none(rows: &mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()> {
        assert_eq!(rows.count(), 0, "no dirty row expected");
        Ok(())
    }

    #[test]
    fn expired_rows_leave_and_changed_ones_are_deleted_first() {
        let mut cache = WriteCache::new(1 << 20, usize::MAX);
        cache.fill(0, b"clean", Cached::Present(b"old".to_vec()));
        cache.write(0, b"changed", Cached::Present(b"old".to_vec()));
        cache.append(0, b"list", b"old");
        cache.write(0, b"live", Cached::Present(b"new".to_vec()));
        cache.write(1, b"other", Cached::Present(b"old".to_vec()));
        // State 0's values starting with "old" count as expired; state 1 is not looked at.
        let mut sweep = Sweep::default();
        let dropped = cache.drop_expired(&mut sweep, 100, |state, value| {
            state == 0 && value == b"old"
        });
        assert_eq!(dropped, 3);
        assert_eq!(cache.get(0, b"clean").map(CachedRef::to_cached), None);
        assert_eq!(cache.get(0, b"list").map(CachedRef::to_cached), None);
        // The changed row reads as absent and is written back as a deletion, then leaves.
        assert_eq!(
            cache.get(0, b"changed").map(CachedRef::to_cached),
            Some(Cached::Absent)
        );
        let mut written = Vec::new();
        cache
            .flush(|rows| {
                written.extend(rows.map(|(s, k, v)| (s, k.to_vec(), owned(v))));
                Ok(())
            })
            .unwrap();
        written.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        assert_eq!(
            written,
            vec![
                (0, b"changed".to_vec(), Cached::Absent),
                (0, b"live".to_vec(), Cached::Present(b"new".to_vec())),
                (1, b"other".to_vec(), Cached::Present(b"old".to_vec())),
            ]
        );
        assert_eq!(cache.get(0, b"changed").map(CachedRef::to_cached), None);
        assert_eq!(cache.stats().rows, 2);
    }

    #[test]
    fn rows_read_back_and_changes_are_dirty_until_flushed() {
        let mut cache = WriteCache::new(1 << 20, usize::MAX);
        cache.fill(0, b"a", Cached::Present(b"1".to_vec()));
        cache.write(1, b"a", Cached::Present(b"2".to_vec()));
        cache.append(1, b"l", b"x");
        cache.append(1, b"l", b"y");
        assert_eq!(
            cache.get(0, b"a").map(CachedRef::to_cached),
            Some(Cached::Present(b"1".to_vec()))
        );
        assert_eq!(
            cache.get(1, b"a").map(CachedRef::to_cached),
            Some(Cached::Present(b"2".to_vec()))
        );
        assert_eq!(
            cache.get(1, b"l").map(CachedRef::to_cached),
            Some(Cached::Appended(b"xy".to_vec()))
        );
        assert_eq!(cache.get(2, b"a").map(CachedRef::to_cached), None);
        assert_eq!(cache.stats().dirty_rows, 2);
        let mut written = Vec::new();
        cache
            .flush(|rows| {
                written.extend(rows.map(|(s, k, v)| (s, k.to_vec(), owned(v))));
                Ok(())
            })
            .unwrap();
        written.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            written,
            vec![
                (1, b"a".to_vec(), Cached::Present(b"2".to_vec())),
                // Merged: the stored list was never read.
                (1, b"l".to_vec(), Cached::Appended(b"xy".to_vec())),
            ]
        );
        // The written value stays cached and clean; appended elements are forgotten.
        assert_eq!(
            cache.get(1, b"a").map(CachedRef::to_cached),
            Some(Cached::Present(b"2".to_vec()))
        );
        assert_eq!(cache.get(1, b"l").map(CachedRef::to_cached), None);
        assert_eq!(cache.stats().dirty_rows, 0);
        cache.flush(write_none).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_every_row() {
        let mut cache = WriteCache::new(2048, usize::MAX);
        for i in 0u32..200 {
            cache.write(0, &i.to_le_bytes(), Cached::Present(vec![7; 16]));
            let before = cache.stats();
            let failed = cache.evict_if_full(0, |_| {
                Err(crate::model::error::Error::Incompatible {
                    reason: "refused".into(),
                })
            });
            if failed.is_err() {
                assert_eq!(cache.stats().rows, before.rows);
                assert_eq!(cache.stats().dirty_rows, before.dirty_rows);
                assert_eq!(cache.stats().rows, i as usize + 1);
            }
        }
        assert_eq!(cache.stats().dirty_rows, 200);
        for i in 0u32..200 {
            assert!(cache.get(0, &i.to_le_bytes()).is_some());
        }
    }

    #[test]
    fn the_bound_holds_and_evicted_dirty_rows_are_written() {
        let capacity = 4096;
        let mut cache = WriteCache::new(capacity, usize::MAX);
        let mut written = std::collections::BTreeMap::new();
        for i in 0u32..10_000 {
            // State 1 is a map state: its rows are grouped by their first byte.
            cache.group_len = u16::from(i % 3 == 1);
            cache.write(i % 3, &i.to_le_bytes(), Cached::Present(vec![i as u8; 20]));
            cache.group_len = 0;
            cache
                .evict_if_full(0, |rows| {
                    for (state, key, value) in rows {
                        written.insert((state, key.to_vec()), owned(value));
                    }
                    Ok(())
                })
                .unwrap();
            assert!(
                cache.charged() <= capacity,
                "{} > {capacity}",
                cache.charged()
            );
            if i % 101 == 0 {
                check_groups(&cache);
            }
        }
        let stats = cache.stats();
        assert!(stats.rows > 10, "a 4 KiB cache holds more than 10 rows");
        assert_eq!(stats.evicted_rows as usize + stats.rows, 10_000);
        assert_eq!(written.len(), stats.evicted_rows as usize);
        for i in 0u32..10_000 {
            let key = (i % 3, i.to_le_bytes().to_vec());
            let cached = cache.get(key.0, &key.1).map(CachedRef::to_cached);
            let value = cached.or_else(|| written.get(&key).cloned());
            assert_eq!(value, Some(Cached::Present(vec![i as u8; 20])));
        }
    }

    #[test]
    fn dirty_bytes_stay_under_the_limit_and_nothing_is_lost() {
        let limit = 2000;
        let mut cache = WriteCache::new(1 << 20, limit);
        let mut stored = std::collections::BTreeMap::new();
        let mut write = |rows: &mut dyn Iterator<Item = DirtyRow<'_>>| {
            let mut last: Option<(u32, Vec<u8>)> = None;
            for (state, key, value) in rows {
                // Handed out in (state, key) order.
                let here = (state, key.to_vec());
                assert!(last.as_ref().is_none_or(|l| *l < here));
                last = Some(here.clone());
                stored.insert(here, owned(value));
            }
            Ok(())
        };
        let mut expected = std::collections::BTreeMap::new();
        for i in 0u32..5_000 {
            let key = (i % 700).to_le_bytes();
            let value = Cached::Present(vec![i as u8; 10 + (i % 30) as usize]);
            let incoming = row_cost(key.len(), value.len());
            cache.make_room(incoming, true, &mut write).unwrap();
            // State 1 is a map state: its rows are grouped by their first byte.
            cache.group_len = u16::from(i % 3 == 1);
            cache.write(i % 3, &key, value.clone());
            cache.group_len = 0;
            expected.insert((i % 3, key.to_vec()), value);
            let stats = cache.stats();
            assert!(stats.dirty_bytes <= limit, "{stats:?}");
            if i % 97 == 0 {
                cache
                    .flush_prefix(i % 3, &key[..1], i % 3 == 1, &mut write)
                    .unwrap();
                check_groups(&cache);
                // Nothing of that map (or prefix) stays dirty.
                assert!(cache.slots.iter().all(|s| !(s.live
                    && s.dirty
                    && s.state == i % 3
                    && s.key().starts_with(&key[..1]))));
            }
        }
        let written_before_flush = cache.stats().written_rows;
        assert!(written_before_flush > 0, "the limit wrote rows back");
        cache.flush(&mut write).unwrap();
        assert_eq!(cache.stats().dirty_rows, 0);
        assert_eq!(cache.stats().dirty_bytes, 0);
        assert_eq!(stored, expected);
        // Written back rows stay cached.
        assert_eq!(cache.stats().rows, 2100);
    }

    #[test]
    fn a_state_flush_writes_that_state_only() {
        let mut cache = WriteCache::new(1 << 20, usize::MAX);
        for i in 0u32..30 {
            cache.write(i % 3, &i.to_le_bytes(), Cached::Present(vec![i as u8]));
        }
        cache.append(1, b"list", b"x");
        let mut written = Vec::new();
        cache
            .flush_prefix(1, &[], false, |rows| {
                written.extend(rows.map(|(state, key, _)| (state, key.to_vec())));
                Ok(())
            })
            .unwrap();
        assert_eq!(written.len(), 11);
        let mut sorted = written.clone();
        sorted.sort();
        assert_eq!(written, sorted, "handed over in (state, key) order");
        assert!(written.iter().all(|(state, _)| *state == 1));
        assert_eq!(cache.stats().dirty_rows, 20);
        // Written rows stay cached (appended elements are forgotten); the rest flush later.
        assert!(cache.get(1, &1u32.to_le_bytes()).is_some());
        assert_eq!(cache.get(1, b"list").map(CachedRef::to_cached), None);
        let mut rest = Vec::new();
        cache
            .flush(|rows| {
                rest.extend(rows.map(|(state, _, _)| state));
                Ok(())
            })
            .unwrap();
        assert_eq!(rest.len(), 20);
        assert!(rest.iter().all(|state| *state != 1));
        assert_eq!(cache.stats().dirty_rows, 0);
        assert_eq!(cache.stats().dirty_bytes, 0);
    }

    /// Every dirty map row is grouped, and its group lists it.
    fn check_groups(cache: &WriteCache) {
        let entries: usize = cache.groups.values().map(Vec::len).sum();
        assert_eq!(entries, cache.grouped_entries);
        for (i, slot) in cache.slots.iter().enumerate() {
            if slot.live && slot.dirty && slot.group_len > 0 {
                assert!(slot.grouped, "dirty map row {i} not grouped");
                let hash = cache.group_hash(slot.state, &slot.key()[..slot.group_len as usize]);
                assert!(cache.groups[&hash].contains(&(i as u32)));
            }
        }
    }

    #[test]
    fn a_prefix_flush_writes_that_maps_rows_only_and_they_change_again_later() {
        let mut cache = WriteCache::new(1 << 20, usize::MAX);
        // Maps of state 0: "a" (rows "a1", "a2"), "ab" (its row "ab1" starts with "a" too) and
        // "b"; map "a" of state 1.
        for (key, map) in [(&b"a1"[..], 1), (b"a2", 1), (b"ab1", 2), (b"b1", 1)] {
            cache.group_len = map;
            cache.write(0, key, Cached::Present(key.to_vec()));
        }
        cache.group_len = 1;
        cache.write(1, b"a1", Cached::Absent);
        cache.group_len = 0;
        check_groups(&cache);
        let mut written = Vec::new();
        let mut record = |rows: &mut dyn Iterator<Item = DirtyRow<'_>>| {
            written.extend(rows.map(|(state, key, w)| (state, key.to_vec(), owned(w))));
            Ok(())
        };
        cache.flush_prefix(0, b"ab", true, &mut record).unwrap();
        cache.flush_prefix(0, b"a", true, &mut record).unwrap();
        let keys: Vec<(u32, Vec<u8>)> = written.iter().map(|(s, k, _)| (*s, k.clone())).collect();
        assert_eq!(
            keys,
            vec![
                (0, b"ab1".to_vec()),
                (0, b"a1".to_vec()),
                (0, b"a2".to_vec())
            ]
        );
        assert_eq!(cache.stats().dirty_rows, 2);
        // A written row that changes again is dirty again, and a full flush writes it once
        // with the rows never written.
        cache.group_len = 1;
        cache.write(0, b"a1", Cached::Present(b"new".to_vec()));
        cache.group_len = 0;
        check_groups(&cache);
        let mut rest = Vec::new();
        cache
            .flush(|rows| {
                rest.extend(rows.map(|(s, k, w)| (s, k.to_vec(), owned(w))));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            rest,
            vec![
                (0, b"a1".to_vec(), Cached::Present(b"new".to_vec())),
                (0, b"b1".to_vec(), Cached::Present(b"b1".to_vec())),
                (1, b"a1".to_vec(), Cached::Absent),
            ]
        );
        assert_eq!(cache.stats().dirty_rows, 0);
        assert!(cache.groups.is_empty() && cache.grouped_entries == 0);
    }

    #[test]
    fn a_row_written_after_its_room_emptied_the_cache_keeps_its_map() {
        let mut cache = WriteCache::new(256, usize::MAX);
        cache.group_len = 1;
        for i in 0u8..50 {
            // The room for a row this large evicts every row (the cache starts over).
            cache.make_room(200, true, |_| Ok(())).unwrap();
            cache.write(0, &[b'm', i], Cached::Present(vec![i]));
            check_groups(&cache);
        }
        cache.group_len = 0;
        let mut written = Vec::new();
        cache
            .flush_prefix(0, b"m", true, |rows| {
                written.extend(rows.map(|(_, key, _)| key.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(written.len(), cache.stats().rows);
        assert_eq!(cache.stats().dirty_rows, 0);
    }

    #[test]
    fn small_rows_live_in_their_slots() {
        // A value state's row: a 2-byte key group, an 8-byte key, an 8-byte value.
        assert!(
            std::mem::size_of::<Slot>() <= 64,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert_eq!(row_cost(10, 8), ROW_OVERHEAD);
        let mut cache = WriteCache::new(4 << 20, usize::MAX);
        for i in 0u64..20_000 {
            let key = [&[0u8, 1][..], &i.to_be_bytes()].concat();
            cache.write(0, &key, Cached::Present(i.to_le_bytes().to_vec()));
        }
        assert_eq!(cache.row_bytes, 0, "no row buffer on the heap");
        let per_row = cache.charged() as f64 / 20_000.0;
        assert!(per_row < 100.0, "{per_row} bytes per row");
        // A long row goes to the heap, and comes back inline when it shrinks.
        let key = [0u8, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        cache.write(0, &key, Cached::Present(vec![9; 100]));
        assert!(cache.row_bytes >= 110);
        cache.write(0, &key, Cached::Present(vec![9; 4]));
        assert_eq!(cache.row_bytes, 0);
        assert_eq!(
            cache.get(0, &key).map(CachedRef::to_cached),
            Some(Cached::Present(vec![9; 4]))
        );
    }

    #[test]
    fn referenced_rows_survive_a_sweep() {
        let mut cache = WriteCache::new(4096, usize::MAX);
        cache.fill(0, b"hot", Cached::Present(vec![1; 8]));
        for i in 0u32..5_000 {
            assert!(cache.get(0, b"hot").is_some(), "hot row evicted at {i}");
            cache.fill(1, &i.to_le_bytes(), Cached::Absent);
            cache.evict_if_full(0, write_none).unwrap();
        }
    }
}
