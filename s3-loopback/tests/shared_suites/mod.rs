//! The checkpoint suites of the library's `tests/checkpoints`, compiled unchanged against the
//! root this test binary's `crate::root::open` gives.

#[path = "../../../tests/checkpoints/checkpoint_concurrency.rs"]
mod checkpoint_concurrency;
#[path = "../../../tests/checkpoints/checkpoint_crash_sweep.rs"]
mod checkpoint_crash_sweep;
#[path = "../../../tests/checkpoints/checkpoint_incremental.rs"]
mod checkpoint_incremental;
#[path = "../../../tests/checkpoints/checkpoint_rescale.rs"]
mod checkpoint_rescale;
#[path = "../../../tests/checkpoints/checkpoint_restore.rs"]
mod checkpoint_restore;
#[path = "../../../tests/checkpoints/checkpoint_retention_property.rs"]
mod checkpoint_retention_property;
#[path = "../../../tests/checkpoints/claim_other_root.rs"]
mod claim_other_root;
#[path = "../../../tests/checkpoints/driver.rs"]
mod driver;
#[path = "../../../tests/checkpoints/operator_state.rs"]
mod operator_state;
#[path = "../../../tests/checkpoints/operators.rs"]
mod operators;
#[path = "../../../tests/checkpoints/timers.rs"]
mod timers;
#[path = "../../../tests/checkpoints/type_names.rs"]
mod type_names;
#[path = "../../../tests/checkpoints/untrusted_storage.rs"]
mod untrusted_storage;
