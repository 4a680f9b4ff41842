//! The on-disk formats: savepoints (round trip, golden fixtures, crash sweep), data files,
//! decoding limits, corruption, the fuzz corpus, and local storage.
//!
//! One test binary per area, not one per file: each binary links RocksDB, and linking dominated
//! `cargo test` on two cores.

#[path = "../common/mod.rs"]
mod common;

mod data_file_identity;
mod decode_limits;
mod format_corruption;
mod fuzz_corpus;
mod savepoint_crash_sweep;
mod savepoint_golden;
mod savepoint_round_trip;
mod state_processor;
mod storage_local;
