//! Layer 1, the model: pure data and formats, no backend and no storage. Key groups, codecs,
//! the state API (descriptors, handles, the [`state::KeyedStateBackend`] trait, the row
//! layout), errors, and the file formats (`_metadata`, data files, names in a root).
//!
//! Imports point down only: `model` ← `storage` ← `backends` ← `runtime` ← `cli`
//! (`docs/architecture.md`).

pub mod codec;
pub mod error;
pub mod format;
pub mod key_group;
pub mod state;
