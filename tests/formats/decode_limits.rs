//! Resources on untrusted input (issue 13, item 8, formats and storage): decoding never
//! allocates more than the bytes present justify, `_metadata` is refused above its bound
//! without being read whole, and files are checksummed by streaming.
//!
//! A counting global allocator records the largest single allocation the current thread asks
//! for while a closure runs, and the peak of the bytes it holds allocated, so the assertions are
//! about memory requested, not about time.
use crate::common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;

use common::checkpointing::{config, key_group, kinds};
use common::faults::{ReadFault, ReadFaults};
use statebackend::checkpoint::{
    FileEntry, InstanceId, InstanceMetadata, SnapshotKind, SnapshotMetadata,
};
use statebackend::savepoint::data_file::{DataFileHeader, DataFileWriter};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{
    self, CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage, ObjectMeta, StoragePath,
};
use statebackend::{
    BackendKind, BincodeCodec, Codec, CodecId, Error, KeyGroupRange, KeyedStateBackend, Result,
    ValueStateDescriptor,
};

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed since armed, and its peak.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            LARGEST.with(|l| l.set(l.get().max(size)));
        }
    });
}

/// Adds `delta` bytes to the live count of an armed thread.
fn note_live(delta: isize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; `note` only reads and
// writes thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        note_live(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        note_live(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        note_live(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_live(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation it asked for (on this
/// thread).
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, LARGEST.with(Cell::get))
}

/// Runs `f` and returns its result with the most bytes it held allocated at once (on this
/// thread): its peak memory.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, PEAK.with(Cell::get).max(0) as usize)
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Five bytes: a varint u32 discriminant and 0x3fff_ffff, a length of about 1 GiB.
const HUGE: [u8; 5] = [252, 0xff, 0xff, 0xff, 0x3f];

#[test]
fn a_five_byte_length_prefix_is_a_decode_error_without_a_large_allocation() {
    let codec = BincodeCodec;
    let (results, largest) = largest_allocation(|| {
        [
            codec.decode::<String>(&HUGE).map(drop),
            codec.decode::<Vec<u8>>(&HUGE).map(drop),
            codec.decode::<Vec<u64>>(&HUGE).map(drop),
            codec.decode::<Vec<String>>(&HUGE).map(drop),
            codec
                .decode::<std::collections::HashMap<String, u64>>(&HUGE)
                .map(drop),
            codec
                .decode::<(u8, String)>(&[7, 253, 0, 0, 0, 0, 0, 0, 0, 0x40])
                .map(drop),
        ]
    });
    for result in results {
        assert!(result.is_err());
    }
    assert!(
        largest < 4 * KIB,
        "decoding 5 bytes asked for {largest} bytes"
    );
    // Values that are there still decode.
    let bytes = codec.encode(&("x".repeat(3000), vec![1u64; 500])).unwrap();
    let back: (String, Vec<u64>) = codec.decode(&bytes).unwrap();
    assert_eq!(back.0.len(), 3000);
    assert_eq!(back.1.len(), 500);
}

/// A savepoint of one instance owning all 128 key groups whose value state `v`
/// (`String` values) holds one row with `value` as its value bytes.
fn savepoint_with_value(dir: &Path, value: &[u8]) -> Result<LocalDirStorage> {
    let storage = LocalDirStorage::new(dir.join("sp"))?;
    let info = ValueStateDescriptor::<String, (), String>::new("v").info();
    let key = "user-1".to_string();
    let mut row_key = BincodeCodec.encode(&key).unwrap();
    row_key.extend(BincodeCodec.encode(&()).unwrap());
    let all = KeyGroupRange::all(128)?;
    let local = dir.join("crafted.sbdf");
    let mut writer = DataFileWriter::create(
        &local,
        &DataFileHeader {
            codec: CodecId::BINCODE_STANDARD,
            max_parallelism: 128,
            key_groups: all,
            states: vec![info.clone()],
        },
    )?;
    writer.add_row(key_group(&key), 0, &row_key, value)?;
    let (_, summary) = writer.finish()?;
    let path = StoragePath::parse("crafted.sbdf")?;
    storage.put_file(&path, &local)?;
    complete_savepoint(
        &storage,
        vec![InstanceMetadata {
            instance_id: InstanceId([7; 16]),
            backend: BackendKind::Heap,
            codec: CodecId::BINCODE_STANDARD,
            max_parallelism: 128,
            key_groups: all,
            states: vec![info],
            files: vec![FileEntry {
                path,
                local_name: "crafted.sbdf".into(),
                size: summary.size,
                crc32: summary.crc32,
                shared: false,
            }],
            operator_state: Default::default(),
            operator: String::new(),
        }],
    )?;
    Ok(storage)
}

#[test]
fn a_crafted_state_value_is_a_typed_decode_error_in_both_backends() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = savepoint_with_value(tmp.path(), &HUGE)?;
    let meta = read_savepoint(&storage)?;
    let descriptor = ValueStateDescriptor::<String, (), String>::new("v");
    for kind in kinds() {
        let mut c = config(kind, KeyGroupRange::all(128)?);
        c.working_dir = Some(tmp.path().join(format!("work-{kind}")));
        let mut backend = restore_savepoint(&storage, &meta, &c)?;
        // The heap backend decodes restored rows when the state is registered again, RocksDB
        // when the value is read.
        let (outcome, largest) = largest_allocation(|| {
            backend
                .value_state(&descriptor)
                .and_then(|state| state.get(&backend, &"user-1".to_string(), &()))
        });
        match outcome {
            Err(Error::Decode { state, .. }) => assert_eq!(state, "v"),
            other => panic!("{kind}: expected a Decode error, got {other:?}"),
        }
        assert!(
            largest < 16 * MIB,
            "{kind}: a 5-byte value asked for {largest} bytes"
        );
    }
    Ok(())
}

#[test]
fn metadata_above_the_bound_is_refused_without_reading_it() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path())?;
    let path = StoragePath::parse("_metadata")?;
    // A sparse 1 GiB `_metadata`.
    std::fs::File::create(storage.local_path(&path))
        .and_then(|f| f.set_len(1 << 30))
        .unwrap();
    let (result, largest) = largest_allocation(|| SnapshotMetadata::read(&storage, &path));
    assert!(
        matches!(&result, Err(Error::Corrupt { reason, .. }) if reason.contains("too large")),
        "{result:?}"
    );
    assert!(largest < MIB, "asked for {largest} bytes");
    let (result, largest) = largest_allocation(|| read_savepoint(&storage));
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
    assert!(largest < MIB, "asked for {largest} bytes");
    // No file is MissingFile, as before.
    std::fs::remove_file(storage.local_path(&path)).unwrap();
    assert!(matches!(
        SnapshotMetadata::read(&storage, &path),
        Err(Error::MissingFile { .. })
    ));
    Ok(())
}

/// A storage whose `_metadata` claims to be small but streams endless bytes, as a file growing
/// between `size` and the read would.
struct Growing;

impl CheckpointStorage for Growing {
    fn put(&self, _: &StoragePath, _: &[u8]) -> Result<()> {
        unimplemented!()
    }
    fn put_file(&self, _: &StoragePath, _: &Path) -> Result<u64> {
        unimplemented!()
    }
    fn get(&self, _: &StoragePath) -> Result<Vec<u8>> {
        panic!("a bounded read must not read the whole file")
    }
    fn get_to_file(&self, _: &StoragePath, _: &Path) -> Result<u64> {
        panic!("a bounded read must stream")
    }
    fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
        let chunk = vec![0u8; 64 * KIB];
        let mut total = 0u64;
        // Up to 1 GiB, or until the sink refuses.
        for _ in 0..(1 << 14) {
            sink.write_all(&chunk).map_err(|e| Error::Io {
                path: path.as_str().into(),
                source: e,
            })?;
            total += chunk.len() as u64;
        }
        Ok(total)
    }
    fn list(&self, _: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        Ok(Vec::new())
    }
    fn delete(&self, _: &StoragePath) -> Result<()> {
        Ok(())
    }
    fn exists(&self, _: &StoragePath) -> Result<bool> {
        Ok(true)
    }
    fn size(&self, _: &StoragePath) -> Result<Option<u64>> {
        Ok(Some(100))
    }
}

#[test]
fn a_metadata_read_stops_at_the_bound() -> Result<()> {
    let path = StoragePath::parse("_metadata")?;
    let (result, largest) = largest_allocation(|| SnapshotMetadata::read(&Growing, &path));
    assert!(
        matches!(&result, Err(Error::Corrupt { reason, .. }) if reason.contains("too large")),
        "{result:?}"
    );
    assert!(largest <= 64 * MIB, "asked for {largest} bytes");
    Ok(())
}

#[test]
fn metadata_read_round_trips_and_faults_apply() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path())?;
    let meta = SnapshotMetadata {
        kind: SnapshotKind::Checkpoint,
        id: 3,
        created_ms: 1,
        instances: Vec::new(),
        engine: Default::default(),
    };
    let path = StoragePath::parse("chk-0000000003/_metadata")?;
    storage.put(&path, &meta.encode())?;
    assert_eq!(SnapshotMetadata::read(&storage, &path)?, meta);
    // Each of the read's storage calls (size, then read_to) can fail.
    let faulty = ReadFaults::new(&storage);
    for k in 1..=2 {
        faulty.set(ReadFault::FailAt(k));
        assert!(matches!(
            SnapshotMetadata::read(&faulty, &path),
            Err(Error::InjectedFault { .. })
        ));
    }
    faulty.set(ReadFault::None);
    assert_eq!(SnapshotMetadata::read(&faulty, &path)?, meta);
    Ok(())
}

#[test]
fn checksum_streams_and_matches_the_whole_file_crc() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path())?;
    // Not a multiple of the buffer size.
    let data: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = StoragePath::parse("shared/file.sst")?;
    storage.put(&path, &data)?;
    assert_eq!(
        storage::checksum(&storage, &path)?,
        (data.len() as u64, crc32fast::hash(&data))
    );
    let mut copy = Vec::new();
    assert_eq!(storage.read_to(&path, &mut copy)?, data.len() as u64);
    assert_eq!(copy, data);

    // A sparse 256 MiB file is checksummed through a bounded buffer.
    let big = StoragePath::parse("shared/big.sst")?;
    std::fs::File::create(storage.local_path(&big))
        .and_then(|f| f.set_len(256 << 20))
        .unwrap();
    let (sum, largest) = largest_allocation(|| storage::checksum(&storage, &big));
    assert_eq!(sum?.0, 256 << 20);
    assert!(largest < MIB, "asked for {largest} bytes");

    assert!(matches!(
        storage::checksum(&storage, &StoragePath::parse("shared/none")?),
        Err(Error::MissingFile { .. })
    ));

    // Read faults apply to streaming reads, in both fault wrappers.
    let faulty = FaultyStorage::new(&storage, FaultMode::CrashAt(1));
    faulty.put(&StoragePath::parse("x")?, b"x").unwrap_err();
    assert!(matches!(
        storage::checksum(&faulty, &path),
        Err(Error::InjectedFault { .. })
    ));
    let reads = ReadFaults::new(&storage);
    reads.set(ReadFault::FailAt(1));
    assert!(matches!(
        storage::checksum(&reads, &path),
        Err(Error::InjectedFault { .. })
    ));
    assert!(reads.fired());
    assert_eq!(storage::checksum(&reads, &path)?.0, data.len() as u64);
    Ok(())
}

/// Little-endian fields of a crafted `_metadata` body.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// Kind (checkpoint), id and creation time.
    fn header(&mut self) -> &mut Self {
        self.u8(1).u64(7).u64(1_700_000_000_000)
    }
    /// An instance up to (not including) its state count: id, heap, bincode, all 128 key groups.
    fn instance_start(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[9; 16]);
        self.u8(BackendKind::Heap.code())
            .u8(CodecId::BINCODE_STANDARD.0)
            .u32(128)
            .u32(0)
            .u32(128)
    }
    /// A count of as many items of `min_item_bytes` as the `PAD` bytes that follow can hold,
    /// then those bytes, all `0xff`: the first item fails to decode (a length of 4 GiB), and
    /// the count passes every check before it.
    fn huge_count(&mut self, min_item_bytes: usize) -> &mut Self {
        self.u32((PAD / min_item_bytes) as u32);
        self.0.resize(self.0.len() + PAD, 0xff);
        self
    }
    /// A sealed `_metadata` of `version` with this body: magic, version, length, body, crc32.
    fn seal(&self, version: u16) -> Vec<u8> {
        let mut out = b"SBMD".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.0);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// What follows a huge count in the crafted inputs.
const PAD: usize = 1 << 20;

/// Issue 25, item 10: every count of `_metadata`, version 1 and 2 (instances, states, files,
/// operator states and their elements, the operator id, engine metadata), claiming as many
/// items as the bytes left could hold at their smallest encoding, with the first item
/// undecodable. Decoding reserved `count` items up front, each several times its smallest
/// encoding in memory (an operator state element: 4 bytes read, 24 held): up to about 6 times
/// the input before the first item failed. Now the peak stays within twice the input.
#[test]
fn metadata_decoding_holds_at_most_twice_its_input_whatever_the_counts() {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for version in [1, 2] {
        // Instances: each at least 38 bytes (46 in version 2).
        cases.push((
            "instances",
            Body::default().header().huge_count(38).seal(version),
        ));
        // States of an instance: each at least 22 bytes.
        cases.push((
            "states",
            Body::default()
                .header()
                .u32(1)
                .instance_start()
                .huge_count(22)
                .seal(version),
        ));
        // Files of an instance: each at least 23 bytes.
        cases.push((
            "files",
            Body::default()
                .header()
                .u32(1)
                .instance_start()
                .u32(0)
                .huge_count(23)
                .seal(version),
        ));
    }
    // Version 2: operator states (each at least 14 bytes).
    cases.push((
        "operator states",
        Body::default()
            .header()
            .u32(1)
            .instance_start()
            .u32(0)
            .u32(0)
            .huge_count(14)
            .seal(2),
    ));
    // Version 2: the elements of one operator state (each at least 4 bytes).
    cases.push((
        "operator state elements",
        Body::default()
            .header()
            .u32(1)
            .instance_start()
            .u32(0)
            .u32(0)
            .u32(1)
            .str("source-position")
            .u8(1)
            .str("u64")
            .huge_count(4)
            .seal(2),
    ));
    // Version 2: the operator id, a length of 4 GiB.
    let mut operator = Body::default();
    operator
        .header()
        .u32(1)
        .instance_start()
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(u32::MAX);
    operator.0.resize(operator.0.len() + PAD, 0xff);
    cases.push(("operator id", operator.seal(2)));
    // Version 2: engine metadata entries (each at least 9 bytes), after no instances.
    cases.push((
        "engine metadata",
        Body::default().header().u32(0).huge_count(9).seal(2),
    ));

    for (what, input) in &cases {
        let (decoded, peak) = peak_allocation(|| SnapshotMetadata::decode(input, "_metadata"));
        let version = u16::from_le_bytes([input[4], input[5]]);
        assert!(
            matches!(&decoded, Err(Error::Corrupt { .. })),
            "{what} (version {version}): {decoded:?}"
        );
        assert!(
            peak <= 2 * input.len() + 64 * KIB,
            "{what} (version {version}): decoding {} bytes held {peak} bytes at once",
            input.len()
        );
    }

    // Version 2 metadata whose items are there still decodes: 10,000 elements and 100 engine
    // entries.
    use statebackend::state::operator::{OperatorState, OperatorStateEntry, OperatorStateMode};
    let mut operator_state = OperatorState::default();
    operator_state.insert_entry(
        "positions".into(),
        OperatorStateEntry {
            mode: OperatorStateMode::UnionList,
            type_name: "u32".into(),
            elements: (0..10_000u32).map(|i| i.to_le_bytes().to_vec()).collect(),
        },
    );
    let meta = SnapshotMetadata {
        kind: SnapshotKind::Checkpoint,
        id: 7,
        created_ms: 1,
        instances: vec![InstanceMetadata {
            instance_id: InstanceId([9; 16]),
            backend: BackendKind::Heap,
            codec: CodecId::BINCODE_STANDARD,
            max_parallelism: 128,
            key_groups: KeyGroupRange::all(128).unwrap(),
            states: Vec::new(),
            files: Vec::new(),
            operator_state,
            operator: "source".into(),
        }],
        engine: (0..100)
            .map(|i| (format!("key-{i:03}"), vec![i as u8; 10]))
            .collect(),
    };
    let bytes = meta.encode();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
    assert_eq!(SnapshotMetadata::decode(&bytes, "_metadata").unwrap(), meta);
}
