//! The fault layer's own tests: each fault does what the crate docs say, seen through the S3
//! client (`object_store`) or the storage on it, with the requests counted.

use std::sync::Arc;

use statebackend::storage::object_store::path::Path as ObjectPath;
use statebackend::storage::object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use statebackend::storage::{CheckpointStorage, StoragePath};
use statebackend::{Error, Result};
use statebackend_s3_loopback::{Fault, FaultRule, LoopbackS3, RequestKind};

fn sp(path: &str) -> StoragePath {
    StoragePath::parse(path).unwrap()
}

fn start() -> LoopbackS3 {
    LoopbackS3::start().expect("start the loopback S3 server")
}

fn listed(storage: &dyn CheckpointStorage) -> Vec<String> {
    storage
        .list(None)
        .unwrap()
        .into_iter()
        .map(|o| o.path.to_string())
        .collect()
}

/// The S3 client itself (no storage layer and its retries), on a runtime of its own.
struct Client {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new(server: &LoopbackS3, retries: usize) -> Self {
        Self {
            store: Arc::new(server.client(retries).unwrap()),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn create(&self, key: &str, data: &[u8]) -> std::result::Result<(), String> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.runtime
            .block_on(self.store.put_opts(
                &ObjectPath::from(key),
                PutPayload::from(data.to_vec()),
                options,
            ))
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }

    fn exists(&self, key: &str) -> bool {
        self.runtime
            .block_on(self.store.head(&ObjectPath::from(key)))
            .is_ok()
    }
}

#[test]
fn a_listing_leaves_out_the_selected_objects_for_the_next_n_listings() -> Result<()> {
    let server = start();
    let storage = server.storage("root")?;
    for name in [
        "chk-0000000001/_metadata",
        "chk-0000000002/_metadata",
        "shared/a",
    ] {
        storage.put(&sp(name), name.as_bytes())?;
    }
    let all = listed(&storage);
    assert_eq!(all.len(), 3);
    // The next two listings that would show checkpoint 1's `_metadata` leave it out; a listing
    // without it (another prefix) does not count.
    server.inject(
        FaultRule::new(Fault::OmitFromListing)
            .key_contains("chk-0000000001/_metadata")
            .times(2),
    );
    assert_eq!(storage.list(Some(&sp("shared")))?.len(), 1);
    let before = server.counts();
    for _ in 0..2 {
        assert_eq!(
            listed(&storage),
            ["chk-0000000002/_metadata", "shared/a"],
            "omitted"
        );
    }
    assert_eq!(server.counts().since(&before).faulted, 2);
    assert_eq!(listed(&storage), all, "two listings only");
    // Always, by predicate: every `_metadata`, until the faults are cleared. The objects are
    // there all along.
    server.inject(
        FaultRule::new(Fault::OmitFromListing)
            .key_matches(|key| key.ends_with("/_metadata"))
            .always(),
    );
    for _ in 0..3 {
        assert_eq!(listed(&storage), ["shared/a"]);
    }
    assert!(storage.exists(&sp("chk-0000000001/_metadata"))?);
    server.clear_faults();
    assert_eq!(listed(&storage), all);
    Ok(())
}

#[test]
fn a_flipped_get_returns_other_bytes_for_the_next_n_gets_of_the_key() -> Result<()> {
    let server = start();
    let storage = server.storage("root")?;
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    storage.put(&sp("shared/file"), &data)?;
    storage.put(&sp("shared/other"), &data)?;
    server.inject(
        FaultRule::new(Fault::FlipBit(10))
            .key_contains("shared/file")
            .times(2),
    );
    assert_eq!(storage.get(&sp("shared/other"))?, data, "another key");
    for _ in 0..2 {
        let flipped = storage.get(&sp("shared/file"))?;
        assert_eq!(flipped.len(), data.len());
        let differing: Vec<usize> = (0..data.len()).filter(|&i| flipped[i] != data[i]).collect();
        assert_eq!(differing, [10]);
        assert_eq!(flipped[10] ^ data[10], 1);
    }
    assert_eq!(server.counts().faulted, 2);
    assert_eq!(storage.get(&sp("shared/file"))?, data, "two GETs only");
    // HEAD is not a GET: the size stays right.
    server.inject(FaultRule::new(Fault::FlipBit(0)).always());
    assert_eq!(storage.size(&sp("shared/file"))?, Some(1000));
    assert_ne!(storage.get(&sp("shared/file"))?, data);
    Ok(())
}

#[test]
fn an_acknowledged_put_is_lost() -> Result<()> {
    let server = start();
    let storage = server.storage("root")?;
    server.inject(
        FaultRule::new(Fault::AcknowledgeAndLose)
            .key_contains("_metadata")
            .times(2),
    );
    // A GET of the key does not use the rule up: it applies to PUTs only.
    assert!(matches!(
        storage.get(&sp("chk-0000000001/_metadata")),
        Err(Error::MissingFile { .. })
    ));
    storage.put(&sp("chk-0000000001/_metadata"), b"lost")?;
    storage.put_new(&sp("chk-0000000002/_metadata"), b"lost too")?;
    storage.put(&sp("shared/kept"), b"kept")?;
    assert_eq!(server.counts().faulted, 2);
    assert_eq!(storage.size(&sp("chk-0000000001/_metadata"))?, None);
    assert_eq!(storage.size(&sp("chk-0000000002/_metadata"))?, None);
    assert_eq!(storage.get(&sp("shared/kept"))?, b"kept");
    // Two PUTs only.
    storage.put(&sp("chk-0000000001/_metadata"), b"kept")?;
    assert_eq!(storage.get(&sp("chk-0000000001/_metadata"))?, b"kept");
    Ok(())
}

/// A reset connection is an error the client does not retry for a conditional PUT (it is not
/// idempotent), whether or not the PUT took effect; a connection closed before the answer is
/// retried whatever the request. `conditional` selects create-if-absent PUTs only.
#[test]
fn resets_and_closes_after_serving_or_not() -> Result<()> {
    let server = start();
    let client = Client::new(&server, 3);
    // Not served: nothing stored, one request.
    server.inject(
        FaultRule::new(Fault::Reset)
            .on(RequestKind::Put)
            .conditional(),
    );
    let before = server.counts();
    let reset = client.create("a", b"a");
    assert!(reset.is_err(), "{reset:?}");
    let counts = server.counts().since(&before);
    assert_eq!(
        (
            counts.of(RequestKind::Put),
            counts.conditional,
            counts.faulted
        ),
        (1, 1, 1),
        "{reset:?}: {counts:?}"
    );
    assert!(!client.exists("a"));
    // Served, then reset: stored, and still an error, after one request.
    server.inject(FaultRule::new(Fault::ResetAfterServing).conditional());
    let before = server.counts();
    let reset = client.create("b", b"b");
    assert!(reset.is_err(), "{reset:?}");
    assert_eq!(server.counts().since(&before).of(RequestKind::Put), 1);
    assert!(client.exists("b"));
    // Served, then closed: the client retries and finds its object there (412).
    server.inject(FaultRule::new(Fault::CloseAfterServing).conditional());
    let before = server.counts();
    let closed = client.create("c", b"c");
    assert!(
        closed.as_ref().is_err_and(|e| e.contains("AlreadyExists")),
        "{closed:?}"
    );
    assert_eq!(server.counts().since(&before).of(RequestKind::Put), 2);
    assert!(client.exists("c"));
    // An unconditional PUT is not selected by a conditional rule.
    server.inject(FaultRule::new(Fault::Reset).conditional());
    let storage = server.storage("root")?;
    let before = server.counts();
    storage.put(&sp("plain"), b"plain")?;
    assert_eq!(server.counts().since(&before).faulted, 0);
    Ok(())
}
