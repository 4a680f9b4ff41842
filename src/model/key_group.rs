//! Key groups: the unit of state distribution and rescaling.
//!
//! Every key maps to one of `max_parallelism` key groups by hashing its canonical serialized
//! bytes (see [`crate::model::codec`]) with MurmurHash3 (x86, 32-bit, seed 0) and taking the hash
//! modulo `max_parallelism`. Operator instance `i` of `p` owns the contiguous range
//! `[ceil(i·maxP/p), ceil((i+1)·maxP/p))`. Both rules are specified in `docs/key-groups.md` so
//! that another implementation computes the same assignment; the tests pin known keys.

use std::fmt;

use crate::model::error::{Error, Result};

/// A key group number, `0..max_parallelism`.
pub type KeyGroup = u16;

/// The largest supported `max_parallelism` (key groups fit in two bytes).
pub const MAX_MAX_PARALLELISM: u32 = 32768;

/// The default `max_parallelism`.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// MurmurHash3, x86 32-bit variant, as published by Austin Appleby.
///
/// This is the key-group hash: fixed and language-independent, unlike Rust's `Hash`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        h ^= murmur3_scramble(u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    let mut k = 0u32;
    for (i, &b) in tail.iter().enumerate() {
        k |= u32::from(b) << (8 * i);
    }
    if !tail.is_empty() {
        h ^= murmur3_scramble(k);
    }
    murmur3_finalize(h, data.len() as u32)
}

/// [`murmur3_32`] (seed 0) over bytes that arrive in pieces: the result equals the hash of their
/// concatenation.
///
/// The key-group hash runs on every state access. Fed straight from the encoder (see
/// [`crate::model::codec::Codec::hash_encoded`]), it needs no buffer: writing a key's bytes to a
/// buffer and reading them back as 32-bit blocks stalls the CPU on store forwarding and stops
/// it from overlapping the next access's memory loads (measured: 212 ns against 80 ns per
/// lookup on a 1M-key heap state).
#[derive(Debug, Clone, Copy, Default)]
pub struct Murmur3Stream {
    h: u32,
    /// Bytes not yet hashed, little-endian, `pending_len` (0..=3 between calls) of them.
    pending: u64,
    pending_len: u32,
    len: u32,
}

impl Murmur3Stream {
    /// A hasher with nothing fed yet.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn block(&mut self, k: u32) {
        self.h ^= murmur3_scramble(k);
        self.h = self
            .h
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    /// Appends up to four bytes given as a little-endian word.
    #[inline]
    fn push(&mut self, word: u32, count: u32) {
        self.pending |= u64::from(word) << (8 * self.pending_len);
        self.pending_len += count;
        if self.pending_len >= 4 {
            self.block(self.pending as u32);
            self.pending >>= 32;
            self.pending_len -= 4;
        }
    }

    /// Feeds the next bytes.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) {
        // Murmur3 takes the length modulo 2^32, as the one-shot function does.
        self.len = self.len.wrapping_add(bytes.len() as u32);
        for chunk in bytes.chunks(4) {
            let mut word = 0u32;
            for (i, &b) in chunk.iter().enumerate() {
                word |= u32::from(b) << (8 * i);
            }
            self.push(word, chunk.len() as u32);
        }
    }

    /// The hash of everything fed.
    #[inline]
    pub fn finish(&self) -> u32 {
        let mut h = self.h;
        if self.pending_len > 0 {
            h ^= murmur3_scramble(self.pending as u32);
        }
        murmur3_finalize(h, self.len)
    }
}

#[inline]
fn murmur3_scramble(k: u32) -> u32 {
    k.wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593)
}

#[inline]
fn murmur3_finalize(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Maps serialized keys to key groups for one `max_parallelism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroupAssigner {
    max_parallelism: u32,
    /// `ceil(2^64 / max_parallelism)`: the hash modulo `max_parallelism` by two multiplications
    /// instead of a division (Lemire, Kaser, Kurz: "Faster remainder by direct computation",
    /// exact for every 32-bit dividend and divisor).
    modulo_magic: u64,
}

impl KeyGroupAssigner {
    /// An assigner for `max_parallelism` key groups.
    ///
    /// # Errors
    /// [`Error::InvalidMaxParallelism`] unless `1 <= max_parallelism <= 32768`.
    pub fn new(max_parallelism: u32) -> Result<Self> {
        check_max_parallelism(max_parallelism)?;
        Ok(Self {
            max_parallelism,
            // Wraps to 0 for max_parallelism 1, which makes every remainder 0, as it should be.
            modulo_magic: (u64::MAX / u64::from(max_parallelism)).wrapping_add(1),
        })
    }

    /// The number of key groups.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// The key group of `key`: its codec encoding streamed through MurmurHash3, never
    /// materialised (`codec::key_hash`).
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be serialized.
    #[inline]
    pub fn key_group_of<K: serde::Serialize + ?Sized>(&self, key: &K) -> Result<KeyGroup> {
        use crate::model::codec::{Codec, DefaultCodec};
        let mut hasher = Murmur3Stream::new();
        DefaultCodec::default()
            .hash_encoded(key, &mut hasher)
            .map_err(|e| Error::Encode {
                state: "<key>".into(),
                message: e.0,
            })?;
        Ok(self.key_group_of_hash(hasher.finish()))
    }

    /// The key group of a key, given its canonical serialized bytes.
    pub fn key_group_of_bytes(&self, key_bytes: &[u8]) -> KeyGroup {
        self.key_group_of_hash(murmur3_32(key_bytes, 0))
    }

    /// The key group of a key whose canonical bytes hash (MurmurHash3, seed 0) to `hash`.
    #[inline]
    pub fn key_group_of_hash(&self, hash: u32) -> KeyGroup {
        let low = self.modulo_magic.wrapping_mul(u64::from(hash));
        let remainder = ((u128::from(low) * u128::from(self.max_parallelism)) >> 64) as u32;
        // The remainder is below max_parallelism <= 32768, so it fits a u16.
        remainder as KeyGroup
    }
}

impl Default for KeyGroupAssigner {
    fn default() -> Self {
        match Self::new(DEFAULT_MAX_PARALLELISM) {
            Ok(assigner) => assigner,
            Err(_) => unreachable!("the default max parallelism is valid"),
        }
    }
}

fn check_max_parallelism(max_parallelism: u32) -> Result<()> {
    if (1..=MAX_MAX_PARALLELISM).contains(&max_parallelism) {
        Ok(())
    } else {
        Err(Error::InvalidMaxParallelism { max_parallelism })
    }
}

/// A contiguous, half-open range of key groups `[start, end)`: what one backend instance owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    start: u32,
    end: u32,
}

impl KeyGroupRange {
    /// The range `[start, end)`. An empty range (`start == end`) is allowed.
    ///
    /// # Errors
    /// [`Error::InvalidOperator`] if `start > end` or `end` exceeds 32768.
    pub fn new(start: u32, end: u32) -> Result<Self> {
        if start > end || end > MAX_MAX_PARALLELISM {
            return Err(Error::InvalidOperator {
                max_parallelism: end,
                parallelism: 0,
                index: start,
            });
        }
        Ok(Self { start, end })
    }

    /// All key groups of a job: `[0, max_parallelism)`.
    ///
    /// # Errors
    /// [`Error::InvalidMaxParallelism`] if `max_parallelism` is out of bounds.
    pub fn all(max_parallelism: u32) -> Result<Self> {
        check_max_parallelism(max_parallelism)?;
        Ok(Self {
            start: 0,
            end: max_parallelism,
        })
    }

    /// The key groups owned by operator instance `index` of `parallelism` instances.
    ///
    /// The ranges of `index = 0..parallelism` are contiguous, disjoint and cover
    /// `0..max_parallelism`; none is empty.
    ///
    /// # Errors
    /// [`Error::InvalidMaxParallelism`] for a bad `max_parallelism`; [`Error::InvalidOperator`]
    /// unless `1 <= parallelism <= max_parallelism` and `index < parallelism`.
    ///
    /// # Examples
    /// ```
    /// use statebackend::KeyGroupRange;
    /// let r = KeyGroupRange::for_operator(128, 3, 1)?;
    /// assert_eq!((r.start(), r.end()), (43, 86));
    /// # Ok::<(), statebackend::Error>(())
    /// ```
    pub fn for_operator(max_parallelism: u32, parallelism: u32, index: u32) -> Result<Self> {
        check_max_parallelism(max_parallelism)?;
        if parallelism == 0 || parallelism > max_parallelism || index >= parallelism {
            return Err(Error::InvalidOperator {
                max_parallelism,
                parallelism,
                index,
            });
        }
        let (m, p, i) = (
            u64::from(max_parallelism),
            u64::from(parallelism),
            u64::from(index),
        );
        // ceil(i*m/p) .. ceil((i+1)*m/p); all values <= m <= 32768, so the casts are lossless.
        let start = (i * m).div_ceil(p) as u32;
        let end = ((i + 1) * m).div_ceil(p) as u32;
        Ok(Self { start, end })
    }

    /// The operator instance (of `parallelism`) that owns `key_group`: the inverse of
    /// [`KeyGroupRange::for_operator`].
    ///
    /// # Errors
    /// As [`KeyGroupRange::for_operator`], and [`Error::InvalidOperator`] if
    /// `key_group >= max_parallelism`.
    pub fn operator_for_key_group(
        max_parallelism: u32,
        parallelism: u32,
        key_group: KeyGroup,
    ) -> Result<u32> {
        check_max_parallelism(max_parallelism)?;
        if parallelism == 0
            || parallelism > max_parallelism
            || u32::from(key_group) >= max_parallelism
        {
            return Err(Error::InvalidOperator {
                max_parallelism,
                parallelism,
                index: u32::from(key_group),
            });
        }
        Ok((u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32)
    }

    /// First key group of the range.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// One past the last key group of the range.
    pub fn end(&self) -> u32 {
        self.end
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether the range holds `key_group`.
    #[inline]
    pub fn contains(&self, key_group: KeyGroup) -> bool {
        (self.start..self.end).contains(&u32::from(key_group))
    }

    /// The key groups of the range, ascending.
    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> + use<> {
        // end <= 32768, so every member fits a u16.
        (self.start..self.end).map(|g| g as KeyGroup)
    }

    /// The key groups both ranges hold.
    pub fn intersect(&self, other: &KeyGroupRange) -> KeyGroupRange {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end).max(start);
        KeyGroupRange { start, end }
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Checks that `range` fits in `max_parallelism` key groups.
///
/// # Errors
/// [`Error::InvalidOperator`] if it does not.
pub fn check_range(max_parallelism: u32, range: KeyGroupRange) -> Result<()> {
    if range.end() > max_parallelism {
        return Err(Error::InvalidOperator {
            max_parallelism,
            parallelism: 0,
            index: range.end(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn stream_equals_one_shot_for_every_split() {
        let data = b"The quick brown fox jumps over the lazy dog";
        for len in 0..=data.len() {
            let input = &data[..len];
            for first in 0..=len {
                for second in first..=len {
                    let mut s = Murmur3Stream::new();
                    s.write(&input[..first]);
                    s.write(&input[first..second]);
                    s.write(&input[second..]);
                    assert_eq!(s.finish(), murmur3_32(input, 0), "{len} {first} {second}");
                }
            }
        }
    }

    #[test]
    fn modulo_by_multiplication_is_exact() {
        let hashes = [0, 1, 2, 127, 128, 32767, 32768, u32::MAX - 1, u32::MAX];
        let mut x = 0x9E37_79B9u32;
        for max_parallelism in 1..=MAX_MAX_PARALLELISM {
            let a = KeyGroupAssigner::new(max_parallelism).unwrap();
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            for h in hashes.into_iter().chain([x, x ^ 0xFFFF_0000]) {
                assert_eq!(
                    u32::from(a.key_group_of_hash(h)),
                    h % max_parallelism,
                    "{h} % {max_parallelism}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn stream_equals_one_shot(pieces in proptest::collection::vec(
            proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0..8)) {
            let mut s = Murmur3Stream::new();
            let mut all = Vec::new();
            for p in &pieces {
                s.write(p);
                all.extend_from_slice(p);
            }
            proptest::prop_assert_eq!(s.finish(), murmur3_32(&all, 0));
        }
    }

    #[test]
    fn inverse_matches_ranges() {
        for p in [1, 2, 3, 7, 100, 128] {
            for i in 0..p {
                let r = KeyGroupRange::for_operator(128, p, i).unwrap();
                for g in r.iter() {
                    assert_eq!(KeyGroupRange::operator_for_key_group(128, p, g).unwrap(), i);
                }
            }
        }
    }
}
