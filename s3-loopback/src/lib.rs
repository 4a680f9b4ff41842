//! An S3 server on loopback for tests and benchmarks of checkpoint storage: `s3s-fs` (the S3
//! protocol over a directory) in-process on 127.0.0.1, behind a layer that counts requests and
//! injects faults.
//!
//! ```no_run
//! use statebackend_s3_loopback::{Fault, FaultRule, LoopbackS3, RequestKind};
//!
//! let server = LoopbackS3::start().unwrap();
//! let storage = server.storage("jobs/clicks").unwrap();
//! // The next two PUTs are answered 503 Slow Down: the client retries them.
//! server.inject(FaultRule::new(Fault::Reject(503)).on(RequestKind::Put).times(2));
//! # let _ = storage;
//! ```
//!
//! The server verifies AWS signatures (version 4) with a fixed key pair, as a real S3 does, and
//! the client is `object_store`'s S3 client, configured as [`LoopbackS3::client`] shows: what
//! runs here is the protocol a deployment runs, minus TLS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, HttpError};
use statebackend::storage::ObjectStorage;
use statebackend::storage::object_store::aws::{AmazonS3, AmazonS3Builder};
use statebackend::storage::object_store::{BackoffConfig, RetryConfig};

/// The bucket every root lives in.
pub const BUCKET: &str = "checkpoints";
/// The access key the server accepts.
pub const ACCESS_KEY: &str = "loopback-access-key";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "loopback-secret-key";

/// What an S3 request does, as the fault rules and the counters tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    /// `GET` of an object (whole or a range).
    Get,
    /// `HEAD` of an object.
    Head,
    /// `GET ?list-type=2`: a listing.
    List,
    /// `PUT` of a whole object (conditional or not).
    Put,
    /// `POST ?uploads`: a multipart upload begins.
    CreateMultipart,
    /// `PUT ?partNumber&uploadId`: one part.
    UploadPart,
    /// `POST ?uploadId`: a multipart upload completes (the object appears).
    CompleteMultipart,
    /// `DELETE ?uploadId`: a multipart upload is abandoned.
    AbortMultipart,
    /// `DELETE` of an object, or `POST ?delete` (a batch delete, which `object_store`'s S3
    /// client uses for single objects too).
    Delete,
    /// Anything else.
    Other,
}

impl RequestKind {
    fn of(method: &http::Method, query: &str) -> Self {
        let has = |name: &str| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some(name))
        };
        match *method {
            http::Method::GET if has("list-type") => Self::List,
            http::Method::GET => Self::Get,
            http::Method::HEAD => Self::Head,
            http::Method::PUT if has("partNumber") => Self::UploadPart,
            http::Method::PUT => Self::Put,
            http::Method::POST if has("uploads") => Self::CreateMultipart,
            http::Method::POST if has("uploadId") => Self::CompleteMultipart,
            http::Method::POST if has("delete") => Self::Delete,
            http::Method::DELETE if has("uploadId") => Self::AbortMultipart,
            http::Method::DELETE => Self::Delete,
            _ => Self::Other,
        }
    }
}

/// What the server does to a request a rule selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers with this HTTP status (an S3 error document) without serving the request: 503
    /// is S3's "slow down", 500 an internal error; both are retried by the client.
    Reject(u16),
    /// Serves the request, then answers with this status: the client believes it failed
    /// although it took effect (a response lost on the way back).
    LoseResponse(u16),
    /// Serves the request after this delay.
    Delay(Duration),
    /// Before serving a PUT, writes these bytes at its key as another writer would: a
    /// create-if-absent PUT then loses the race.
    RaceCreate(Vec<u8>),
}

/// Which requests a fault applies to: of those that match (kind, key), the first `skip` pass,
/// the next `times` get the fault.
#[derive(Clone, Debug)]
pub struct FaultRule {
    fault: Fault,
    kind: Option<RequestKind>,
    key_contains: Option<String>,
    skip: u64,
    times: u64,
}

impl FaultRule {
    /// `fault` for the next matching request (of any kind, until narrowed).
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            kind: None,
            key_contains: None,
            skip: 0,
            times: 1,
        }
    }

    /// Only requests of `kind`.
    #[must_use]
    pub fn on(mut self, kind: RequestKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only requests whose key contains `fragment`.
    #[must_use]
    pub fn key_contains(mut self, fragment: &str) -> Self {
        self.key_contains = Some(fragment.to_owned());
        self
    }

    /// Lets the first `n` matching requests pass.
    #[must_use]
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// Applies to `n` matching requests (after the skipped ones).
    #[must_use]
    pub fn times(mut self, n: u64) -> Self {
        self.times = n;
        self
    }

    fn matches(&self, kind: RequestKind, key: &str) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.key_contains.as_deref().is_none_or(|f| key.contains(f))
    }
}

/// Requests served, by kind, and the bytes of request and response bodies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests by kind (faulted ones included).
    pub by_kind: BTreeMap<RequestKind, u64>,
    /// Bytes of objects sent (`Content-Length` of PUTs and parts).
    pub bytes_in: u64,
    /// Bytes of response bodies (`Content-Length` of GETs).
    pub bytes_out: u64,
    /// Requests that got an injected fault.
    pub faulted: u64,
    /// The most requests in progress at once.
    pub max_in_flight: u64,
}

impl RequestCounts {
    /// Requests of `kind`.
    pub fn of(&self, kind: RequestKind) -> u64 {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            by_kind: self
                .by_kind
                .iter()
                .map(|(k, n)| (*k, n - earlier.of(*k)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            bytes_in: self.bytes_in - earlier.bytes_in,
            bytes_out: self.bytes_out - earlier.bytes_out,
            faulted: self.faulted - earlier.faulted,
            max_in_flight: self.max_in_flight,
        }
    }
}

#[derive(Default)]
struct Control {
    rules: Vec<FaultRule>,
    latency: Duration,
    counts: RequestCounts,
    in_flight: u64,
}

/// Shared between the server's connections and the test.
struct Shared {
    control: Mutex<Control>,
    data: PathBuf,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the request and picks its fault, if a rule selects it.
    fn admit(&self, kind: RequestKind, key: &str, body_len: u64) -> (Option<Fault>, Duration) {
        let mut control = self.control();
        *control.counts.by_kind.entry(kind).or_insert(0) += 1;
        if matches!(kind, RequestKind::Put | RequestKind::UploadPart) {
            control.counts.bytes_in += body_len;
        }
        control.in_flight += 1;
        control.counts.max_in_flight = control.counts.max_in_flight.max(control.in_flight);
        let mut fault = None;
        for rule in control.rules.iter_mut() {
            if rule.times == 0 || !rule.matches(kind, key) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            rule.times -= 1;
            fault = Some(rule.fault.clone());
            break;
        }
        control.rules.retain(|r| r.times > 0);
        if fault.is_some() {
            control.counts.faulted += 1;
        }
        (fault, control.latency)
    }
}

/// The S3 service behind the fault layer.
#[derive(Clone)]
struct FaultyS3 {
    inner: S3Service,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for FaultyS3 {
    type Response = http::Response<Body>;
    type Error = HttpError;
    type Future = BoxFuture<Result<Self::Response, HttpError>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let kind = RequestKind::of(req.method(), req.uri().query().unwrap_or(""));
            let key = percent_decode(req.uri().path());
            let body_len = content_length(req.headers());
            let (fault, latency) = this.shared.admit(kind, &key, body_len);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let req = req.map(Body::from);
            let response = match fault {
                Some(Fault::Reject(status)) => Ok(error_response(status)),
                Some(Fault::LoseResponse(status)) => {
                    let _ = this.inner.call(req).await;
                    Ok(error_response(status))
                }
                Some(Fault::Delay(delay)) => {
                    tokio::time::sleep(delay).await;
                    this.inner.call(req).await
                }
                Some(Fault::RaceCreate(bytes)) => {
                    // The competing writer's object, written where s3s-fs keeps objects.
                    let path = this.shared.data.join(key.trim_start_matches('/'));
                    if let Some(parent) = path.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let _ = std::fs::write(&path, bytes);
                    this.inner.call(req).await
                }
                None => this.inner.call(req).await,
            };
            let mut control = this.shared.control();
            control.in_flight -= 1;
            if let (Ok(resp), RequestKind::Get) = (&response, kind) {
                control.counts.bytes_out += content_length(resp.headers());
            }
            drop(control);
            response
        })
    }
}

fn content_length(headers: &http::HeaderMap) -> u64 {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Decodes `%XX` escapes of a request path (object_store escapes reserved characters).
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error_response(status: u16) -> http::Response<Body> {
    let code = match status {
        503 => "SlowDown",
        500 => "InternalError",
        _ => "InjectedFault",
    };
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <Error><Code>{code}</Code><Message>injected by the loopback server</Message></Error>"
    );
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/xml")
        .body(Body::from(xml))
        .unwrap_or_else(|_| http::Response::new(Body::empty()))
}

/// An S3 server on 127.0.0.1 (an ephemeral port) serving a temporary directory, with one
/// bucket, [`BUCKET`]. Stopped, and its directory removed, when dropped.
pub struct LoopbackS3 {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for LoopbackS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoopbackS3({})", self.endpoint())
    }
}

impl LoopbackS3 {
    /// Starts a server.
    ///
    /// # Errors
    /// I/O errors creating the directory, the runtime or the listener.
    pub fn start() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("statebackend-s3-")
            .tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(BUCKET))?;
        let fs = s3s_fs::FileSystem::new(&data)
            .map_err(|e| std::io::Error::other(format!("s3s-fs: {e:?}")))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let shared = Arc::new(Shared {
            control: Mutex::new(Control::default()),
            data,
        });
        let service = FaultyS3 {
            inner: builder.build(),
            shared: Arc::clone(&shared),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("loopback-s3")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))))?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        runtime.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.changed() => return,
                };
                let Ok((socket, _)) = accepted else { continue };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            runtime: Some(runtime),
            stop: Some(stop),
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the server keeps objects: `<data dir>/<bucket>/<key>`.
    pub fn data_dir(&self) -> &Path {
        &self.shared.data
    }

    /// An S3 client for the bucket, as a deployment configures one (endpoint, credentials,
    /// region, plain HTTP allowed), retrying `retries` times with a short backoff.
    ///
    /// # Errors
    /// The client's configuration errors.
    pub fn client(&self, retries: usize) -> statebackend::Result<AmazonS3> {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(5),
                    max_backoff: Duration::from_millis(50),
                    base: 2.0,
                },
                max_retries: retries,
                retry_timeout: Duration::from_secs(20),
            })
            .build()
            .map_err(|e| statebackend::Error::InvalidOptions {
                reason: e.to_string(),
            })
    }

    /// Checkpoint storage under `prefix` of the bucket, with 3 retries per request.
    ///
    /// # Errors
    /// As [`ObjectStorage::new`].
    pub fn storage(&self, prefix: &str) -> statebackend::Result<ObjectStorage> {
        self.storage_with_retries(prefix, 3)
    }

    /// Checkpoint storage under `prefix` whose requests are retried `retries` times.
    ///
    /// # Errors
    /// As [`ObjectStorage::new`].
    pub fn storage_with_retries(
        &self,
        prefix: &str,
        retries: usize,
    ) -> statebackend::Result<ObjectStorage> {
        ObjectStorage::new(Arc::new(self.client(retries)?), prefix)
    }

    /// Adds a fault rule (rules are tried in the order added).
    pub fn inject(&self, rule: FaultRule) {
        self.shared.control().rules.push(rule);
    }

    /// Removes every fault rule not used up yet.
    pub fn clear_faults(&self) {
        self.shared.control().rules.clear();
    }

    /// Delays every request by `latency` (a slow server, or a distant one).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.control().latency = latency;
    }

    /// The requests served so far.
    pub fn counts(&self) -> RequestCounts {
        self.shared.control().counts.clone()
    }
}

impl Drop for LoopbackS3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
