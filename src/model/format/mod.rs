//! The crate's file formats and names, as pure data: [`metadata`] (`_metadata`), [`data_file`]
//! (the canonical data file), [`view`] (canonical rows in and out of a backend), [`layout`]
//! (names in a checkpoint root) and [`path`] (validated storage paths).
//!
//! This module itself holds the little-endian binary encoding they share. Writers append to a
//! `Vec<u8>`; `ByteReader` checks every length against the bytes left before it allocates,
//! and reports problems as [`Error::Corrupt`] naming the file, so no input can make a reader
//! panic or allocate unboundedly.

pub mod data_file;
pub mod layout;
pub mod metadata;
pub mod path;
pub mod view;

use crate::model::error::{Error, Result};

/// Appends little-endian fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct ByteWriter {
    pub(crate) buf: Vec<u8>,
}

impl ByteWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// `u32` length, then the bytes.
    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        // Every length the crate writes is far below 4 GiB (rows and names); saturating keeps
        // the writer total and a reader rejects the mismatch.
        self.u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.raw(bytes)
    }

    /// `u32` length, then UTF-8.
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends the crc32 of everything written so far.
    pub(crate) fn crc_of_all(&mut self) -> &mut Self {
        let crc = crc32fast::hash(&self.buf);
        self.u32(crc)
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads little-endian fields from a slice, with bounds checks and errors naming the file.
#[derive(Debug)]
pub(crate) struct ByteReader<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(data: &'a [u8], file: &'a str) -> Self {
        Self { data, pos: 0, file }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corrupt(
            self.file,
            format!("{} (at byte {})", reason.into(), self.pos),
        )
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.corrupt(format!(
                "{what}: needs {n} bytes, {} left",
                self.remaining()
            )));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A `u32`-length-prefixed byte string, at most `max` bytes.
    pub(crate) fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8]> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(self.corrupt(format!("{what}: length {len} exceeds the limit {max}")));
        }
        self.take(len, what)
    }

    /// A `u32`-length-prefixed UTF-8 string, at most `max` bytes.
    pub(crate) fn str(&mut self, max: usize, what: &str) -> Result<String> {
        let bytes = self.bytes(max, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.corrupt(format!("{what}: not UTF-8")))
    }

    /// A count of items each at least `min_item_bytes` long: rejected if the bytes left cannot
    /// hold that many, so a corrupt count never drives a large allocation.
    pub(crate) fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(self.corrupt(format!(
                "{what}: {n} items cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n)
    }

    /// An empty vector for `count` items about to be read from here (a count
    /// [`ByteReader::count`] checked), with room reserved for no more items than the bytes left
    /// would fill in memory. `count` alone is not a bound: an item in memory is often several
    /// times its smallest encoding (an empty byte string: 4 bytes read, a 24-byte `Vec`), so
    /// reserving `count` items let a crafted input ask for about 6 times its size before its
    /// first item failed to decode. Items beyond the reservation grow the vector as they are
    /// read, each having consumed input.
    pub(crate) fn vec_for<T>(&self, count: usize) -> Vec<T> {
        let fit = self.remaining() / std::mem::size_of::<T>().max(1);
        Vec::with_capacity(count.min(fit))
    }

    pub(crate) fn expect_end(&self, what: &str) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.corrupt(format!(
                "{} unexpected bytes after {what}",
                self.remaining()
            )));
        }
        Ok(())
    }
}

/// Checks that `data` is as long as the header at its start declares: at least `header` bytes
/// (ending in the body length, a u32 at `length_at`), then that many body bytes and a trailing
/// crc32. A shorter file is [`Error::Corrupt`] saying "truncated": its last four bytes are not
/// its checksum, so comparing them with one would report a mismatch against a value that was
/// never written.
pub(crate) fn check_declared_length(
    data: &[u8],
    header: usize,
    length_at: usize,
    file: &str,
) -> Result<()> {
    let smallest = header + 4;
    if data.len() < smallest {
        return Err(Error::corrupt(
            file,
            format!(
                "truncated: {} bytes, fewer than the {smallest} of the smallest such file",
                data.len()
            ),
        ));
    }
    let mut length = [0u8; 4];
    length.copy_from_slice(&data[length_at..length_at + 4]);
    let declared = smallest as u64 + u64::from(u32::from_le_bytes(length));
    if (data.len() as u64) < declared {
        return Err(Error::corrupt(
            file,
            format!(
                "truncated: {} bytes, where its header declares {declared}",
                data.len()
            ),
        ));
    }
    Ok(())
}

/// Splits `data` into body and trailing crc32, checking the crc. Errors name `file`.
pub(crate) fn check_trailing_crc<'a>(data: &'a [u8], file: &str) -> Result<&'a [u8]> {
    if data.len() < 4 {
        return Err(Error::corrupt(file, "shorter than its checksum"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(body);
    if expected != actual {
        return Err(Error::ChecksumMismatch {
            file: file.to_owned(),
            expected,
            actual,
        });
    }
    Ok(body)
}

/// Size and crc32 of a local file, read in a streaming fashion.
pub(crate) fn file_size_and_crc32(path: &std::path::Path) -> Result<(u64, u32)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize()))
}

/// Checks a fetched file against its metadata entry.
pub(crate) fn verify_local_file(
    local: &std::path::Path,
    entry: &crate::model::format::metadata::FileEntry,
) -> Result<()> {
    let (size, crc) = file_size_and_crc32(local)?;
    if size != entry.size {
        return Err(Error::SizeMismatch {
            file: entry.path.to_string(),
            expected: entry.size,
            actual: size,
        });
    }
    if crc != entry.crc32 {
        return Err(Error::ChecksumMismatch {
            file: entry.path.to_string(),
            expected: entry.crc32,
            actual: crc,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut w = ByteWriter::new();
        w.u8(1).u16(2).u32(3).u64(4).str("five").bytes(&[6, 7]);
        let data = w.into_inner();
        let mut r = ByteReader::new(&data, "f");
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.u32("c").unwrap(), 3);
        assert_eq!(r.u64("d").unwrap(), 4);
        assert_eq!(r.str(10, "e").unwrap(), "five");
        assert_eq!(r.bytes(10, "f").unwrap(), &[6, 7]);
        r.expect_end("test").unwrap();
        let mut r = ByteReader::new(&data[..3], "f");
        r.u8("a").unwrap();
        assert!(r.u32("c").is_err());
    }

    #[test]
    fn huge_count_is_rejected_before_allocation() {
        let data = u32::MAX.to_le_bytes();
        let mut r = ByteReader::new(&data, "f");
        assert!(matches!(r.count(1, "n"), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_short_file_is_truncated_not_a_checksum_mismatch() {
        let mut w = ByteWriter::new();
        w.raw(b"HEAD").u32(7).raw(b"payload").crc_of_all();
        let data = w.into_inner();
        assert!(check_declared_length(&data, 8, 4, "f").is_ok());
        for len in [0, 3, 11, data.len() - 1] {
            match check_declared_length(&data[..len], 8, 4, "f") {
                Err(Error::Corrupt { reason, .. }) => {
                    assert!(reason.starts_with("truncated"), "{reason}")
                }
                other => panic!("{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn reserved_capacity_never_exceeds_the_bytes_left() {
        // 4,000 bytes: a count of 1,000 four-byte items passes `count`, but 1,000 `Vec`s of
        // 24 bytes would need 24,000.
        let mut data = 1000u32.to_le_bytes().to_vec();
        data.resize(4004, 0);
        let mut r = ByteReader::new(&data, "f");
        let n = r.count(4, "items").unwrap();
        assert_eq!(n, 1000);
        let v: Vec<Vec<u8>> = r.vec_for(n);
        assert!(v.capacity() * std::mem::size_of::<Vec<u8>>() <= r.remaining());
        assert!(v.capacity() >= 4000 / 24);
        // Small items: the count is the bound.
        let v: Vec<u8> = r.vec_for(n);
        assert_eq!(v.capacity(), 1000);
    }

    #[test]
    fn crc_detects_flips() {
        let mut w = ByteWriter::new();
        w.str("payload").crc_of_all();
        let mut data = w.into_inner();
        assert!(check_trailing_crc(&data, "f").is_ok());
        data[2] ^= 1;
        assert!(matches!(
            check_trailing_crc(&data, "f"),
            Err(Error::ChecksumMismatch { .. })
        ));
    }
}
