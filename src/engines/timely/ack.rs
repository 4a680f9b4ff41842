//! [`Ack`]: what a stateful operator instance sends the committer for each snapshot it took.

use serde::{Deserialize, Serialize};

use crate::model::error::Result;
use crate::model::format::metadata::{InstanceMetadata, SnapshotKind, SnapshotMetadata};

/// Which snapshot an [`Ack`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    /// Checkpoint `id` of the root.
    Checkpoint(u64),
    /// The savepoint at position `index` of [`super::Checkpointing::savepoints`].
    Savepoint(usize),
}

/// One instance's part of one snapshot, sent to worker 0 at the snapshot's epoch: the committer
/// completes the snapshot once its input frontier passes that epoch, that is once every
/// instance has sent its part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    /// The snapshot.
    pub target: Target,
    /// The epoch the snapshot holds the state at.
    pub epoch: u64,
    /// The instance's metadata, encoded as a one-instance `_metadata`
    /// (`docs/checkpoint-layout.md`); or why the instance could not take or upload its part.
    pub part: std::result::Result<Vec<u8>, String>,
    /// How long the synchronous part held the operator, in microseconds.
    pub sync_micros: u64,
    /// Bytes the instance uploaded for this snapshot.
    pub bytes_uploaded: u64,
}

impl Ack {
    /// Encodes an instance's part for the wire: the checkpoint metadata format, so the
    /// receiving side validates it as it validates any `_metadata`.
    pub(crate) fn encode_part(part: InstanceMetadata) -> Vec<u8> {
        SnapshotMetadata {
            kind: SnapshotKind::Checkpoint,
            id: 0,
            created_ms: 0,
            instances: vec![part],
            engine: Default::default(),
        }
        .encode()
    }

    /// The instance's part, decoded and checked.
    ///
    /// # Errors
    /// [`crate::model::error::Error::CheckpointState`] for a failed part; format errors for bytes that are not
    /// one instance's metadata.
    pub(crate) fn decode_part(&self) -> Result<InstanceMetadata> {
        let bytes =
            self.part
                .as_ref()
                .map_err(|reason| crate::model::error::Error::CheckpointState {
                    id: match self.target {
                        Target::Checkpoint(id) => id,
                        Target::Savepoint(_) => 0,
                    },
                    reason: format!("an instance failed its part: {reason}"),
                })?;
        let meta = SnapshotMetadata::decode(bytes, "acknowledged instance metadata")?;
        match <[InstanceMetadata; 1]>::try_from(meta.instances) {
            Ok([part]) => Ok(part),
            Err(found) => Err(crate::model::error::Error::corrupt(
                "acknowledged instance metadata",
                format!("holds {} instances, not one", found.len()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::any::AnyBackend;
    use crate::backends::config::BackendConfig;
    use crate::model::key_group::KeyGroupRange;
    use crate::storage::LocalDirStorage;

    #[test]
    fn a_part_survives_the_wire_and_garbage_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::model::error::Error::io(".", e))?;
        let storage = LocalDirStorage::new(dir.path())?;
        let mut backend = AnyBackend::open(&BackendConfig::heap(128, KeyGroupRange::new(0, 64)?))?;
        let (part, _) = backend.snapshot(1)?.upload(&storage)?;
        let ack = Ack {
            target: Target::Checkpoint(1),
            epoch: 9,
            part: Ok(Ack::encode_part(part.clone())),
            sync_micros: 0,
            bytes_uploaded: 0,
        };
        assert_eq!(ack.decode_part()?, part);
        let garbage = Ack {
            part: Ok(vec![1, 2, 3]),
            ..ack.clone()
        };
        assert!(garbage.decode_part().is_err());
        let failed = Ack {
            part: Err("disk full".into()),
            ..ack
        };
        assert!(matches!(
            failed.decode_part(),
            Err(crate::model::error::Error::CheckpointState { id: 1, .. })
        ));
        Ok(())
    }
}
