//! The HTTP routes of the pull side of the OCI distribution API.
//!
//! Names may hold `/` (`library/anomaly-detector`), which axum's router cannot place before a
//! fixed segment, so everything under `/v2/` goes to one handler that splits the *raw* path
//! itself (see [`names`]); nothing is percent-decoded, so an encoded traversal never becomes a
//! name. Only GET and HEAD are served: this is a read-only mirror, and anything else answers
//! `UNSUPPORTED`. Store work (sled lookups, chunk-tree walks, signature checks) runs on
//! blocking threads.

use super::blob::{self, ByteRange};
use super::catalog::Catalog;
use super::error::RegistryError;
use super::manifest::{self, Document};
use super::names::{self, Reference, Target};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiting blob request looks for its chunks again.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// What the handlers share.
pub struct AppState {
    /// Names, tags and digests.
    pub catalog: Arc<Catalog>,
    /// How long a blob request waits for missing chunks (zero: answer 404 at once).
    pub wait: Duration,
}

/// The router: `/v2/` and everything below it.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(|| async { RegistryError::Unsupported("not a registry endpoint (the API is under /v2/)".into()) })
        .with_state(state)
}

fn response(status: StatusCode, headers: &[(header::HeaderName, String)], body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k.clone(), v);
        }
    }
    r
}

fn check_method(method: &Method) -> Result<bool, RegistryError> {
    match *method {
        Method::GET => Ok(false),
        Method::HEAD => Ok(true),
        ref m => Err(RegistryError::Unsupported(format!("{m} is not supported: this registry is a pull-only mirror"))),
    }
}

async fn base(method: Method) -> Result<Response, RegistryError> {
    let head = check_method(&method)?;
    let body = if head { Body::empty() } else { Body::from("{}") };
    Ok(response(StatusCode::OK, &[(header::CONTENT_TYPE, "application/json".into()), (header::CONTENT_LENGTH, "2".into())], body))
}

async fn dispatch(State(st): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let result = async {
        let head = check_method(&method)?;
        let rest = uri.path().strip_prefix("/v2/").unwrap_or_default();
        match names::parse_path(rest)? {
            Target::Manifest(name, reference) => get_manifest(&st, name, reference, &headers, head).await,
            Target::Blob(name, digest) => get_blob(&st, name, digest, &headers, head).await,
            Target::Tags(name) => get_tags(&st, name).await,
        }
    }
    .await;
    let resp = result.into_response();
    tracing::debug!(%method, path = uri.path(), status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "registry request");
    resp
}

async fn get_manifest(st: &AppState, name: String, reference: Reference, headers: &HeaderMap, head: bool) -> Result<Response, RegistryError> {
    let channel = names::channel_of(&name)?;
    let pref = manifest::negotiate(headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()));
    let catalog = st.catalog.clone();
    let allow_incomplete = !st.wait.is_zero();
    let doc: Document = tokio::task::spawn_blocking(move || match reference {
        Reference::Tag(tag) => {
            let (view, imgs) = catalog
                .resolve_tag(&name, &channel, &tag, allow_incomplete)?
                .ok_or_else(|| RegistryError::ManifestUnknown(format!("{name}:{tag}")))?;
            catalog.render(&view, &imgs, pref)
        }
        Reference::Digest(d) => {
            if catalog.versions(&channel)?.is_empty() {
                return Err(RegistryError::NameUnknown(name));
            }
            catalog.find_manifest(&channel, &d.text)?.ok_or(RegistryError::ManifestUnknown(d.text))
        }
    })
    .await??;
    let headers = [
        (header::CONTENT_TYPE, doc.media_type.to_owned()),
        (header::CONTENT_LENGTH, doc.bytes.len().to_string()),
        (header::HeaderName::from_static("docker-content-digest"), doc.digest.clone()),
        (header::ETAG, format!("\"{}\"", doc.digest)),
    ];
    Ok(response(StatusCode::OK, &headers, if head { Body::empty() } else { Body::from(doc.bytes) }))
}

async fn get_blob(st: &AppState, name: String, digest: names::Digest, headers: &HeaderMap, head: bool) -> Result<Response, RegistryError> {
    let channel = names::channel_of(&name)?;
    let unknown = |reason| RegistryError::BlobUnknown { digest: digest.text.clone(), reason };
    let catalog = st.catalog.clone();
    let sha = digest.sha256;
    let found = tokio::task::spawn_blocking(move || -> Result<_, RegistryError> {
        if catalog.versions(&channel)?.is_empty() {
            return Err(RegistryError::NameUnknown(name));
        }
        match sha {
            Some(sha) => catalog.find_blob(&channel, &sha),
            None => Ok(None),
        }
    })
    .await??;
    let (artifact, complete) = found.ok_or_else(|| unknown("no image of this repository has it"))?;
    if !complete {
        wait_for_chunks(st, &artifact).await.map_err(|_| unknown("its chunks are not all on this node yet"))?;
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) => blob::parse_range(h, artifact.size)?,
        None => None,
    };
    let mut h = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::HeaderName::from_static("docker-content-digest"), digest.text.clone()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, format!("\"{}\"", digest.text)),
    ];
    let status = match range {
        Some(ByteRange { start, end }) => {
            h.push((header::CONTENT_RANGE, format!("bytes {start}-{end}/{}", artifact.size)));
            h.push((header::CONTENT_LENGTH, (end - start + 1).to_string()));
            StatusCode::PARTIAL_CONTENT
        }
        None => {
            h.push((header::CONTENT_LENGTH, artifact.size.to_string()));
            StatusCode::OK
        }
    };
    let body = if head { Body::empty() } else { blob::stream(st.catalog.clone(), artifact, range) };
    Ok(response(status, &h, body))
}

/// Wait (up to the configured bound) until every chunk of `a` is here.
async fn wait_for_chunks(st: &AppState, a: &layerhop_protocol::Artifact) -> Result<(), ()> {
    let deadline = Instant::now() + st.wait;
    while Instant::now() < deadline {
        tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        let (catalog, a) = (st.catalog.clone(), a.clone());
        if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || catalog.artifact_complete(&a)).await {
            return Ok(());
        }
    }
    Err(())
}

async fn get_tags(st: &AppState, name: String) -> Result<Response, RegistryError> {
    let channel = names::channel_of(&name)?;
    let catalog = st.catalog.clone();
    let n = name.clone();
    let tags = tokio::task::spawn_blocking(move || catalog.tags(&n, &channel)).await??;
    let body = serde_json::to_vec(&serde_json::json!({ "name": name, "tags": tags })).map_err(RegistryError::internal)?;
    let headers = [(header::CONTENT_TYPE, "application/json".to_owned()), (header::CONTENT_LENGTH, body.len().to_string())];
    Ok(response(StatusCode::OK, &headers, Body::from(body)))
}
