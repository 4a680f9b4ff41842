//! Checkpoints: the library's own, frequent, automatic recovery snapshots.
//!
//! - [`snapshot`]: the two phases of one instance's checkpoint (sync at the barrier, async upload).
//! - [`coordinator`]: completing checkpoints (`_metadata`), retention and garbage collection.
//! - [`metadata`]: the `_metadata` format.
//! - [`layout`]: names in a checkpoint root.
//! - [`restore`]: restoring an instance, with file verification.
//!
//! `docs/checkpoint-layout.md` describes the layout and the lifecycle.

pub mod coordinator;
pub mod layout;
pub mod metadata;
pub mod restore;
pub mod snapshot;

pub use coordinator::{
    CheckpointCoordinator, DEFAULT_RETAINED_CHECKPOINTS, GcReport, verify_files,
};
pub use metadata::{
    FileEntry, InstanceId, InstanceMetadata, SnapshotKind, SnapshotMetadata, check_partition,
};
pub use restore::{RestoreMode, restore_instance};
pub use snapshot::{HeapSnapshot, PendingSnapshot, UploadStats};

pub(crate) use crate::format::verify_local_file;
