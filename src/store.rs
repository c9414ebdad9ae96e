//! The store client (spec §5): the index, manifests and compose templates
//! over http(s) or file://, with size and time limits, and the index cached
//! in memory and on disk.
//!
//! Every response is read with one deadline ([`TIMEOUT`]) and a size cap
//! ([`MAX_BODY`]); bodies are read lazily and never past the cap. Redirects
//! are followed by hand ([`MAX_REDIRECTS`]) so every hop keeps the scheme of
//! the configured URL. The index lives in memory for [`MEMORY_TTL`] and on
//! disk as `<cache_dir>/index.json` (the raw body) plus
//! `<cache_dir>/index.meta.json` (ETag, fetch time, body hash); when the
//! store cannot be reached the last good copy is served with `stale: true`.
//! Manifests and templates are never cached. The only files this module
//! writes are those under the cache folder.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::ids::{truncate, ServiceId};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The whole of one fetch (connect, redirects, headers and body).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body accepted from the store.
pub const MAX_BODY: usize = 256 * 1024;
/// How long a good index is answered from memory without asking the store.
pub const MEMORY_TTL: Duration = Duration::from_secs(5 * 60);
/// Redirect hops followed per fetch.
pub const MAX_REDIRECTS: usize = 3;
/// How long a stale index is answered from memory before the store is tried
/// again: short, so the store's return shows soon, yet an unreachable store
/// does not cost every page a [`TIMEOUT`].
const STALE_RETRY: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("pic-store/", env!("CARGO_PKG_VERSION"));
/// Longest ETag kept; a longer one is dropped (no revalidation).
const MAX_ETAG: usize = 512;

/// The store index as the rest of pic-store sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Index {
    pub services: Vec<IndexEntry>,
    /// The store could not be reached; this is the last good copy.
    pub stale: bool,
    /// Unix seconds of the last successful fetch or revalidation (304).
    pub fetched_at: u64,
    pub etag: Option<String>,
}

/// One service of the index. Fields other than the three checked ones pass
/// through in `extra`, so it serialises as the store's original object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexEntry {
    pub id: ServiceId,
    pub name: String,
    pub version: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Fetches from one store. `Send + Sync`: the server's threads share one,
/// and the memory cache sits behind a mutex.
pub struct StoreClient {
    index_url: String,
    /// `<dir of index>`, which manifest and template URLs are built on.
    base_url: String,
    cache_dir: PathBuf,
    memory: Mutex<Option<Remembered>>,
}

/// An index together with the hash of the body it was parsed from, which
/// ties the disk copy to its ETag.
#[derive(Debug, Clone)]
struct Known {
    index: Index,
    body_hash: String,
}

struct Remembered {
    known: Known,
    checked_at: Instant,
}

impl Remembered {
    fn is_fresh(&self) -> bool {
        let ttl = if self.known.index.stale {
            STALE_RETRY
        } else {
            MEMORY_TTL
        };
        self.checked_at.elapsed() < ttl
    }
}

/// `index.meta.json`: what the raw `index.json` beside it needs to be
/// revalidated and dated.
#[derive(Debug, Serialize, Deserialize)]
struct CacheMeta {
    etag: Option<String>,
    fetched_at: u64,
    /// FNV-1a of `index.json`; a mismatch (a crash or a second process
    /// between the two writes) voids the ETag, never the body.
    body_hash: String,
}

/// Whether the memory cache may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    MemoryIfFresh,
    AskTheStore,
}

/// A successful answer of the store.
enum Fetched {
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
    NotModified,
}

impl StoreClient {
    pub fn new(index_url: &str, cache_dir: &Path) -> StoreClient {
        StoreClient {
            index_url: index_url.to_string(),
            base_url: url_dir(index_url).to_string(),
            cache_dir: cache_dir.to_path_buf(),
            memory: Mutex::new(None),
        }
    }

    pub fn from_config(c: &Config) -> StoreClient {
        StoreClient::new(&c.index_url, &c.cache_dir())
    }

    /// The index: from memory when fetched less than [`MEMORY_TTL`] ago,
    /// else from the store (revalidating the cached copy), else the last
    /// good copy marked stale.
    pub fn index(&self) -> Result<Index> {
        self.load_index(Freshness::MemoryIfFresh)
    }

    /// The index from the store now, whatever the memory cache holds.
    pub fn refresh_index(&self) -> Result<Index> {
        self.load_index(Freshness::AskTheStore)
    }

    /// The raw manifest JSON of `id`, checked to be an object whose `id`
    /// is `id`. Validation is the caller's (`manifest.rs`).
    pub fn manifest(&self, id: &ServiceId) -> Result<Value> {
        let url = self.manifest_url(id);
        let bytes = fetch_body(&url)?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| store_error(&url, format!("the manifest is not JSON: {e}")))?;
        check_manifest_id(&value, id).map_err(|reason| store_error(&url, reason))?;
        Ok(value)
    }

    /// The compose template text of `id`.
    pub fn template(&self, id: &ServiceId) -> Result<String> {
        let url = self.template_url(id);
        let bytes = fetch_body(&url)?;
        String::from_utf8(bytes)
            .map_err(|e| store_error(&url, format!("the template is not UTF-8 text: {e}")))
    }

    /// The index this client, or an earlier process, last had, without
    /// asking the store (for `status`, which must answer offline at once).
    pub fn cached_index(&self) -> Option<Index> {
        let memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(remembered) = memory.as_ref() {
            return Some(remembered.known.index.clone());
        }
        drop(memory);
        self.read_disk_cache().map(|known| known.index)
    }

    pub fn manifest_url(&self, id: &ServiceId) -> String {
        format!("{}/services/{id}/manifest.json", self.base_url)
    }

    pub fn template_url(&self, id: &ServiceId) -> String {
        format!("{}/services/{id}/compose-template.yml", self.base_url)
    }

    fn index_path(&self) -> PathBuf {
        self.cache_dir.join("index.json")
    }

    fn meta_path(&self) -> PathBuf {
        self.cache_dir.join("index.meta.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.cache_dir.join("index.lock")
    }

    /// The lock is held across the fetch: concurrent callers wait for one
    /// fetch instead of each asking the store, and one process never
    /// writes the cache files twice at once.
    fn load_index(&self, freshness: Freshness) -> Result<Index> {
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(remembered) = memory.as_ref() {
            if freshness == Freshness::MemoryIfFresh && remembered.is_fresh() {
                return Ok(remembered.known.index.clone());
            }
        }
        let previous = match memory.take() {
            Some(remembered) => Some(remembered.known),
            None => self.read_disk_cache(),
        };
        let known = self.revalidate(previous)?;
        let index = known.index.clone();
        *memory = Some(Remembered {
            known,
            checked_at: Instant::now(),
        });
        Ok(index)
    }

    /// Asks the store, sending the previous copy's ETag; any failure falls
    /// back to the previous copy, marked stale.
    fn revalidate(&self, previous: Option<Known>) -> Result<Known> {
        let etag = previous.as_ref().and_then(|k| k.index.etag.clone());
        let fetched = fetch(&self.index_url, etag.as_deref()).and_then(|f| match f {
            Fetched::Body { bytes, etag } => self.accept_body(&bytes, etag).map(Some),
            Fetched::NotModified => Ok(None),
        });
        match (fetched, previous) {
            (Ok(Some(known)), _) => Ok(known),
            (Ok(None), Some(previous)) => Ok(self.accept_not_modified(previous)),
            (Ok(None), None) => Err(store_error(
                &self.index_url,
                "answered 304 Not Modified to a request without If-None-Match",
            )),
            (Err(e), Some(previous)) => Ok(serve_stale(previous, &e)),
            (Err(e), None) => Err(e),
        }
    }

    fn accept_body(&self, bytes: &[u8], etag: Option<String>) -> Result<Known> {
        let services = parse_index(bytes).map_err(|r| store_error(&self.index_url, r))?;
        let known = Known {
            index: Index {
                services,
                stale: false,
                fetched_at: files::now_unix(),
                etag,
            },
            body_hash: fnv1a_hex(bytes),
        };
        self.write_disk_cache(Some(bytes), &known);
        Ok(known)
    }

    fn accept_not_modified(&self, mut previous: Known) -> Known {
        previous.index.stale = false;
        previous.index.fetched_at = files::now_unix();
        self.write_disk_cache(None, &previous);
        previous
    }

    /// The cached index from disk, or `None` (with a warning when a file
    /// is there but unusable). Also what a new process starts from.
    fn read_disk_cache(&self) -> Option<Known> {
        let path = self.index_path();
        let body = match files::read_optional(&path) {
            Ok(Some(body)) => body,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("ignoring the cached store index: {e}");
                return None;
            }
        };
        let services = match parse_index(&body) {
            Ok(services) => services,
            Err(reason) => {
                log::warn!(
                    "ignoring the cached store index {}: {reason}",
                    path.display()
                );
                return None;
            }
        };
        let body_hash = fnv1a_hex(&body);
        let (etag, fetched_at) = match self.read_meta(&body_hash) {
            Some(meta) => (meta.etag, meta.fetched_at),
            None => (None, modified_unix(&path)),
        };
        Some(Known {
            index: Index {
                services,
                stale: false,
                fetched_at,
                etag,
            },
            body_hash,
        })
    }

    /// The meta file when it is readable and belongs to the body whose
    /// hash is `body_hash`.
    fn read_meta(&self, body_hash: &str) -> Option<CacheMeta> {
        let path = self.meta_path();
        let bytes = match files::read_optional(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("ignoring the store index's cache metadata: {e}");
                return None;
            }
        };
        let mut meta: CacheMeta = match serde_json::from_slice(&bytes) {
            Ok(meta) => meta,
            Err(e) => {
                log::warn!("ignoring {}: not valid metadata: {e}", path.display());
                return None;
            }
        };
        if meta.body_hash != body_hash {
            log::warn!(
                "ignoring {}: it belongs to another copy of the index",
                path.display()
            );
            return None;
        }
        meta.etag = meta.etag.and_then(|e| clean_etag(&e));
        Some(meta)
    }

    /// Writes the body (when given) and the meta file. A failure only
    /// costs the cache, so it is logged, not returned.
    fn write_disk_cache(&self, body: Option<&[u8]>, known: &Known) {
        if let Err(e) = self.try_write_disk_cache(body, known) {
            log::warn!("could not cache the store index: {e}");
        }
    }

    fn try_write_disk_cache(&self, body: Option<&[u8]>, known: &Known) -> Result<()> {
        let meta = CacheMeta {
            etag: known.index.etag.clone(),
            fetched_at: known.index.fetched_at,
            body_hash: known.body_hash.clone(),
        };
        let meta = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::failed("encode the index cache metadata", e))?;
        files::create_dir_all(&self.cache_dir)?;
        // `write_atomic` uses one temporary name per file; the lock keeps
        // a second process (the CLI next to `serve`) off it meanwhile.
        let _lock = self.lock_cache()?;
        if let Some(body) = body {
            files::write_atomic(&self.index_path(), body, 0o644)?;
        }
        files::write_atomic(&self.meta_path(), &meta, 0o644)
    }

    fn lock_cache(&self) -> Result<Flock<File>> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io("lock", &path, io::Error::from(errno)))
    }
}

fn serve_stale(mut previous: Known, error: &Error) -> Known {
    log::warn!(
        "{error}; serving the store index cached at {} (unix time) marked stale",
        previous.index.fetched_at
    );
    previous.index.stale = true;
    previous
}

fn store_error(url: &str, reason: impl Into<String>) -> Error {
    Error::Store {
        url: url.to_string(),
        reason: reason.into(),
    }
}

fn too_large(url: &str) -> Error {
    store_error(
        url,
        format!("the response is larger than {} KiB", MAX_BODY / 1024),
    )
}

// ---- URLs ----

/// `<dir of index>`: the URL up to its last `/`, without query or fragment.
/// An http(s) URL without a path is its own folder.
fn url_dir(url: &str) -> &str {
    let base = strip_query(url);
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    match base[after_scheme..].rfind('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    }
}

fn strip_query(url: &str) -> &str {
    url.find(['?', '#']).map_or(url, |end| &url[..end])
}

/// `scheme://host[:port]` of an http(s) URL.
fn url_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find(['/', '?', '#']) {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn url_scheme(url: &str) -> &str {
    url.find("://").map_or("", |i| &url[..i])
}

/// The URL a `Location` header points to, seen from `current`. A redirect
/// may change host and path but never the scheme: an https store is never
/// fetched over http, and nothing redirects to file://.
fn resolve_location(current: &str, location: &str) -> std::result::Result<String, String> {
    if location.is_empty() || location.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("redirected to a malformed location {location:?}"));
    }
    let scheme = url_scheme(current);
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{}{location}", url_origin(current)));
    }
    if has_scheme(location) {
        let target = url_scheme(location);
        return if target.eq_ignore_ascii_case(scheme) {
            Ok(format!("{scheme}{}", &location[target.len()..]))
        } else {
            Err(format!(
                "redirected to {}, which is not {scheme}://",
                truncate(location, 200)
            ))
        };
    }
    Ok(format!("{}/{location}", url_dir(current)))
}

/// Whether a URL reference starts with `scheme:` (RFC 3986 §3.1).
fn has_scheme(reference: &str) -> bool {
    match reference.find(':') {
        Some(colon) => {
            let scheme = &reference[..colon];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

// ---- fetching ----

/// A body that must be a fresh 200 (manifests and templates).
fn fetch_body(url: &str) -> Result<Vec<u8>> {
    match fetch(url, None)? {
        Fetched::Body { bytes, .. } => Ok(bytes),
        Fetched::NotModified => Err(store_error(url, "unexpected 304 Not Modified")),
    }
}

/// One fetch with the limits of spec §5. `NotModified` only comes back
/// when `if_none_match` was given.
fn fetch(url: &str, if_none_match: Option<&str>) -> Result<Fetched> {
    if let Some(path) = url.strip_prefix("file://") {
        return read_file_url(url, strip_query(path));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return http_get(url, if_none_match);
    }
    Err(store_error(url, "not an http://, https:// or file:// URL"))
}

/// A `file://` URL: the local file, with the same size cap.
fn read_file_url(url: &str, path: &str) -> Result<Fetched> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(store_error(url, "a file:// URL needs an absolute path"));
    }
    // Checked before opening too: opening a FIFO would block.
    check_file_meta(url, std::fs::metadata(path))?;
    let file = File::open(path).map_err(|e| store_error(url, describe_io(&e)))?;
    check_file_meta(url, file.metadata())?;
    let bytes = read_capped(url, file)?;
    Ok(Fetched::Body { bytes, etag: None })
}

fn check_file_meta(url: &str, meta: io::Result<std::fs::Metadata>) -> Result<()> {
    let meta = meta.map_err(|e| store_error(url, describe_io(&e)))?;
    if !meta.is_file() {
        return Err(store_error(url, "not a regular file"));
    }
    if meta.len() > MAX_BODY as u64 {
        return Err(too_large(url));
    }
    Ok(())
}

/// GET over http(s), following up to [`MAX_REDIRECTS`] redirects within one
/// [`TIMEOUT`]. Errors name the URL that failed.
fn http_get(url: &str, if_none_match: Option<&str>) -> Result<Fetched> {
    let deadline = Instant::now() + TIMEOUT;
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let response = send(&current, if_none_match, deadline)?;
        if !matches!(response.status_code, 301 | 302 | 303 | 307 | 308) {
            return read_response(&current, response, if_none_match);
        }
        let location = header(&response.headers, "location")
            .ok_or_else(|| store_error(&current, "a redirect without a Location"))?;
        let next = resolve_location(&current, location).map_err(|r| store_error(&current, r))?;
        log::debug!("{current} redirects to {next}");
        current = next;
    }
    Err(store_error(
        url,
        format!("more than {MAX_REDIRECTS} redirects"),
    ))
}

/// Makes ring rustls' crypto provider for the process, once, before minreq
/// builds its TLS configuration. minreq turns on rustls' default provider,
/// aws-lc-rs, too; with both compiled in, rustls takes none by itself, and
/// as nothing refers to aws-lc-rs then, the linker leaves it out (about
/// 1 MB of the static binary).
fn use_ring_for_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is already installed: it stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Sends one request and reads its head. The body is left unread.
fn send(url: &str, if_none_match: Option<&str>, deadline: Instant) -> Result<minreq::ResponseLazy> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(store_error(url, timed_out()));
    }
    if url.starts_with("https://") {
        use_ring_for_tls();
    }
    // minreq counts whole seconds; rounding up keeps the last hop a chance.
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    let mut request = minreq::get(url)
        .with_timeout(seconds)
        .with_follow_redirects(false)
        .with_header("User-Agent", USER_AGENT)
        .with_header("Accept", "application/json, text/plain, */*");
    if let Some(etag) = if_none_match {
        request = request.with_header("If-None-Match", etag);
    }
    request
        .send_lazy()
        .map_err(|e| store_error(url, describe_minreq(&e)))
}

/// The final response: its status, its declared length, then its body,
/// read no further than one byte past the cap.
fn read_response(
    url: &str,
    response: minreq::ResponseLazy,
    if_none_match: Option<&str>,
) -> Result<Fetched> {
    match response.status_code {
        200 => {}
        304 if if_none_match.is_some() => return Ok(Fetched::NotModified),
        code => {
            let phrase = truncate(response.reason_phrase.trim(), 80);
            return Err(store_error(url, format!("HTTP status {code} {phrase}")));
        }
    }
    if let Some(length) = header(&response.headers, "content-length") {
        if length
            .trim()
            .parse::<u64>()
            .is_ok_and(|n| n > MAX_BODY as u64)
        {
            return Err(too_large(url));
        }
    }
    let etag = header(&response.headers, "etag").and_then(clean_etag);
    let bytes = read_capped(url, response)?;
    Ok(Fetched::Body { bytes, etag })
}

/// Reads at most `MAX_BODY + 1` bytes: one past the cap proves the body
/// too large without reading the rest.
fn read_capped(url: &str, reader: impl Read) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    reader
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| store_error(url, format!("reading the body: {}", describe_io(&e))))?;
    if body.len() > MAX_BODY {
        return Err(too_large(url));
    }
    Ok(body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// An ETag safe to send back in a header: printable ASCII, bounded.
fn clean_etag(raw: &str) -> Option<String> {
    let tag = raw.trim();
    let printable = tag.bytes().all(|b| (0x20..0x7f).contains(&b));
    (printable && !tag.is_empty() && tag.len() <= MAX_ETAG).then(|| tag.to_string())
}

fn timed_out() -> String {
    format!("timed out after {} s", TIMEOUT.as_secs())
}

fn describe_minreq(e: &minreq::Error) -> String {
    match e {
        minreq::Error::IoError(io) => describe_io(io),
        other => other.to_string(),
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => timed_out(),
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::NotFound => "no such file".to_string(),
        _ => e.to_string(),
    }
}

// ---- parsing ----

/// The entries of an index body: a JSON array, or an object with a
/// `services` array. A bad entry or a repeated id is skipped with a
/// warning; only a body that is not an index at all is an error.
fn parse_index(bytes: &[u8]) -> std::result::Result<Vec<IndexEntry>, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the index is not JSON: {e}"))?;
    let entries = match value {
        Value::Array(entries) => entries,
        Value::Object(mut object) => match object.remove("services") {
            Some(Value::Array(entries)) => entries,
            _ => return Err("the index object has no \"services\" array".to_string()),
        },
        _ => return Err("the index is neither an array nor an object".to_string()),
    };
    let mut seen = HashSet::new();
    let mut services = Vec::with_capacity(entries.len());
    for (position, value) in entries.into_iter().enumerate() {
        match parse_entry(value) {
            Ok(entry) if seen.insert(entry.id.clone()) => services.push(entry),
            Ok(entry) => log::warn!(
                "store index: entry {position} skipped: {} is listed twice; the first is kept",
                entry.id
            ),
            Err(reason) => log::warn!("store index: entry {position} skipped: {reason}"),
        }
    }
    Ok(services)
}

fn parse_entry(value: Value) -> std::result::Result<IndexEntry, String> {
    let Value::Object(mut object) = value else {
        return Err("not an object".to_string());
    };
    let id = match object.remove("id") {
        Some(Value::String(id)) => id,
        _ => return Err("no \"id\" string".to_string()),
    };
    let id = ServiceId::parse(&id).map_err(|e| e.to_string())?;
    let name = take_text(&mut object, "name").map_err(|r| format!("{id}: {r}"))?;
    let version = take_text(&mut object, "version").map_err(|r| format!("{id}: {r}"))?;
    Ok(IndexEntry {
        id,
        name,
        version,
        extra: object,
    })
}

fn take_text(object: &mut Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    match object.remove(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("{key:?} is empty")),
        Some(_) => Err(format!("{key:?} is not a string")),
        None => Err(format!("no {key:?}")),
    }
}

fn check_manifest_id(manifest: &Value, id: &ServiceId) -> std::result::Result<(), String> {
    match manifest.get("id") {
        Some(Value::String(found)) if found == id.as_str() => Ok(()),
        Some(Value::String(found)) => Err(format!(
            "the manifest fetched for {id} has id {:?}",
            truncate(found, 64)
        )),
        _ if !manifest.is_object() => Err(format!("the manifest of {id} is not a JSON object")),
        _ => Err(format!(
            "the manifest fetched for {id} has no \"id\" string"
        )),
    }
}

// ---- small helpers ----

/// FNV-1a (64 bit) in hex: enough to tell two copies of the index apart.
fn fnv1a_hex(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// A file's modification time in unix seconds (0 when unknown): the best
/// age of a cached index whose metadata was lost.
fn modified_unix(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ServiceId {
        ServiceId::parse(s).unwrap()
    }

    #[test]
    fn client_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<StoreClient>();
    }

    #[test]
    fn manifest_and_template_urls_sit_next_to_the_index() {
        let c = StoreClient::new(
            "https://git.pic.ngo/roof/pic-services/raw/branch/main/index.json",
            Path::new("/tmp/x"),
        );
        assert_eq!(
            c.manifest_url(&id("radicale")),
            "https://git.pic.ngo/roof/pic-services/raw/branch/main/services/radicale/manifest.json"
        );
        assert_eq!(
            c.template_url(&id("radicale")),
            "https://git.pic.ngo/roof/pic-services/raw/branch/main/services/radicale/compose-template.yml"
        );
    }

    #[test]
    fn url_dir_handles_files_bare_hosts_and_queries() {
        assert_eq!(url_dir("file:///srv/store/index.json"), "file:///srv/store");
        assert_eq!(url_dir("file:///index.json"), "file://");
        assert_eq!(url_dir("http://h:8080/index.json"), "http://h:8080");
        assert_eq!(url_dir("https://h"), "https://h");
        assert_eq!(url_dir("https://h/a/index.json?ref=main#x"), "https://h/a");
        assert_eq!(url_dir("https://h/a?next=/b/c"), "https://h");
        let c = StoreClient::new("file:///srv/store/index.json", Path::new("/tmp"));
        assert_eq!(
            c.manifest_url(&id("a")),
            "file:///srv/store/services/a/manifest.json"
        );
    }

    #[test]
    fn redirects_keep_the_scheme() {
        let here = "https://h/a/index.json";
        assert_eq!(
            resolve_location(here, "https://cdn/x.json").as_deref(),
            Ok("https://cdn/x.json")
        );
        assert_eq!(
            resolve_location(here, "HTTPS://cdn/x").as_deref(),
            Ok("https://cdn/x")
        );
        assert_eq!(
            resolve_location(here, "//cdn/x").as_deref(),
            Ok("https://cdn/x")
        );
        assert_eq!(
            resolve_location(here, "/b/index.json").as_deref(),
            Ok("https://h/b/index.json")
        );
        assert_eq!(
            resolve_location(here, "v2/index.json").as_deref(),
            Ok("https://h/a/v2/index.json")
        );
        assert_eq!(
            resolve_location(here, "/go?u=http://x").as_deref(),
            Ok("https://h/go?u=http://x")
        );
        for bad in [
            "http://h/index.json",
            "file:///etc/passwd",
            "ftp://h/x",
            "",
            "/a\r\nX: y",
        ] {
            assert!(resolve_location(here, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn index_parses_the_array_form() {
        let body = br#"[{"id":"radicale","name":"Radicale","version":"3.1.8","icon":"cal.svg"}]"#;
        let services = parse_index(body).unwrap();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].id.as_str(), "radicale");
        assert_eq!(services[0].name, "Radicale");
        assert_eq!(services[0].version, "3.1.8");
        assert_eq!(services[0].extra["icon"], "cal.svg");
    }

    #[test]
    fn index_parses_the_object_form() {
        let body = br#"{"schema":1,"services":[{"id":"a","name":"A","version":"1"},{"id":"b","name":"B","version":"2"}]}"#;
        let ids: Vec<_> = parse_index(body)
            .unwrap()
            .into_iter()
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn bad_entries_and_repeated_ids_are_skipped() {
        let body = br#"[
            {"id":"good","name":"Good","version":"1"},
            {"id":"../../etc","name":"x","version":"1"},
            {"id":"noname","version":"1"},
            {"id":"numver","name":"N","version":2},
            {"id":"empty","name":" ","version":"1"},
            "radicale",
            {"name":"no id","version":"1"},
            {"id":"good","name":"Second","version":"9"},
            {"id":"last","name":"Last","version":"1"}
        ]"#;
        let services = parse_index(body).unwrap();
        let names: Vec<_> = services.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["Good", "Last"]);
    }

    #[test]
    fn a_body_that_is_no_index_is_an_error() {
        for bad in [
            &b"<html>"[..],
            b"{\"items\":[]}",
            b"42",
            b"{\"services\":{}}",
        ] {
            assert!(parse_index(bad).is_err());
        }
        assert!(parse_index(b"[]").unwrap().is_empty());
    }

    #[test]
    fn entries_serialise_as_the_original_object() {
        let body = br#"[{"id":"a","name":"A","version":"1","tags":["x"],"size":3}]"#;
        let services = parse_index(body).unwrap();
        let back = serde_json::to_value(&services[0]).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"id":"a","name":"A","version":"1","tags":["x"],"size":3})
        );
    }

    #[test]
    fn manifest_id_must_match() {
        let want = id("radicale");
        assert!(check_manifest_id(&serde_json::json!({"id":"radicale"}), &want).is_ok());
        let err = check_manifest_id(&serde_json::json!({"id":"evil"}), &want).unwrap_err();
        assert!(err.contains("radicale") && err.contains("evil"), "{err}");
        assert!(check_manifest_id(&serde_json::json!({"name":"x"}), &want).is_err());
        assert!(check_manifest_id(&serde_json::json!(["radicale"]), &want).is_err());
    }

    #[test]
    fn etags_that_could_break_a_header_are_dropped() {
        assert_eq!(clean_etag(" W/\"abc\" ").as_deref(), Some("W/\"abc\""));
        assert_eq!(clean_etag("\"a\"\r\nX-Evil: 1"), None);
        assert_eq!(clean_etag(""), None);
        assert_eq!(clean_etag(&"a".repeat(MAX_ETAG + 1)), None);
    }

    #[test]
    fn stale_entries_in_memory_are_retried_sooner() {
        let known = |stale| Known {
            index: Index {
                services: vec![],
                stale,
                fetched_at: 0,
                etag: None,
            },
            body_hash: String::new(),
        };
        let minute_ago = Instant::now().checked_sub(Duration::from_secs(60));
        if let Some(checked_at) = minute_ago {
            let good = Remembered {
                known: known(false),
                checked_at,
            };
            let stale = Remembered {
                known: known(true),
                checked_at,
            };
            assert!(good.is_fresh());
            assert!(!stale.is_fresh());
        }
    }

    #[test]
    fn hash_tells_bodies_apart() {
        assert_eq!(fnv1a_hex(b""), "cbf29ce484222325");
        assert_ne!(fnv1a_hex(b"[1]"), fnv1a_hex(b"[2]"));
    }
}
