//! Checkpoints: the library's own, frequent, automatic recovery snapshots.
//!
//! - [`coordinator`]: completing checkpoints (`_metadata`), retention and garbage collection.
//! - [`fence`]: coordinator epochs, so that a stale coordinator can neither complete nor
//!   delete.
//! - [`lease`]: the record by which a live coordinator tells tools that delete to wait.
//! - [`restore`]: restoring an instance into any [`CheckpointedBackend`], with file
//!   verification and key-group coverage checks.
//! - [`local_recovery`]: a local copy of each instance's last completed checkpoint, and
//!   restores that download only what it lacks.
//! - [`metadata`] (the `_metadata` format) and [`layout`] (names in a checkpoint root) live in
//!   the model and are re-exported here.
//!
//! A checkpoint of one instance has two phases: [`AnyBackend::snapshot`] (or
//! [`CheckpointedBackend::snapshot`]) at the barrier, then [`PendingSnapshot::upload`] on any
//! thread, which returns the instance's metadata for [`CheckpointCoordinator::complete`].
//! `docs/checkpoint-layout.md` describes the layout and the lifecycle.
//!
//! [`CheckpointedBackend`]: crate::backends::interface::CheckpointedBackend
//! [`CheckpointedBackend::snapshot`]: crate::backends::interface::CheckpointedBackend::snapshot
//! [`AnyBackend::snapshot`]: crate::AnyBackend::snapshot

pub mod coordinator;
pub mod fence;
pub mod lease;
pub mod local_recovery;
pub mod restore;

pub use crate::backends::interface::{PendingSnapshot, UploadStats};
pub use crate::model::format::{layout, metadata};
pub use coordinator::{
    CheckpointCoordinator, DEFAULT_RETAINED_CHECKPOINTS, GcReport, latest_restorable,
    latest_restorable_skipping, verify_files, verify_files_stable,
};
pub use local_recovery::{LocalRecovery, RecoveryStats};
pub use metadata::{
    FileEntry, InstanceId, InstanceMetadata, SnapshotKind, SnapshotMetadata, check_partition,
};
pub use restore::{RestoreMode, restore_instance, restore_instance_into};
