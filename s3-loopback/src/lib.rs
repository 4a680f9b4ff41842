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
//! // Every listing leaves out the `_metadata` of checkpoint 3, until the faults are cleared.
//! server.inject(
//!     FaultRule::new(Fault::OmitFromListing)
//!         .key_contains("chk-0000000003/_metadata")
//!         .always(),
//! );
//! # let _ = storage;
//! ```
//!
//! The server verifies AWS signatures (version 4) with a fixed key pair, as a real S3 does, and
//! the client is `object_store`'s S3 client, configured as [`LoopbackS3::client`] shows: what
//! runs here is the protocol a deployment runs, minus TLS.
//!
//! # Faults
//!
//! A [`FaultRule`] selects requests and gives them a [`Fault`]. It selects by request kind
//! ([`FaultRule::on`]), by key ([`FaultRule::key_contains`], [`FaultRule::key_matches`]: a
//! predicate over the key as the request path shows it, `/<bucket>/<object key>`, for example
//! `/checkpoints/root/chk-0000000001/_metadata`), by condition ([`FaultRule::conditional`]:
//! create-if-absent requests only) and by count: of the requests it selects, the first
//! [`skip`](FaultRule::skip) pass, the next [`times`](FaultRule::times) get the fault (or all
//! of them, [`always`](FaultRule::always)). Rules are tried in the order they were added; a
//! request gets the fault of the first rule that selects it. [`RequestCounts::faulted`] counts
//! the requests that got one.
//!
//! | fault | what the client sees | what the store holds |
//! |---|---|---|
//! | [`Fault::Reject`]`(status)` | an S3 error of that status (503 and 500 are retried) | unchanged |
//! | [`Fault::LoseResponse`]`(status)` | an error, although the request took effect | as if served |
//! | [`Fault::Delay`]`(d)` | the answer, `d` late | as if served |
//! | [`Fault::RaceCreate`]`(bytes)` | a PUT that lost a race (a conditional one: 412) | the other writer's `bytes` |
//! | [`Fault::Reset`] | the connection reset (TCP RST), no answer | unchanged |
//! | [`Fault::ResetAfterServing`] | the connection reset, no answer | as if served |
//! | [`Fault::CloseAfterServing`] | the connection closed before any answer (the client retries any request) | as if served |
//! | [`Fault::AcknowledgeAndLose`] | PUTs only: 200 with an ETag | unchanged: the PUT is lost |
//! | [`Fault::FlipBit`]`(offset)` | GETs only: the body with one bit flipped | unchanged |
//! | [`Fault::OmitFromListing`] | LISTs only: the listing without the objects whose keys the rule's key filters select | unchanged |
//!
//! For [`Fault::OmitFromListing`] the key filters apply to the listed objects' keys (in the
//! same `/<bucket>/<object key>` form), not to the request's, and a LIST counts toward
//! `skip` and `times` only if it would have shown a selected object: "the next N listings of
//! that object". `s3-loopback/tests/protocol/faults.rs` shows each fault doing what it says.

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

/// What the server does to a request a rule selects (see the crate docs for a table).
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
    /// Resets the connection (TCP RST) without serving the request: the client gets a
    /// "connection reset" and no answer. `object_store` retries only idempotent requests after
    /// one (not conditional PUTs).
    Reset,
    /// Serves the request, then resets the connection before answering: the request took
    /// effect, the client gets a "connection reset".
    ResetAfterServing,
    /// Serves the request, then closes the connection (FIN) before answering: the client sees
    /// a connection closed before the answer, which `object_store` retries whatever the request.
    CloseAfterServing,
    /// Applies to PUTs (conditional or not) only: answers 200 with an ETag, as if stored, and
    /// stores nothing. A store that acknowledges a write and loses it.
    AcknowledgeAndLose,
    /// Applies to GETs only: serves the object with the lowest bit of one byte of the body
    /// flipped, the byte at this offset of the body (modulo its length; an empty body stays
    /// empty). Headers (length, ETag) stay those of the stored object.
    FlipBit(u64),
    /// Applies to LISTs only: the listing leaves out every object the rule's key filters select
    /// (every object if the rule has none), as an inconsistent store or cache would.
    OmitFromListing,
}

impl Fault {
    /// Whether this fault can apply to a request of `kind` (a rule never selects, and never
    /// counts, requests its fault does not apply to).
    fn applies_to(&self, kind: RequestKind) -> bool {
        match self {
            Fault::AcknowledgeAndLose => kind == RequestKind::Put,
            Fault::FlipBit(_) => kind == RequestKind::Get,
            Fault::OmitFromListing => kind == RequestKind::List,
            _ => true,
        }
    }
}

/// A predicate over keys (`/<bucket>/<object key>`).
type KeyPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A key filter of a rule.
#[derive(Clone)]
enum KeyFilter {
    Contains(String),
    Matches(KeyPredicate),
}

impl std::fmt::Debug for KeyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFilter::Contains(fragment) => write!(f, "Contains({fragment:?})"),
            KeyFilter::Matches(_) => f.write_str("Matches(<predicate>)"),
        }
    }
}

/// Which requests a fault applies to: of those that match (kind, keys, condition), the first
/// `skip` pass, the next `times` get the fault.
#[derive(Clone, Debug)]
pub struct FaultRule {
    fault: Fault,
    kind: Option<RequestKind>,
    keys: Vec<KeyFilter>,
    conditional: bool,
    skip: u64,
    times: u64,
}

impl FaultRule {
    /// `fault` for the next matching request (of any kind the fault applies to, until
    /// narrowed).
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            kind: None,
            keys: Vec::new(),
            conditional: false,
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

    /// Only requests whose key contains `fragment` (for [`Fault::OmitFromListing`]: only
    /// listed objects whose key contains it).
    #[must_use]
    pub fn key_contains(mut self, fragment: &str) -> Self {
        self.keys.push(KeyFilter::Contains(fragment.to_owned()));
        self
    }

    /// Only requests whose key (`/<bucket>/<object key>`) satisfies `predicate` (for
    /// [`Fault::OmitFromListing`]: only listed objects whose key does). Several key filters
    /// must all hold.
    #[must_use]
    pub fn key_matches(mut self, predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.keys.push(KeyFilter::Matches(Arc::new(predicate)));
        self
    }

    /// Only conditional requests: those carrying `If-None-Match` (create-if-absent PUTs, as
    /// `_metadata` and epoch files are written).
    #[must_use]
    pub fn conditional(mut self) -> Self {
        self.conditional = true;
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

    /// Applies to every matching request (after the skipped ones), until
    /// [`LoopbackS3::clear_faults`].
    #[must_use]
    pub fn always(mut self) -> Self {
        self.times = u64::MAX;
        self
    }

    fn key_selected(&self, key: &str) -> bool {
        self.keys.iter().all(|filter| match filter {
            KeyFilter::Contains(fragment) => key.contains(fragment.as_str()),
            KeyFilter::Matches(predicate) => predicate(key),
        })
    }

    /// Whether the rule selects a request (before counting).
    fn matches(&self, kind: RequestKind, key: &str, conditional: bool) -> bool {
        self.times > 0
            && self.fault.applies_to(kind)
            && self.kind.is_none_or(|k| k == kind)
            && (conditional || !self.conditional)
            // A listing rule selects listed objects, not the request's key.
            && (self.fault == Fault::OmitFromListing || self.key_selected(key))
    }

    /// Counts one selected request: `true` if it gets the fault, `false` if it is skipped.
    fn take(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        if self.times != u64::MAX {
            self.times -= 1;
        }
        true
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
    /// Conditional requests (carrying `If-None-Match`: create-if-absent PUTs), faulted ones
    /// included; also counted by kind.
    pub conditional: u64,
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
            conditional: self.conditional - earlier.conditional,
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

    /// Counts the request and picks its fault, if a rule selects it. Listing omissions are
    /// picked after the listing is served ([`Shared::omissions`]).
    fn admit(
        &self,
        kind: RequestKind,
        key: &str,
        conditional: bool,
        body_len: u64,
    ) -> (Option<Fault>, Duration) {
        let mut control = self.control();
        *control.counts.by_kind.entry(kind).or_insert(0) += 1;
        if conditional {
            control.counts.conditional += 1;
        }
        if matches!(kind, RequestKind::Put | RequestKind::UploadPart) {
            control.counts.bytes_in += body_len;
        }
        control.in_flight += 1;
        control.counts.max_in_flight = control.counts.max_in_flight.max(control.in_flight);
        let mut fault = None;
        for rule in control.rules.iter_mut() {
            if rule.fault == Fault::OmitFromListing || !rule.matches(kind, key, conditional) {
                continue;
            }
            if rule.take() {
                fault = Some(rule.fault.clone());
                break;
            }
        }
        control.rules.retain(|r| r.times > 0);
        if fault.is_some() {
            control.counts.faulted += 1;
        }
        (fault, control.latency)
    }

    /// Of the keys a listing shows (`/<bucket>/<object key>`), which to leave out: those the
    /// listing rules that select any of them choose (each such rule counts the listing once).
    fn omissions(&self, keys: &[String]) -> Vec<bool> {
        let mut control = self.control();
        let mut omit = vec![false; keys.len()];
        let mut faulted = false;
        for rule in control.rules.iter_mut() {
            if rule.fault != Fault::OmitFromListing || !rule.matches(RequestKind::List, "", false) {
                continue;
            }
            let selected: Vec<bool> = keys.iter().map(|k| rule.key_selected(k)).collect();
            if !selected.contains(&true) || !rule.take() {
                continue;
            }
            faulted = true;
            for (omit, selected) in omit.iter_mut().zip(selected) {
                *omit |= selected;
            }
        }
        control.rules.retain(|r| r.times > 0);
        if faulted {
            control.counts.faulted += 1;
        }
        omit
    }
}

/// The S3 service behind the fault layer, for one connection.
#[derive(Clone)]
struct FaultyS3 {
    inner: S3Service,
    shared: Arc<Shared>,
    /// The connection's socket (a second handle to it), to reset it.
    socket: Option<Arc<std::net::TcpStream>>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What ends a connection without an answer: hyper closes a connection whose service fails.
fn connection_dropped(what: &str) -> HttpError {
    HttpError::new(Box::new(std::io::Error::other(format!(
        "injected by the loopback server: {what}"
    ))))
}

impl FaultyS3 {
    /// Makes the connection's close a reset (TCP RST): `SO_LINGER` of zero.
    fn arm_reset(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket2::SockRef::from(socket.as_ref()).set_linger(Some(Duration::ZERO));
        }
    }

    /// Serves a LIST, leaving out the objects the listing rules select.
    async fn list_omitting(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, HttpError> {
        let response = self.inner.call(req).await?;
        if !response.status().is_success() {
            return Ok(response);
        }
        let (mut parts, mut body) = response.into_parts();
        let xml = body
            .store_all_limited(64 << 20)
            .await
            .map_err(HttpError::new)?;
        let xml = String::from_utf8_lossy(&xml).into_owned();
        let listed = listed_keys(&xml);
        let keys: Vec<String> = listed
            .iter()
            .map(|(_, key)| format!("/{BUCKET}/{key}"))
            .collect();
        let omit = self.shared.omissions(&keys);
        if !omit.contains(&true) {
            return Ok(http::Response::from_parts(parts, Body::from(xml)));
        }
        let mut filtered = String::with_capacity(xml.len());
        let mut at = 0;
        let mut kept = 0u64;
        for ((range, _), omit) in listed.iter().zip(&omit) {
            if *omit {
                filtered.push_str(&xml[at..range.start]);
                at = range.end;
            } else {
                kept += 1;
            }
        }
        filtered.push_str(&xml[at..]);
        let filtered = replace_element(&filtered, "KeyCount", &kept.to_string());
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(filtered.len()),
        );
        Ok(http::Response::from_parts(parts, Body::from(filtered)))
    }

    /// Serves a GET with one bit of its body flipped.
    async fn get_flipped(
        &self,
        req: http::Request<Body>,
        offset: u64,
    ) -> Result<http::Response<Body>, HttpError> {
        let response = self.inner.call(req).await?;
        if !response.status().is_success() {
            return Ok(response);
        }
        let (parts, mut body) = response.into_parts();
        let mut bytes = body
            .store_all_limited(usize::MAX)
            .await
            .map_err(HttpError::new)?
            .to_vec();
        if !bytes.is_empty() {
            let at = (offset % bytes.len() as u64) as usize;
            bytes[at] ^= 1;
        }
        Ok(http::Response::from_parts(parts, Body::from(bytes)))
    }
}

impl hyper::service::Service<http::Request<Incoming>> for FaultyS3 {
    type Response = http::Response<Body>;
    type Error = HttpError;
    type Future = BoxFuture<Result<Self::Response, HttpError>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let kind = RequestKind::of(req.method(), req.uri().query().unwrap_or(""));
            let key = percent_decode(req.uri().path());
            let conditional = req.headers().contains_key(http::header::IF_NONE_MATCH);
            let body_len = content_length(req.headers());
            let (fault, latency) = this.shared.admit(kind, &key, conditional, body_len);
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
                Some(Fault::Reset) => {
                    this.arm_reset();
                    Err(connection_dropped("connection reset"))
                }
                Some(Fault::ResetAfterServing) => {
                    let _ = this.inner.call(req).await;
                    this.arm_reset();
                    Err(connection_dropped("connection reset after serving"))
                }
                Some(Fault::CloseAfterServing) => {
                    let _ = this.inner.call(req).await;
                    Err(connection_dropped("connection closed after serving"))
                }
                Some(Fault::AcknowledgeAndLose) => {
                    // Read the body as a store would, then forget it.
                    let mut body = req.into_body();
                    let _ = body.store_all_limited(usize::MAX).await;
                    Ok(lost_put_response())
                }
                Some(Fault::FlipBit(offset)) => this.get_flipped(req, offset).await,
                Some(Fault::OmitFromListing) | None if kind == RequestKind::List => {
                    this.list_omitting(req).await
                }
                Some(Fault::OmitFromListing) | None => this.inner.call(req).await,
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

/// The `<Contents>` elements of a ListObjectsV2 answer: each one's byte range and its key
/// (unescaped).
fn listed_keys(xml: &str) -> Vec<(std::ops::Range<usize>, String)> {
    const OPEN: &str = "<Contents>";
    const CLOSE: &str = "</Contents>";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = xml[from..].find(OPEN).map(|i| from + i) {
        let Some(end) = xml[start..].find(CLOSE).map(|i| start + i + CLOSE.len()) else {
            break;
        };
        let element = &xml[start..end];
        if let Some(key) = element_text(element, "Key") {
            out.push((start..end, unescape_xml(key)));
        }
        from = end;
    }
    out
}

/// The text of the first `<name>` element in `xml`.
fn element_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

/// `xml` with the text of its first `<name>` element replaced (unchanged if there is none).
fn replace_element(xml: &str, name: &str, text: &str) -> String {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let Some(start) = xml.find(&open).map(|i| i + open.len()) else {
        return xml.to_owned();
    };
    let Some(end) = xml[start..].find(&close).map(|i| start + i) else {
        return xml.to_owned();
    };
    format!("{}{text}{}", &xml[..start], &xml[end..])
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// What a store that lost a PUT answers: success, with an ETag.
fn lost_put_response() -> http::Response<Body> {
    http::Response::builder()
        .status(200)
        .header(http::header::ETAG, "\"00000000000000000000000000000000\"")
        .body(Body::empty())
        .unwrap_or_else(|_| http::Response::new(Body::empty()))
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
            socket: None,
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
                // A second handle to the socket lets a fault reset the connection.
                let Ok((socket, handle)) = socket
                    .into_std()
                    .and_then(|s| Ok((s.try_clone()?, s)))
                    .and_then(|(handle, s)| Ok((tokio::net::TcpStream::from_std(s)?, handle)))
                else {
                    continue;
                };
                let service = FaultyS3 {
                    socket: Some(Arc::new(handle)),
                    ..service.clone()
                };
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
