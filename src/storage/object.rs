//! [`ObjectStorage`]: checkpoint storage on an object store (S3, GCS, Azure, a local
//! directory, memory) through the `object_store` crate (feature `object-store`).
//!
//! `object_store` is async; this storage owns a small tokio runtime and blocks on it, so the
//! crate's API stays synchronous for engines that are not async. (Calling it from inside
//! another tokio runtime's worker thread would block that thread: use `spawn_blocking`.)
//!
//! Object stores have no rename: an object becomes visible when its single PUT or its
//! multipart upload completes, whole, which is the atomicity [`CheckpointStorage::put`]
//! promises. Files above [`MULTIPART_THRESHOLD`] are uploaded in parts streamed from disk,
//! never held in memory whole; downloads stream to disk the same way.
//!
//! Retries with backoff on throttling, 5xx and timeouts are the cloud clients' own
//! (`object_store`'s `RetryConfig`); after the last one a request fails with
//! [`Error::ObjectStore`]. The files of one checkpoint are transferred
//! [`transfer_concurrency`](CheckpointStorage::transfer_concurrency) at a time.
//!
//! # Roots as URLs
//!
//! [`ObjectStorage::from_url`] takes `s3://bucket/prefix` (feature `aws`), `gs://bucket/prefix`
//! (feature `gcp`), `az://container/prefix` (feature `azure`) or `memory:///`; credentials,
//! region and endpoint come from the clouds' standard environment variables (`AWS_*` as the AWS
//! tools read them, `GOOGLE_*`, `AZURE_*`; `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for an
//! S3-compatible server).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::model::error::{Error, Result};
use crate::model::format::path::StoragePath;
use crate::storage::{CheckpointStorage, ObjectMeta};

/// Files larger than this (8 MiB) are uploaded as multipart uploads.
pub const MULTIPART_THRESHOLD: u64 = 8 << 20;

/// Size of one part of a multipart upload (what is buffered per part in flight).
const PART_SIZE: usize = 8 << 20;

/// Parts of one file uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Attempts of one create-if-absent write ([`CheckpointStorage::put_new`]) that fails on the
/// way (a connection reset, a server error after the client's own retries), retries included.
pub const PUT_NEW_ATTEMPTS: u32 = 4;

/// Pause before the n-th retry of a create-if-absent write: n times this.
const PUT_NEW_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Files of one checkpoint transferred at once unless set otherwise.
pub const DEFAULT_TRANSFER_CONCURRENCY: usize = 8;

/// Checkpoint storage on an object store, under a prefix (see the module docs).
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    runtime: tokio::runtime::Runtime,
    transfer_concurrency: usize,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStorage({} under {:?})", self.store, self.prefix)
    }
}

impl ObjectStorage {
    /// Storage on `store`, every path under `prefix` (`""` for the store's root; otherwise
    /// slash-separated segments, such as `jobs/clicks/checkpoints`).
    ///
    /// # Errors
    /// [`Error::InvalidPath`] for a prefix with empty segments; an I/O error if the runtime
    /// cannot start.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self> {
        let prefix = prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(str::is_empty) && !prefix.is_empty() {
            return Err(Error::InvalidPath {
                path: prefix,
                reason: "an object store prefix has no empty segments",
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("statebackend-object-store")
            .enable_all()
            .build()
            .map_err(|e| Error::io("<object store runtime>", e))?;
        Ok(Self {
            store,
            prefix,
            runtime,
            transfer_concurrency: DEFAULT_TRANSFER_CONCURRENCY,
        })
    }

    /// Storage at `url` (see the module docs for the schemes and their configuration).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for a URL that does not parse, a scheme this build has no
    /// client for, or a client that cannot be configured (missing bucket, bad endpoint).
    pub fn from_url(url: &str) -> Result<Self> {
        use object_store::ObjectStoreScheme;
        let invalid = |reason: String| Error::InvalidOptions {
            reason: format!("checkpoint root {url:?}: {reason}"),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(e.to_string()))?;
        // Every cloud's builder is configured the same way: environment, then the URL.
        #[allow(unused_macros)]
        macro_rules! from_env {
            ($builder:ty) => {
                Arc::new(
                    <$builder>::from_env()
                        .with_url(url)
                        .build()
                        .map_err(|e| invalid(e.to_string()))?,
                )
            };
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
            #[cfg(feature = "aws")]
            ObjectStoreScheme::AmazonS3 => from_env!(object_store::aws::AmazonS3Builder),
            #[cfg(feature = "gcp")]
            ObjectStoreScheme::GoogleCloudStorage => {
                from_env!(object_store::gcp::GoogleCloudStorageBuilder)
            }
            #[cfg(feature = "azure")]
            ObjectStoreScheme::MicrosoftAzure => {
                from_env!(object_store::azure::MicrosoftAzureBuilder)
            }
            other => {
                return Err(invalid(format!(
                    "this build has no client for {other:?} (cargo features aws, gcp, azure)"
                )));
            }
        };
        Self::new(store, prefix.as_ref())
    }

    /// Sets how many files of one checkpoint are transferred at once (at least 1).
    #[must_use]
    pub fn with_transfer_concurrency(mut self, files: usize) -> Self {
        self.transfer_concurrency = files.max(1);
        self
    }

    /// Storage in memory (`object_store`'s in-memory store): for tests and examples.
    ///
    /// # Errors
    /// As [`ObjectStorage::new`].
    pub fn in_memory() -> Result<Self> {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "")
    }

    /// The object store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn location(&self, path: &StoragePath) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(path.as_str())
        } else {
            ObjectPath::from(format!("{}/{}", self.prefix, path.as_str()))
        }
    }

    /// The storage path of an object location under the prefix, if it is one of ours.
    fn storage_path(&self, location: &ObjectPath) -> Option<StoragePath> {
        let full = location.as_ref();
        let relative = if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
        };
        StoragePath::parse(relative).ok()
    }

    fn error(path: &StoragePath, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::MissingFile {
                file: path.to_string(),
            },
            other => Error::ObjectStore {
                path: path.to_string(),
                message: other.to_string(),
            },
        }
    }

    async fn upload_parts(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        let location = self.location(path);
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(|e| Self::error(path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let result = async {
            let mut file = std::fs::File::open(local).map_err(|e| Error::io(local, e))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(|e| Error::io(local, e))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| Self::error(path, e))?;
                writer.write(&buf[..n]);
                total += n as u64;
            }
            Ok(total)
        }
        .await;
        match result {
            Ok(total) => {
                // `finish` uploads the last part and completes the upload; if either fails it
                // aborts the upload (the parts would stay billed and invisible to garbage
                // collection otherwise). A "not found" here is the upload's, not the object's
                // (a completion retried after it took effect), so never `MissingFile`.
                writer.finish().await.map_err(|e| Error::ObjectStore {
                    path: path.to_string(),
                    message: format!("multipart upload failed: {e}"),
                })?;
                Ok(total)
            }
            Err(e) => {
                // Nothing becomes visible; the parts uploaded so far are discarded.
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

impl CheckpointStorage for ObjectStorage {
    fn transfer_concurrency(&self) -> usize {
        self.transfer_concurrency
    }

    fn prefers_ranged_reads(&self) -> bool {
        true
    }

    fn location(&self) -> String {
        format!("{} under {:?}", self.store, self.prefix)
    }

    /// One ranged GET.
    fn read_range(&self, path: &StoragePath, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let location = self.location(path);
        self.runtime
            .block_on(self.store.get_range(&location, range))
            .map(|bytes| bytes.to_vec())
            .map_err(|e| Self::error(path, e))
    }

    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        let location = self.location(path);
        self.runtime
            .block_on(self.store.put(&location, PutPayload::from(data.to_vec())))
            .map(|_| ())
            .map_err(|e| Self::error(path, e))
    }

    /// A conditional PUT (`PutMode::Create`): the store refuses it if the object exists.
    ///
    /// The cloud clients retry only idempotent requests after a connection reset or a timeout,
    /// and a conditional PUT is not one: so a failed attempt is retried here, up to
    /// [`PUT_NEW_ATTEMPTS`] attempts in all. An attempt can fail after the object was stored
    /// (the response was lost): a retry then finds the object there, reads it back, and
    /// succeeds if it holds exactly these bytes, which only this writer writes (callers make
    /// the content of each create unique: an epoch file carries a random nonce, a `_metadata`
    /// its instances' ids and its creation time). Other bytes are [`Error::AlreadyExists`], as
    /// on the first attempt.
    fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        let location = self.location(path);
        let payload = PutPayload::from(data.to_vec());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            let result =
                self.runtime
                    .block_on(self.store.put_opts(&location, payload.clone(), options));
            match result {
                Ok(_) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) if attempt > 1 => {
                    // An earlier attempt may have stored it: ours exactly when the bytes are.
                    return match self.get(path) {
                        Ok(found) if found == data => Ok(()),
                        Ok(_) => Err(Error::AlreadyExists {
                            path: path.to_string(),
                        }),
                        Err(e) => Err(e),
                    };
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Err(Error::AlreadyExists {
                        path: path.to_string(),
                    });
                }
                // A transport failure or a server error after the client's own retries; an
                // answer (refused, not found, a precondition) is final.
                Err(e @ object_store::Error::Generic { .. }) if attempt < PUT_NEW_ATTEMPTS => {
                    tracing::debug!(path = %path, attempt, error = %e, "conditional create retried");
                    std::thread::sleep(PUT_NEW_BACKOFF * attempt);
                }
                Err(e) => return Err(Self::error(path, e)),
            }
        }
    }

    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        let size = std::fs::metadata(local)
            .map_err(|e| Error::io(local, e))?
            .len();
        if size > MULTIPART_THRESHOLD {
            return self.runtime.block_on(self.upload_parts(path, local));
        }
        let data = std::fs::read(local).map_err(|e| Error::io(local, e))?;
        self.put(path, &data)?;
        Ok(data.len() as u64)
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to(path, &mut out)?;
        Ok(out)
    }

    /// Streams into a new file beside `local`, then renames it over `local`: a reader that
    /// has `local` open keeps the file it opened, and a failed download leaves no partial file.
    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        let parent = local.parent().unwrap_or(Path::new("."));
        let mut file = tempfile::NamedTempFile::new_in(parent).map_err(|e| Error::io(parent, e))?;
        let written = self.read_to(path, file.as_file_mut())?;
        file.as_file().sync_all().map_err(|e| Error::io(local, e))?;
        file.persist(local).map_err(|e| Error::io(local, e.error))?;
        Ok(written)
    }

    fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
        let location = self.location(path);
        self.runtime.block_on(async {
            let result = self
                .store
                .get(&location)
                .await
                .map_err(|e| Self::error(path, e))?;
            let mut stream = result.into_stream();
            let mut total = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Self::error(path, e))?;
                sink.write_all(&chunk)
                    .map_err(|e| Error::io(path.as_str(), e))?;
                total += chunk.len() as u64;
            }
            Ok(total)
        })
    }

    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        let location = match prefix {
            Some(p) => Some(self.location(p)),
            None if self.prefix.is_empty() => None,
            None => Some(ObjectPath::from(self.prefix.as_str())),
        };
        let what = prefix.map_or_else(|| "<root>".to_owned(), |p| p.to_string());
        self.runtime.block_on(async {
            let mut stream = self.store.list(location.as_ref());
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| Error::ObjectStore {
                    path: what.clone(),
                    message: e.to_string(),
                })?;
                // Objects whose names are not storage paths are not ours: never listed, so
                // never collected.
                if let Some(path) = self.storage_path(&meta.location) {
                    out.push(ObjectMeta {
                        path,
                        size: meta.size,
                    });
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn delete(&self, path: &StoragePath) -> Result<()> {
        let location = self.location(path);
        match self.runtime.block_on(self.store.delete(&location)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::error(path, e)),
        }
    }

    /// `object_store`'s batched deletion (S3's `DeleteObjects`, 1,000 keys per request). If
    /// the batch reports an error, each path is deleted again on its own, so that every
    /// result names its own path.
    fn delete_many(&self, paths: &[StoragePath]) -> Vec<Result<()>> {
        if paths.is_empty() {
            return Vec::new();
        }
        let locations: Vec<object_store::Result<ObjectPath>> =
            paths.iter().map(|p| Ok(self.location(p))).collect();
        let all_deleted = self.runtime.block_on(async {
            let mut results = self
                .store
                .delete_stream(futures::stream::iter(locations).boxed());
            let mut ok = true;
            while let Some(result) = results.next().await {
                if !matches!(result, Ok(_) | Err(object_store::Error::NotFound { .. })) {
                    ok = false;
                }
            }
            ok
        });
        if all_deleted {
            return paths.iter().map(|_| Ok(())).collect();
        }
        paths.iter().map(|p| self.delete(p)).collect()
    }

    fn exists(&self, path: &StoragePath) -> Result<bool> {
        Ok(self.size(path)?.is_some())
    }

    fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
        let location = self.location(path);
        match self.runtime.block_on(self.store.head(&location)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::error(path, e)),
        }
    }
}
