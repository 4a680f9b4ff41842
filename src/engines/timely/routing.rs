//! Routing records to the worker that owns their key group.
//!
//! Worker `w` of `peers` owns the key groups [`KeyGroupRange::for_operator`] gives it, the
//! ranges Flink gives operator instances. Timely's exchange sends a record to worker
//! `h % peers` (or `h & (peers - 1)` for a power of two) for the `h` the exchange function
//! returns; returning the owner's index, which is below `peers`, routes exactly to the owner
//! under both rules. Routing and state ownership are computed by the same two functions, so
//! they cannot disagree: a record always reaches the backend that holds its key's state.

#[cfg(doc)]
use crate::model::error::Error;
use crate::model::error::Result;
use crate::model::key_group::{KeyGroupAssigner, KeyGroupRange};
use crate::model::state::StateKey;

/// Key-group routing of one job: its max parallelism and its worker count.
#[derive(Debug, Clone, Copy)]
pub struct KeyGroupRouting {
    assigner: KeyGroupAssigner,
    max_parallelism: u32,
    peers: u32,
}

impl KeyGroupRouting {
    /// Routing over `peers` workers for a job of `max_parallelism` key groups.
    ///
    /// # Errors
    /// [`Error::InvalidMaxParallelism`] for a max parallelism outside `1..=32768`;
    /// [`Error::InvalidOperator`] for no workers or more workers than key groups.
    pub fn new(max_parallelism: u32, peers: usize) -> Result<Self> {
        let assigner = KeyGroupAssigner::new(max_parallelism)?;
        let peers = u32::try_from(peers).unwrap_or(u32::MAX);
        // Checks `1 <= peers <= max_parallelism` once, so `worker_of` cannot fail on it.
        KeyGroupRange::for_operator(max_parallelism, peers, 0)?;
        Ok(Self {
            assigner,
            max_parallelism,
            peers,
        })
    }

    /// The number of workers.
    pub fn peers(&self) -> usize {
        self.peers as usize
    }

    /// The key groups worker `index` owns.
    ///
    /// # Errors
    /// [`Error::InvalidOperator`] if `index` is not below the worker count.
    pub fn range_of(&self, index: usize) -> Result<KeyGroupRange> {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        KeyGroupRange::for_operator(self.max_parallelism, self.peers, index)
    }

    /// The index of the worker that owns `key`'s key group: what an exchange function returns.
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be serialized.
    pub fn worker_of<K: StateKey>(&self, key: &K) -> Result<u64> {
        let group = self.assigner.key_group_of(key)?;
        let owner = KeyGroupRange::operator_for_key_group(self.max_parallelism, self.peers, group)?;
        Ok(u64::from(owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_routed_to_the_worker_whose_range_holds_its_key_group() -> Result<()> {
        for peers in [1usize, 3, 4, 7] {
            let routing = KeyGroupRouting::new(128, peers)?;
            let assigner = KeyGroupAssigner::new(128)?;
            for key in 0u64..2_000 {
                let worker = routing.worker_of(&key)? as usize;
                assert!(worker < peers);
                let group = assigner.key_group_of(&key)?;
                assert!(
                    routing.range_of(worker)?.contains(group),
                    "key {key}, {peers} peers"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn more_workers_than_key_groups_is_refused() {
        assert!(KeyGroupRouting::new(4, 5).is_err());
        assert!(KeyGroupRouting::new(4, 0).is_err());
    }
}
