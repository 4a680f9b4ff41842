//! Checkpoints: incremental uploads, retention and GC, restore and rescale, crash and fault
//! sweeps, and the safety properties of `docs/reliability.md`.
//!
//! One test binary per area, not one per file: each binary links RocksDB, and linking dominated
//! `cargo test` on two cores.

#[path = "../common/mod.rs"]
mod common;

mod checkpoint_concurrency;
mod checkpoint_crash_sweep;
mod checkpoint_fault_property;
mod checkpoint_incremental;
mod checkpoint_rescale;
mod checkpoint_restore;
mod checkpoint_retention_property;
mod checkpoint_safety;
mod claim_other_root;
mod driver;
mod heap_snapshot_leftovers;
mod object_storage;
mod operator_state;
mod operators;
mod restore_coverage;
mod restore_crash_sweep;
mod stale_coordinator;
mod timers;
mod type_names;
