//! The canonical data file: a backend instance's state as sorted rows, grouped by key group
//! and state, in checksummed blocks, with a key-group index. Specified byte by byte in
//! `docs/savepoint-format.md`; savepoints and heap checkpoints both use it.
//!
//! Canonical: rows come in (key group, state name, row key bytes) order and blocks are cut at
//! a fixed size, so the same logical state yields the same bytes whichever backend wrote it.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::model::codec::CodecId;
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{
    FetchFile, InstanceMetadata, RandomAccess, validate_local_name,
};
use crate::model::format::{ByteReader, ByteWriter, check_trailing_crc};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::ttl::StateTtlConfig;
use crate::model::state::{StateInfo, StateKind};

/// Magic at the start and in the footer of a data file.
pub const DATA_FILE_MAGIC: [u8; 4] = *b"SBDF";
/// The newest data file format version this build writes and reads. Version 2 records each
/// state's time to live in its StateInfo; a file whose states have none is written as
/// version 1, byte for byte what earlier releases wrote and read.
pub const DATA_FILE_VERSION: u16 = 2;
/// A block is closed once its body reaches this many bytes.
pub const BLOCK_TARGET_BYTES: usize = 1 << 20;
/// Readers refuse blocks larger than this (a row is at most two 4 GiB fields, but no writer
/// of this crate produces a block near this size unless a single value is that large).
const MAX_BLOCK_BYTES: usize = 1 << 30;
/// Fixed footer size: index offset u64, row count u64, version u16, reserved u16, crc32 of
/// those 20 bytes, magic.
const FOOTER_BYTES: usize = 28;
const MAX_NAME_BYTES: usize = 1 << 16;
const MAX_STATES: usize = 1 << 16;
const MAX_HEADER_BYTES: u64 = 1 << 24;

/// What a data file's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFileHeader {
    /// The codec of every key and value in the file.
    pub codec: CodecId,
    /// The job's max parallelism.
    pub max_parallelism: u32,
    /// The key groups of the instance that wrote the file.
    pub key_groups: KeyGroupRange,
    /// The states, sorted by name; blocks refer to them by index.
    pub states: Vec<StateInfo>,
}

/// Size, checksum and row count of a written data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFileSummary {
    /// Bytes in the file.
    pub size: u64,
    /// crc32 of the whole file.
    pub crc32: u32,
    /// Rows in the file.
    pub rows: u64,
}

/// Cuts sorted rows into the data file's blocks, each framed as it is written (`u32` body
/// length, body, crc32 of the body). A [`DataFileWriter`] feeds its rows through one; a
/// parallel writer encodes each key group with its own on any thread and appends the results
/// in key-group order ([`DataFileWriter::append`]), which yields the same bytes.
pub(crate) struct BlockEncoder {
    range: KeyGroupRange,
    state_count: usize,
    block: ByteWriter,
    block_rows: u32,
    current: Option<(KeyGroup, u32)>,
    last_key: Vec<u8>,
    encoded: EncodedBlocks,
}

/// Framed blocks, ready to be written in order.
#[derive(Default)]
pub(crate) struct EncodedBlocks {
    framed: Vec<u8>,
    /// Key group and framed length of each block, in order.
    blocks: Vec<(KeyGroup, usize)>,
    rows: u64,
}

impl BlockEncoder {
    /// An encoder for rows of `range` and `state_count` states.
    pub(crate) fn new(range: KeyGroupRange, state_count: usize) -> Self {
        Self {
            range,
            state_count,
            block: ByteWriter::new(),
            block_rows: 0,
            current: None,
            last_key: Vec::new(),
            encoded: EncodedBlocks::default(),
        }
    }

    /// Adds a row. Rows must come in strictly ascending (key group, state index, row key)
    /// order, within the range.
    ///
    /// # Errors
    /// [`Error::Incompatible`] for rows out of order or out of range.
    pub(crate) fn add_row(
        &mut self,
        key_group: KeyGroup,
        state: u32,
        row_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if !self.range.contains(key_group) || state as usize >= self.state_count {
            return Err(Error::Incompatible {
                reason: format!(
                    "row of key group {key_group}, state {state} outside the file's header"
                ),
            });
        }
        let at = (key_group, state);
        match self.current {
            Some(cur) if cur == at => {
                if row_key <= self.last_key.as_slice() {
                    return Err(Error::Incompatible {
                        reason: format!("rows of key group {key_group} not in ascending key order"),
                    });
                }
            }
            Some(cur) if cur > at => {
                return Err(Error::Incompatible {
                    reason: format!("key group {key_group} / state {state} written out of order"),
                });
            }
            _ => {
                self.flush_block()?;
                self.current = Some(at);
            }
        }
        if self.block.len() >= BLOCK_TARGET_BYTES {
            self.flush_block()?;
        }
        if self.block_rows == 0 {
            self.block.u16(key_group).u32(state).u32(0);
        }
        self.block.bytes(row_key).bytes(value);
        self.block_rows += 1;
        self.encoded.rows += 1;
        self.last_key.clear();
        self.last_key.extend_from_slice(row_key);
        Ok(())
    }

    /// Closes the open block, if any, into the framed output.
    fn flush_block(&mut self) -> Result<()> {
        if self.block_rows == 0 {
            return Ok(());
        }
        let mut body = std::mem::take(&mut self.block).into_inner();
        // The row count sits after key group (2 bytes) and state index (4 bytes).
        body[6..10].copy_from_slice(&self.block_rows.to_le_bytes());
        let key_group = u16::from_le_bytes([body[0], body[1]]);
        let len = u32::try_from(body.len()).map_err(|_| Error::Incompatible {
            reason: "a single row exceeds 4 GiB".into(),
        })?;
        let framed = &mut self.encoded.framed;
        let before = framed.len();
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(&body);
        framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        self.encoded.blocks.push((key_group, framed.len() - before));
        self.block_rows = 0;
        // The next block reuses the buffer.
        body.clear();
        self.block = ByteWriter { buf: body };
        Ok(())
    }

    /// The blocks finished so far (the open one stays open).
    fn take_finished(&mut self) -> EncodedBlocks {
        std::mem::take(&mut self.encoded)
    }

    /// Closes the last block; every row added is in the result.
    ///
    /// # Errors
    /// [`Error::Incompatible`] for a row over 4 GiB.
    pub(crate) fn finish(mut self) -> Result<EncodedBlocks> {
        self.flush_block()?;
        Ok(self.encoded)
    }
}

/// Streams sorted rows into a data file.
pub struct DataFileWriter<W: Write> {
    out: W,
    hasher: crc32fast::Hasher,
    pos: u64,
    encoder: BlockEncoder,
    /// The last key group appended whole ([`DataFileWriter::append`]).
    appended: Option<KeyGroup>,
    index: Vec<(KeyGroup, u64, u32)>,
    rows: u64,
    /// The version written in the header and footer.
    version: u16,
}

impl DataFileWriter<BufWriter<File>> {
    /// Creates the file at `path` and writes the header.
    ///
    /// # Errors
    /// I/O errors.
    pub fn create(path: &Path, header: &DataFileHeader) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Self::new(BufWriter::with_capacity(1 << 20, file), header)
    }
}

impl<W: Write> DataFileWriter<W> {
    /// Writes the header to `out`. The header's states must be sorted by name.
    ///
    /// # Errors
    /// I/O errors; [`Error::Incompatible`] if the states are not sorted by name or repeat, or
    /// a name is empty or longer than 255 bytes (a reader refuses such a file).
    pub fn new(out: W, header: &DataFileHeader) -> Result<Self> {
        if header.states.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(Error::Incompatible {
                reason: "data file states must be sorted by name and unique".into(),
            });
        }
        if let Some(s) = header
            .states
            .iter()
            .find(|s| s.name.is_empty() || s.name.len() > 255)
        {
            return Err(Error::Incompatible {
                reason: format!("state name '{}' is not 1 to 255 bytes", s.name),
            });
        }
        let mut body = ByteWriter::new();
        body.u8(header.codec.0)
            .u8(0)
            .u32(header.max_parallelism)
            .u32(header.key_groups.start())
            .u32(header.key_groups.end())
            .u32(header.states.len() as u32);
        // Version 1 unless a state has a time to live: files without one stay byte for byte
        // what version 1 writers wrote.
        let version = if any_extended(header.states.iter()) {
            2
        } else {
            1
        };
        for s in &header.states {
            write_state_info(&mut body, s, version >= 2);
        }
        let body = body.into_inner();
        let mut w = ByteWriter::new();
        w.raw(&DATA_FILE_MAGIC)
            .u16(version)
            .bytes(&body)
            .crc_of_all();
        let mut writer = Self {
            out,
            hasher: crc32fast::Hasher::new(),
            pos: 0,
            encoder: BlockEncoder::new(header.key_groups, header.states.len()),
            appended: None,
            index: Vec::new(),
            rows: 0,
            version,
        };
        writer.write(&w.into_inner())?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("<data file>", e))?;
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Adds a row. Rows must come in strictly ascending (key group, state index, row key)
    /// order, within the header's key-group range.
    ///
    /// # Errors
    /// [`Error::Incompatible`] for rows out of order or out of range; I/O errors.
    pub fn add_row(
        &mut self,
        key_group: KeyGroup,
        state: u32,
        row_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if self.appended.is_some_and(|last| key_group <= last) {
            return Err(Error::Incompatible {
                reason: format!("key group {key_group} written out of order"),
            });
        }
        self.encoder.add_row(key_group, state, row_key, value)?;
        let finished = self.encoder.take_finished();
        self.write_blocks(finished)
    }

    /// Appends the blocks of key groups encoded elsewhere ([`BlockEncoder`]); they must come
    /// after every row written so far, and after every key group appended before.
    ///
    /// # Errors
    /// [`Error::Incompatible`] for blocks out of order; I/O errors.
    pub(crate) fn append(&mut self, encoded: EncodedBlocks) -> Result<()> {
        self.encoder.flush_block()?;
        let open = self.encoder.take_finished();
        self.write_blocks(open)?;
        let Some(&(first, _)) = encoded.blocks.first() else {
            return Ok(());
        };
        let after_rows = self.encoder.current.is_some_and(|(kg, _)| first <= kg);
        if after_rows || self.appended.is_some_and(|last| first <= last) {
            return Err(Error::Incompatible {
                reason: format!("key group {first} written out of order"),
            });
        }
        self.appended = encoded.blocks.last().map(|&(kg, _)| kg);
        self.write_blocks(encoded)
    }

    fn write_blocks(&mut self, encoded: EncodedBlocks) -> Result<()> {
        if encoded.blocks.is_empty() {
            return Ok(());
        }
        let mut at = self.pos;
        for &(key_group, len) in &encoded.blocks {
            match self.index.last_mut() {
                Some((kg, _, blocks)) if *kg == key_group => *blocks += 1,
                _ => self.index.push((key_group, at, 1)),
            }
            at += len as u64;
        }
        self.rows += encoded.rows;
        self.write(&encoded.framed)
    }

    /// Writes the last block, the index and the footer; returns size, crc32 and row count.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> Result<(W, DataFileSummary)> {
        self.encoder.flush_block()?;
        let last = self.encoder.take_finished();
        self.write_blocks(last)?;
        let index_offset = self.pos;
        let mut w = ByteWriter::new();
        w.u32(self.index.len() as u32);
        for (kg, offset, blocks) in &self.index {
            w.u16(*kg).u64(*offset).u32(*blocks);
        }
        w.crc_of_all();
        self.write(&w.into_inner())?;
        let mut footer = ByteWriter::new();
        footer
            .u64(index_offset)
            .u64(self.rows)
            .u16(self.version)
            .u16(0)
            .crc_of_all()
            .raw(&DATA_FILE_MAGIC);
        self.write(&footer.into_inner())?;
        self.out.flush().map_err(|e| Error::io("<data file>", e))?;
        let summary = DataFileSummary {
            size: self.pos,
            crc32: self.hasher.clone().finalize(),
            rows: self.rows,
        };
        Ok((self.out, summary))
    }
}

/// Writes a StateInfo; `extended` (data file version 2, metadata version 3) adds its time to
/// live and schema version. A state with either needs it: the caller picks the version from
/// the states ([`any_extended`]).
pub(crate) fn write_state_info(w: &mut ByteWriter, s: &StateInfo, extended: bool) {
    w.str(&s.name)
        .u8(s.kind.code())
        .str(&s.key_type)
        .str(&s.namespace_type)
        .str(&s.user_key_type)
        .str(&s.value_type);
    if extended {
        match &s.ttl {
            None => {
                w.u8(0);
            }
            Some(ttl) => {
                w.u8(1).raw(&ttl.to_bytes());
            }
        }
        w.u32(s.schema_version);
    } else {
        debug_assert!(
            !is_extended(s),
            "a TTL or schema version written without them"
        );
    }
}

/// Whether `state` needs the extended StateInfo: it has a time to live or a schema version.
pub(crate) fn is_extended(state: &StateInfo) -> bool {
    state.ttl.is_some() || state.schema_version != 0
}

/// The fewest bytes a StateInfo takes: a 1-byte name (4 + 1), its kind, four empty type names
/// (4 × 4), and in the extended form the TTL flag and the schema version (1 + 4).
pub(crate) fn min_state_info_bytes(extended: bool) -> usize {
    if extended { 27 } else { 22 }
}

/// Whether any of `states` needs the extended StateInfo ([`is_extended`]).
pub(crate) fn any_extended<'a>(mut states: impl Iterator<Item = &'a StateInfo>) -> bool {
    states.any(is_extended)
}

pub(crate) fn read_state_info(r: &mut ByteReader<'_>, extended: bool) -> Result<StateInfo> {
    let name = r.str(255, "state name")?;
    if name.is_empty() {
        // Registration refuses empty names, so no writer of this crate produces one.
        return Err(r.corrupt("state name: empty"));
    }
    let code = r.u8("state kind")?;
    let kind = StateKind::from_code(code)
        .ok_or_else(|| r.corrupt(format!("unknown state kind {code}")))?;
    let key_type = r.str(MAX_NAME_BYTES, "key type")?;
    let namespace_type = r.str(MAX_NAME_BYTES, "namespace type")?;
    let user_key_type = r.str(MAX_NAME_BYTES, "user key type")?;
    if kind != StateKind::Map && !user_key_type.is_empty() {
        // Only a map has user keys: `StateInfo::of` leaves the name empty for the others.
        return Err(r.corrupt(format!(
            "a {kind} state with user key type {user_key_type:?}"
        )));
    }
    Ok(StateInfo {
        name,
        kind,
        key_type,
        namespace_type,
        user_key_type,
        value_type: r.str(MAX_NAME_BYTES, "value type")?,
        ttl: if extended { read_ttl(r)? } else { None },
        schema_version: if extended {
            r.u32("schema version")?
        } else {
            0
        },
    })
}

fn read_ttl(r: &mut ByteReader<'_>) -> Result<Option<StateTtlConfig>> {
    match r.u8("ttl flag")? {
        0 => Ok(None),
        1 => {
            let bytes = r.take(StateTtlConfig::ENCODED_BYTES, "ttl")?;
            StateTtlConfig::from_bytes(bytes)
                .map(Some)
                .ok_or_else(|| r.corrupt(format!("ttl {bytes:02x?} is not understood")))
        }
        flag => Err(r.corrupt(format!("ttl flag {flag}"))),
    }
}

/// One key group's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The key group.
    pub key_group: KeyGroup,
    /// Offset of its first block.
    pub offset: u64,
    /// Number of consecutive blocks.
    pub blocks: u32,
}

/// Reads a data file: header and index up front, key groups on demand.
pub struct DataFileReader<R: Read + Seek> {
    input: R,
    name: String,
    len: u64,
    header: DataFileHeader,
    index_offset: u64,
    index: Vec<IndexEntry>,
    rows: u64,
}

impl DataFileReader<File> {
    /// Opens the data file at `path`; `name` is how errors refer to it.
    ///
    /// # Errors
    /// I/O errors; [`Error::UnsupportedFormat`] for another magic or version;
    /// [`Error::Corrupt`] or [`Error::ChecksumMismatch`] for a damaged header or index.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Self::new(file, name)
    }
}

impl<R: Read + Seek> DataFileReader<R> {
    /// Reads the header, footer and index of `input`.
    ///
    /// # Errors
    /// As [`DataFileReader::open`].
    pub fn new(mut input: R, name: &str) -> Result<Self> {
        let io = |e| Error::io(name, e);
        let len = input.seek(SeekFrom::End(0)).map_err(io)?;
        if len < (FOOTER_BYTES + 8) as u64 {
            return Err(Error::corrupt(
                name,
                format!("{len} bytes is too short for a data file"),
            ));
        }
        // Footer.
        let mut footer = [0u8; FOOTER_BYTES];
        input
            .seek(SeekFrom::End(-(FOOTER_BYTES as i64)))
            .map_err(io)?;
        input.read_exact(&mut footer).map_err(io)?;
        let footer_version = u16::from_le_bytes([footer[16], footer[17]]);
        check_magic_version(name, &footer[24..28], footer_version)?;
        let footer_name = format!("{name} (footer)");
        let fields = check_trailing_crc(&footer[..24], &footer_name)?;
        let mut f = ByteReader::new(fields, name);
        let index_offset = f.u64("index offset")?;
        let rows = f.u64("row count")?;
        f.u16("version")?;
        if f.u16("reserved")? != 0 {
            return Err(Error::corrupt(
                footer_name,
                "reserved footer field is not zero",
            ));
        }
        let index_end = len - FOOTER_BYTES as u64;
        if index_offset > index_end {
            return Err(Error::corrupt(
                name,
                format!("index offset {index_offset} beyond the file"),
            ));
        }
        // Header: magic, version and body length first, so only the header is read.
        input.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut start = [0u8; 10];
        input.read_exact(&mut start).map_err(io)?;
        let mut s = ByteReader::new(&start, name);
        let magic = s.take(4, "magic")?;
        let version = s.u16("version")?;
        check_magic_version(name, magic, version)?;
        if version != footer_version {
            return Err(Error::corrupt(
                name,
                format!("header version {version}, footer version {footer_version}"),
            ));
        }
        let body_len = u64::from(s.u32("header length")?);
        if 10 + body_len + 4 > index_offset || body_len > MAX_HEADER_BYTES {
            return Err(Error::corrupt(
                name,
                format!("header length {body_len} is invalid"),
            ));
        }
        let mut head = start.to_vec();
        head.resize(10 + body_len as usize + 4, 0);
        input.read_exact(&mut head[10..]).map_err(io)?;
        let header = parse_header(&head, name, version)?;
        let header_end = head.len() as u64;
        // Index.
        let index_len = (index_end - index_offset) as usize;
        if index_len > 8 + 14 * 32768 {
            return Err(Error::corrupt(
                name,
                format!("index of {index_len} bytes is too large"),
            ));
        }
        let mut index_bytes = vec![0u8; index_len];
        input.seek(SeekFrom::Start(index_offset)).map_err(io)?;
        input.read_exact(&mut index_bytes).map_err(io)?;
        let body = check_trailing_crc(&index_bytes, name)?;
        let mut r = ByteReader::new(body, name);
        let n = r.count(14, "index entries")?;
        let mut index = r.vec_for(n);
        for _ in 0..n {
            let entry = IndexEntry {
                key_group: r.u16("index key group")?,
                offset: r.u64("index offset")?,
                blocks: r.u32("index block count")?,
            };
            let in_order = index
                .last()
                .is_none_or(|prev: &IndexEntry| prev.key_group < entry.key_group);
            if !header.key_groups.contains(entry.key_group)
                || !in_order
                || entry.offset < header_end
                || entry.offset >= index_offset
            {
                return Err(Error::corrupt(
                    name,
                    format!("index entry for key group {} is invalid", entry.key_group),
                ));
            }
            index.push(entry);
        }
        r.expect_end("the index")?;
        Ok(Self {
            input,
            name: name.to_owned(),
            len,
            header,
            index_offset,
            index,
            rows,
        })
    }

    /// The header.
    pub fn header(&self) -> &DataFileHeader {
        &self.header
    }

    /// Checks that the header records the key groups and max parallelism that `instance`, the
    /// metadata entry listing this file, says: a data file of another instance (a damaged or
    /// hand-edited `_metadata`) would otherwise restore with this instance's key groups empty.
    /// Every path that opens a data file for an instance checks this.
    ///
    /// # Errors
    /// [`Error::KeyGroupsMismatch`] naming the file and both ranges.
    pub fn check_instance(&self, instance: &InstanceMetadata) -> Result<()> {
        if self.header.key_groups == instance.key_groups
            && self.header.max_parallelism == instance.max_parallelism
        {
            return Ok(());
        }
        Err(Error::KeyGroupsMismatch {
            file: self.name.clone(),
            expected: instance.key_groups,
            expected_max_parallelism: instance.max_parallelism,
            found: self.header.key_groups,
            found_max_parallelism: self.header.max_parallelism,
        })
    }

    /// The key groups that hold rows, with their offsets.
    pub fn index(&self) -> &[IndexEntry] {
        &self.index
    }

    /// Total rows the footer declares.
    pub fn row_count(&self) -> u64 {
        self.rows
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Calls `f(key_group, state_index, row_key, value)` for every row of the file, key group
    /// by key group in index order.
    ///
    /// # Errors
    /// As [`DataFileReader::read_key_group`].
    pub fn for_each_row(
        &mut self,
        f: &mut dyn FnMut(KeyGroup, u32, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let groups: Vec<KeyGroup> = self.index.iter().map(|e| e.key_group).collect();
        for group in groups {
            self.read_key_group(group, &mut |state, key, value| f(group, state, key, value))?;
        }
        Ok(())
    }

    /// Calls `f(state_index, row_key, value)` for every row of `key_group`, in file order;
    /// nothing if the key group holds no rows. Seeks straight to the key group.
    ///
    /// # Errors
    /// [`Error::Corrupt`] / [`Error::ChecksumMismatch`] naming the file and key group; errors
    /// from `f`.
    pub fn read_key_group(
        &mut self,
        key_group: KeyGroup,
        f: &mut dyn FnMut(u32, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let Some(entry) = self
            .index
            .iter()
            .find(|e| e.key_group == key_group)
            .copied()
        else {
            return Ok(());
        };
        let name = format!("{} (key group {key_group})", self.name);
        self.input
            .seek(SeekFrom::Start(entry.offset))
            .map_err(|e| Error::io(&self.name, e))?;
        let mut pos = entry.offset;
        let mut last: Option<u32> = None;
        let mut buf = Vec::new();
        for _ in 0..entry.blocks {
            let mut len_bytes = [0u8; 4];
            self.input
                .read_exact(&mut len_bytes)
                .map_err(|e| Error::io(&self.name, e))?;
            let len = u32::from_le_bytes(len_bytes) as usize;
            if len > MAX_BLOCK_BYTES || pos + 8 + len as u64 > self.index_offset || len < 10 {
                return Err(Error::corrupt(
                    &name,
                    format!("block length {len} is invalid"),
                ));
            }
            buf.resize(len + 4, 0);
            self.input
                .read_exact(&mut buf)
                .map_err(|e| Error::io(&self.name, e))?;
            let body = check_trailing_crc(&buf, &name)?;
            let mut r = ByteReader::new(body, &name);
            let kg = r.u16("block key group")?;
            let state = r.u32("block state")?;
            if kg != key_group
                || state as usize >= self.header.states.len()
                || last.is_some_and(|l| l > state)
            {
                return Err(Error::corrupt(
                    &name,
                    format!("block of key group {kg}, state {state} is misplaced"),
                ));
            }
            last = Some(state);
            let rows = r.count(8, "block rows")?;
            for _ in 0..rows {
                let key = r.bytes(usize::MAX, "row key")?;
                let value = r.bytes(usize::MAX, "row value")?;
                f(state, key, value)?;
            }
            r.expect_end("the block's rows")?;
            pos += 8 + len as u64;
        }
        Ok(())
    }
}

/// A data file opened by [`open_instance_data_file`]: a local copy or ranged reads of the
/// stored file.
pub type InstanceDataFile<'a> = DataFileReader<Box<dyn RandomAccess + 'a>>;

/// Opens the data file of `instance` (a savepoint's or a full-snapshot checkpoint's instance,
/// which lists exactly one file) for a restore of the key groups `wanted`, and checks that its
/// header belongs to `instance` ([`DataFileReader::check_instance`]). The one way restores open
/// a data file: full-snapshot checkpoints (same parallelism and rescaled) and savepoints into
/// any backend.
///
/// When the instance holds key groups outside `wanted` and `fetch` offers ranged reads (an
/// object store), the file is read in ranges: header, index and footer, then only the blocks
/// of the wanted key groups, each checked against its crc32. Otherwise it is fetched whole into
/// `dir` (under its local name), its size and crc32 verified.
///
/// # Errors
/// [`Error::Corrupt`] if the instance does not list exactly one file; [`Error::InvalidPath`]
/// for a bad local name; what `fetch` returns; format errors; [`Error::KeyGroupsMismatch`].
pub fn open_instance_data_file<'a>(
    instance: &InstanceMetadata,
    dir: &Path,
    fetch: &FetchFile<'a>,
    wanted: KeyGroupRange,
) -> Result<InstanceDataFile<'a>> {
    // No file would restore the instance's key groups empty; a second one has no meaning.
    let [entry] = instance.files.as_slice() else {
        return Err(Error::corrupt(
            instance.instance_id.hex(),
            format!(
                "the instance lists {} files; a data file instance has exactly one",
                instance.files.len()
            ),
        ));
    };
    validate_local_name(&entry.local_name)?;
    let partial = !(wanted.start() <= instance.key_groups.start()
        && instance.key_groups.end() <= wanted.end());
    if partial {
        if let Some(ranged) = fetch.open_ranged(entry) {
            let reader = DataFileReader::new(ranged?, entry.path.as_str())?;
            reader.check_instance(instance)?;
            return Ok(reader);
        }
    }
    // One directory per instance: full-snapshot checkpoints name every instance's file
    // `state.sbdf`, and a restore reads several at once.
    let instance_dir = dir.join(instance.instance_id.hex());
    std::fs::create_dir_all(&instance_dir).map_err(|e| Error::io(&instance_dir, e))?;
    let local = instance_dir.join(&entry.local_name);
    fetch.fetch(entry, &local)?;
    let file = File::open(&local).map_err(|e| Error::io(&local, e))?;
    let reader = DataFileReader::new(Box::new(file) as Box<dyn RandomAccess>, entry.path.as_str())?;
    reader.check_instance(instance)?;
    Ok(reader)
}

fn check_magic_version(name: &str, magic: &[u8], version: u16) -> Result<()> {
    if magic != DATA_FILE_MAGIC {
        return Err(Error::UnsupportedFormat {
            file: name.to_owned(),
            found: format!("magic {magic:02x?}"),
            supported: format!("magic {DATA_FILE_MAGIC:02x?}"),
        });
    }
    if !(1..=DATA_FILE_VERSION).contains(&version) {
        return Err(Error::UnsupportedFormat {
            file: name.to_owned(),
            found: format!("data file version {version}"),
            supported: format!("data file versions 1 to {DATA_FILE_VERSION}"),
        });
    }
    Ok(())
}

/// Parses a whole header (magic, version, length, body, crc), already bounds-checked.
fn parse_header(data: &[u8], name: &str, version: u16) -> Result<DataFileHeader> {
    let header_name = format!("{name} (header)");
    let all = check_trailing_crc(data, &header_name)?;
    let mut r = ByteReader::new(&all[10..], name);
    let codec = CodecId(r.u8("codec id")?);
    if codec.name().is_none() {
        return Err(Error::UnsupportedFormat {
            file: name.to_owned(),
            found: codec.to_string(),
            supported: CodecId::BINCODE_STANDARD.to_string(),
        });
    }
    r.u8("reserved")?;
    let max_parallelism = r.u32("max parallelism")?;
    let start = r.u32("key group start")?;
    let end = r.u32("key group end")?;
    if max_parallelism == 0
        || max_parallelism > crate::model::key_group::MAX_MAX_PARALLELISM
        || start > end
        || end > max_parallelism
    {
        return Err(r.corrupt(format!(
            "key groups [{start}, {end}) of {max_parallelism} are invalid"
        )));
    }
    let key_groups = KeyGroupRange::new(start, end)?;
    let n = r.count(min_state_info_bytes(version >= 2), "states")?;
    if n > MAX_STATES {
        return Err(r.corrupt(format!("{n} states")));
    }
    let mut states = r.vec_for(n);
    for _ in 0..n {
        states.push(read_state_info(&mut r, version >= 2)?);
    }
    r.expect_end("the header")?;
    if version >= 2 && !any_extended(states.iter()) {
        return Err(r.corrupt(
            "version 2 without a state with a TTL or a schema version (written as version 1)",
        ));
    }
    if states.windows(2).any(|w| w[0].name >= w[1].name) {
        return Err(Error::corrupt(name, "states not sorted by name"));
    }
    Ok(DataFileHeader {
        codec,
        max_parallelism,
        key_groups,
        states,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::ttl::StateTtlConfig;

    fn round_trip(info: &StateInfo, with_ttl: bool) -> Result<StateInfo> {
        let mut w = ByteWriter::new();
        write_state_info(&mut w, info, with_ttl);
        let bytes = w.into_inner();
        let mut r = ByteReader::new(&bytes, "test");
        let read = read_state_info(&mut r, with_ttl)?;
        r.expect_end("the state")?;
        Ok(read)
    }

    #[test]
    fn a_state_info_reads_back_with_and_without_its_ttl() {
        let plain = StateInfo::of::<u64, (), (), u64>("counts", StateKind::Value);
        assert_eq!(round_trip(&plain, false).unwrap(), plain);
        assert_eq!(round_trip(&plain, true).unwrap(), plain);
        let ttl = plain.with_ttl(StateTtlConfig::new(std::time::Duration::from_secs(9)));
        assert_eq!(round_trip(&ttl, true).unwrap(), ttl);
        // The smallest StateInfo is what the readers' counts assume.
        let smallest = StateInfo::of::<(), (), (), ()>("s", StateKind::Value);
        let mut small = smallest.clone();
        small.key_type.clear();
        small.namespace_type.clear();
        small.value_type.clear();
        for with_ttl in [false, true] {
            let mut w = ByteWriter::new();
            write_state_info(&mut w, &small, with_ttl);
            assert_eq!(w.len(), min_state_info_bytes(with_ttl));
        }
    }

    #[test]
    fn only_a_map_state_has_a_user_key_type() {
        let mut value = StateInfo::of::<u64, (), (), u64>("v", StateKind::Value);
        value.user_key_type = "u64".into();
        assert!(matches!(
            round_trip(&value, false),
            Err(Error::Corrupt { .. })
        ));
        let map = StateInfo::of::<u64, (), u32, u64>("m", StateKind::Map);
        assert_eq!(round_trip(&map, false).unwrap(), map);
    }

    #[test]
    fn unknown_ttl_bytes_are_corrupt() {
        let ttl = StateInfo::of::<u64, (), (), u64>("v", StateKind::Value)
            .with_ttl(StateTtlConfig::new(std::time::Duration::from_secs(1)));
        let mut w = ByteWriter::new();
        write_state_info(&mut w, &ttl, true);
        let good = w.into_inner();
        // The flag, 11 TTL bytes, then the 4-byte schema version.
        let flag = good.len() - 4 - StateTtlConfig::ENCODED_BYTES - 1;
        // Another flag; a zero time to live; an unknown update type, visibility, time domain.
        for (at, byte) in [
            (flag, 2u8),
            (flag + 8, 0),
            (flag + 9, 3),
            (flag + 10, 0),
            (flag + 11, 9),
        ] {
            let mut bad = good.clone();
            if at == flag + 8 {
                bad[flag + 1..flag + 9].fill(0);
            } else {
                bad[at] = byte;
            }
            let mut r = ByteReader::new(&bad, "test");
            assert!(
                matches!(read_state_info(&mut r, true), Err(Error::Corrupt { .. })),
                "byte {at} = {byte}"
            );
        }
    }
}
