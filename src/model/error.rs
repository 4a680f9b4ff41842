//! The crate's error type.
//!
//! Errors are data: every failure a caller may want to react to has its own variant with the
//! facts needed to act on it (which state, which file, which key group). Backend-specific errors
//! (RocksDB's) are carried as messages so that no backend type leaks through the public API.

use std::path::PathBuf;

use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateKind;

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `statebackend`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `max_parallelism` must be in `1..=32768`.
    #[error(
        "max parallelism {max_parallelism} is out of bounds (1..={})",
        crate::model::key_group::MAX_MAX_PARALLELISM
    )]
    InvalidMaxParallelism {
        /// The rejected value.
        max_parallelism: u32,
    },
    /// The parallelism / operator index pair does not describe an operator of this job.
    #[error(
        "operator {index} of parallelism {parallelism} is invalid for max parallelism {max_parallelism}"
    )]
    InvalidOperator {
        /// The job's max parallelism.
        max_parallelism: u32,
        /// The requested parallelism.
        parallelism: u32,
        /// The requested operator index.
        index: u32,
    },
    /// A key hashed to a key group that this backend instance does not own.
    #[error("key belongs to key group {key_group}, outside this backend's range {range}")]
    KeyOutsideRange {
        /// The key's key group.
        key_group: KeyGroup,
        /// The range this backend owns.
        range: KeyGroupRange,
    },
    /// A state name was registered again with another kind or other types.
    #[error("state '{name}' is registered as {registered}, requested as {requested}")]
    StateMismatch {
        /// The state name.
        name: String,
        /// How it was registered first (kind and type names).
        registered: String,
        /// How it was requested now.
        requested: String,
    },
    /// A restored state's schema version has no chain of migrations to the registered one.
    #[error(
        "state '{state}' was written at schema version {from} and is registered at version \
         {to}, but no migration leads on from version {stuck_at}"
    )]
    NoMigrationPath {
        /// The state name.
        state: String,
        /// The restored state's schema version.
        from: u32,
        /// The registered schema version.
        to: u32,
        /// The version from which no declared migration starts.
        stuck_at: u32,
    },
    /// A restored state cannot become the registered one by migrating its values: its kind,
    /// key or namespace type changed, or its map user key type without a user key migration.
    #[error("state '{state}' cannot migrate from schema version {from} to {to}: {reason}")]
    IncompatibleMigration {
        /// The state name.
        state: String,
        /// The restored state's schema version.
        from: u32,
        /// The registered schema version.
        to: u32,
        /// What changed.
        reason: String,
    },
    /// A snapshot's operator has no state of that name.
    #[error("operator {operator:?} has no state {state:?} (it has {found:?})")]
    UnknownStateName {
        /// The state name asked for.
        state: String,
        /// The operator.
        operator: String,
        /// The states it has.
        found: Vec<String>,
    },
    /// A state handle that this backend did not issue.
    #[error("state handle {id} does not belong to this backend")]
    UnknownState {
        /// The handle's id.
        id: u32,
    },
    /// A state operation that does not fit the state's kind.
    #[error("state '{name}' is a {kind} state")]
    WrongKind {
        /// The state name.
        name: String,
        /// Its kind.
        kind: StateKind,
    },
    /// A state name that cannot be used.
    #[error("invalid state name {name:?}: {reason}")]
    InvalidStateName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A key, namespace or value could not be serialized.
    #[error("cannot encode a value of state '{state}': {message}")]
    Encode {
        /// The state name (or the context for non-state values).
        state: String,
        /// The codec's message.
        message: String,
    },
    /// Stored bytes could not be decoded as the state's registered type.
    #[error("cannot decode a value of state '{state}': {message}")]
    Decode {
        /// The state name.
        state: String,
        /// The codec's message.
        message: String,
    },
    /// A filesystem operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The RocksDB backend reported an error.
    #[error("RocksDB error: {message}")]
    RocksDb {
        /// RocksDB's message.
        message: String,
    },
    /// The working directory is held by another live backend.
    #[error("working directory {path} is in use by another backend: {message}")]
    DirectoryLocked {
        /// The directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// A file's content does not match its recorded checksum.
    #[error("checksum mismatch in {file}: expected {expected:#010x}, found {actual:#010x}")]
    ChecksumMismatch {
        /// The file (storage path).
        file: String,
        /// The recorded checksum.
        expected: u32,
        /// The checksum of the bytes read.
        actual: u32,
    },
    /// A file's size does not match its recorded size.
    #[error("size mismatch in {file}: expected {expected} bytes, found {actual}")]
    SizeMismatch {
        /// The file (storage path).
        file: String,
        /// The recorded size.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// A file written in a format (or version) this build does not understand.
    #[error("unsupported format in {file}: {found}, this build reads {supported}")]
    UnsupportedFormat {
        /// The file.
        file: String,
        /// What was found (magic or version).
        found: String,
        /// What this build supports.
        supported: String,
    },
    /// A file is structurally invalid (truncated, impossible lengths, bad fields).
    #[error("corrupt file {file}: {reason}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file that the metadata references is missing.
    #[error("missing file {file}")]
    MissingFile {
        /// The file (storage path).
        file: String,
    },
    /// A path read from metadata or given by a caller is not a safe relative path.
    #[error("invalid storage path {path:?}: {reason}")]
    InvalidPath {
        /// The rejected path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A checkpoint that does not exist (or is not completed) was requested.
    #[error("checkpoint {id} not found")]
    CheckpointNotFound {
        /// The checkpoint id.
        id: u64,
    },
    /// A checkpoint lifecycle call out of order (e.g. completing an unknown pending checkpoint).
    #[error("checkpoint {id}: {reason}")]
    CheckpointState {
        /// The checkpoint id.
        id: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint root holds no completed checkpoint at all (a new job's root): the one
    /// case in which starting with empty state is right.
    #[error("no restorable checkpoint in {root}")]
    NoRestorableCheckpoint {
        /// The checkpoint root.
        root: String,
    },
    /// A checkpoint root holds checkpoints, and none of them restores: each is damaged
    /// (missing or corrupt files, an unreadable `_metadata`). Starting empty would silently
    /// lose the job's state, so this is never mapped to "start fresh"; an operator repairs a
    /// checkpoint, restores from a savepoint, or discards them knowingly.
    #[error("no checkpoint in {root} restores, although it holds some: {damaged}")]
    NoVerifiedCheckpoint {
        /// The checkpoint root.
        root: String,
        /// Each checkpoint and why it does not restore.
        damaged: String,
    },
    /// Reads of the same file returned different contents: the storage (or something between
    /// it and this process) corrupts reads. Neither the file nor the checkpoint is taken for
    /// damaged on such evidence, and nothing is restored from it.
    #[error("reads of {file} disagree ({reason}); the storage path returns changing bytes")]
    UnstableRead {
        /// The file read.
        file: String,
        /// What the reads found.
        reason: String,
    },
    /// The restored data does not fit the backend it is restored into.
    #[error("cannot restore: {reason}")]
    Incompatible {
        /// What does not fit.
        reason: String,
    },
    /// Backend options that cannot work (for example a hash memtable without buckets).
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// Which option, and why.
        reason: String,
    },
    /// The instances given to complete a checkpoint or savepoint do not partition the job's
    /// key groups `[0, max_parallelism)` under one max parallelism, or the instances of a
    /// snapshot do not cover the key groups a restore asks for. Completing or restoring
    /// anyway would lose state silently.
    #[error("{what}: {reason}")]
    KeyGroupCoverage {
        /// The checkpoint, savepoint or restore concerned.
        what: String,
        /// Which key groups are missing, doubled or inconsistent.
        reason: String,
    },
    /// A checkpoint root holds a checkpoint whose `_metadata` cannot be understood (damaged,
    /// truncated, or written by a newer release). Garbage collection cannot know which shared
    /// files it needs, so it refuses to run until an operator repairs or discards it.
    #[error(
        "checkpoint {id} cannot be read ({reason}); its files are kept until it is repaired or discarded"
    )]
    UnreadableCheckpoint {
        /// The checkpoint id.
        id: u64,
        /// Why it cannot be read.
        reason: String,
    },
    /// A create-if-absent write found the file already there (another writer made it).
    #[error("{path} already exists")]
    AlreadyExists {
        /// The storage path.
        path: String,
    },
    /// The file was written but its directory could not be made durable; it may or may not
    /// survive a crash. A create-if-absent write that ends this way has removed the name again
    /// (best effort), so that nobody takes the write for done: treat it as failed, and do not
    /// report what it records (a completed checkpoint) as durable.
    #[error("{file} was written but its directory could not be made durable: {source}")]
    NotDurable {
        /// The storage path of the file.
        file: String,
        /// The error of the directory `fsync`.
        #[source]
        source: std::io::Error,
    },
    /// A newer coordinator opened this checkpoint root: this one is stale (a zombie after a
    /// failover) and may neither complete checkpoints nor delete anything.
    #[error("coordinator epoch {epoch} is fenced: epoch {newer} opened the root since")]
    Fenced {
        /// This coordinator's epoch.
        epoch: u64,
        /// The newer epoch found.
        newer: u64,
    },
    /// An object store request failed (after the store's own retries).
    #[error("object store error on {path}: {message}")]
    ObjectStore {
        /// The storage path concerned.
        path: String,
        /// The store's error.
        message: String,
    },
    /// A snapshot has no instance of the operator asked for.
    #[error("no operator {operator:?} in the snapshot (it holds {found:?})")]
    OperatorNotFound {
        /// The operator id asked for.
        operator: String,
        /// The operators the snapshot holds.
        found: Vec<String>,
    },
    /// A snapshot holds operators the new job does not have, and dropping their state was not
    /// allowed (`allow_non_restored`).
    #[error("the snapshot holds state of operators {operators:?} that the job does not have")]
    NonRestoredState {
        /// The snapshot's operators the job lacks.
        operators: Vec<String>,
    },
    /// Metadata of one backend instance was given to another (for example
    /// `notify_checkpoint_complete` with another instance's part of a checkpoint).
    #[error("metadata of instance {found} was given to instance {expected}")]
    ForeignInstance {
        /// The instance that received it.
        expected: String,
        /// The instance the metadata describes.
        found: String,
    },
    /// A data file's header records other key groups or another max parallelism than the
    /// metadata entry that lists it: the file belongs to another instance.
    #[error(
        "{file} holds key groups {found} of max parallelism {found_max_parallelism}; its metadata lists {expected} of {expected_max_parallelism}"
    )]
    KeyGroupsMismatch {
        /// The data file (storage path).
        file: String,
        /// The key groups the metadata lists.
        expected: KeyGroupRange,
        /// The max parallelism the metadata lists.
        expected_max_parallelism: u32,
        /// The key groups the file's header records.
        found: KeyGroupRange,
        /// The max parallelism the file's header records.
        found_max_parallelism: u32,
    },
    /// A RocksDB working directory that was not closed cleanly. The write-ahead log is off
    /// (durability comes from checkpoints), so its database may hold state that no checkpoint
    /// ever had: restore the instance from a checkpoint into it with
    /// `BackendConfig::replace_existing` set (a restore refuses it otherwise).
    #[error(
        "working directory {path} was not closed cleanly; restore a checkpoint or savepoint into it with the option replace_existing set (BackendConfig::with_replace_existing(true)), which replaces it"
    )]
    UncleanWorkingDirectory {
        /// The working directory.
        path: PathBuf,
    },
    /// A disk (or quota) is full. Recoverable: once space is freed, the same call can be
    /// retried on the same backend.
    #[error("no space left for {path}: {message}")]
    NoSpace {
        /// The directory or file being written.
        path: PathBuf,
        /// The underlying message.
        message: String,
    },
    /// A state handle used on a backend that did not issue it, or on a backend restored since
    /// it was issued: register the state again on the backend at hand.
    #[error(
        "state handle #{index} was issued by another backend (or before a restore); register the state again"
    )]
    ForeignHandle {
        /// The handle's index ([`crate::StateId::index`]) in the backend that issued it.
        index: u32,
    },
    /// A fault injected by a test storage wrapper.
    #[error("injected fault at operation {op}")]
    InjectedFault {
        /// The operation counter value at which the fault fired.
        op: u64,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    /// A full disk (or quota) is [`Error::NoSpace`], whichever layer hit it: callers react to
    /// it, and to nothing else, by freeing space and retrying.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if matches!(
            source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            return Error::NoSpace {
                path: path.into(),
                message: source.to_string(),
            };
        }
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the error says that stored data is damaged or missing (a file absent, of
    /// another size or checksum, structurally invalid, of an unknown format, listed for the
    /// wrong instance, or a snapshot missing key groups), as opposed to an operation that
    /// failed and may succeed when retried (I/O, a full disk, a network). Falling back to an
    /// older checkpoint is right for the first kind only.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Error::ChecksumMismatch { .. }
                | Error::SizeMismatch { .. }
                | Error::UnsupportedFormat { .. }
                | Error::Corrupt { .. }
                | Error::MissingFile { .. }
                | Error::InvalidPath { .. }
                | Error::KeyGroupCoverage { .. }
                | Error::KeyGroupsMismatch { .. }
                | Error::Decode { .. }
        )
    }

    /// An [`Error::Corrupt`] for `file`.
    pub(crate) fn corrupt(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            reason: reason.into(),
        }
    }
}
