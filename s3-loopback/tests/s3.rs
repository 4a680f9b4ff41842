//! Checkpoint storage over the S3 protocol: the shared checkpoint suites, and faults a real
//! S3 shows (throttling, errors, lost responses, slowness, a lost create race, a stale second
//! coordinator), against `s3s-fs` on loopback.
// The shared test code keeps the library's minimum Rust (1.85), which has no let chains.
#![allow(clippy::collapsible_if)]

#[path = "../../tests/common/mod.rs"]
mod common;

mod protocol;
mod shared_suites;

use std::sync::OnceLock;

use statebackend_s3_loopback::LoopbackS3;

/// The server every root of this binary lives on (fault tests start their own).
fn server() -> &'static LoopbackS3 {
    static SERVER: OnceLock<LoopbackS3> = OnceLock::new();
    SERVER.get_or_init(|| LoopbackS3::start().expect("start the loopback S3 server"))
}

/// Roots on the S3 server: one prefix per directory name, so that opening the same directory
/// again opens the same root.
mod root {
    use std::hash::{Hash, Hasher};
    use std::path::Path;
    use std::sync::Arc;

    use statebackend::Result;
    use statebackend::storage::CheckpointStorage;

    /// A child process would start a server of its own.
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    pub const SEEN_BY_OTHER_PROCESSES: bool = false;

    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<dyn CheckpointStorage>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        dir.as_ref().hash(&mut hasher);
        let prefix = format!("roots/{:016x}", hasher.finish());
        Ok(Arc::new(
            super::server()
                .storage(&prefix)?
                .with_transfer_concurrency(4),
        ))
    }
}
