//! The registry's errors and their wire form.
//!
//! Container engines branch on the OCI error *code* (a 404 `BLOB_UNKNOWN` from a mirror makes
//! docker fall back to the upstream registry; a 400 `NAME_INVALID` does not), so every failure
//! the API can give is a variant here, mapped to the status and code the distribution spec
//! names, with the body `{"errors":[{"code":…,"message":…,"detail":…}]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What a registry request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The repository name is not a valid OCI name (or tries to escape: `..`, `%2e`, `/x`).
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    /// No channel of that name is held.
    #[error("repository {0:?} is not known")]
    NameUnknown(String),
    /// No manifest with that tag or digest is held.
    #[error("manifest {0:?} is not known")]
    ManifestUnknown(String),
    /// No blob with that digest is held, or its chunks are not all here yet.
    #[error("blob {digest}: {reason}")]
    BlobUnknown {
        /// The digest asked for.
        digest: String,
        /// Why (unknown, or still being fetched).
        reason: &'static str,
    },
    /// The digest is not `sha256:<64 lower-case hex>` (or a tag is malformed).
    #[error("invalid digest or reference {0:?}")]
    DigestInvalid(String),
    /// The range starts at or beyond the end of the blob.
    #[error("range {range:?} is outside the blob's {size} bytes")]
    RangeInvalid {
        /// The `Range` header as sent.
        range: String,
        /// The blob's size.
        size: u64,
    },
    /// A method or operation this pull-only mirror does not offer (pushes, deletes).
    #[error("{0}")]
    Unsupported(String),
    /// A store or task failure; logged, and answered 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    /// The status and OCI error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RegistryError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            RegistryError::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            RegistryError::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            RegistryError::BlobUnknown { .. } => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            RegistryError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            RegistryError::RangeInvalid { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            RegistryError::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            RegistryError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    /// Wrap any displayable failure of the store or a task as a 500.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        RegistryError::Internal(format!("{e:#}"))
    }
}

impl From<layerhop_store::Error> for RegistryError {
    fn from(e: layerhop_store::Error) -> Self {
        RegistryError::internal(e)
    }
}

impl From<tokio::task::JoinError> for RegistryError {
    fn from(e: tokio::task::JoinError) -> Self {
        RegistryError::internal(e)
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "registry request failed");
        } else {
            tracing::debug!(error = %self, code, "registry request refused");
        }
        let body = serde_json::json!({ "errors": [{ "code": code, "message": self.to_string(), "detail": null }] });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (status, bytes).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
        if let RegistryError::RangeInvalid { size, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            headers.insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_follow_the_spec() {
        let e = RegistryError::BlobUnknown { digest: "sha256:00".into(), reason: "unknown" };
        assert_eq!(e.status_and_code(), (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
        assert_eq!(RegistryError::NameInvalid("..".into()).status_and_code().1, "NAME_INVALID");
        let r = RegistryError::RangeInvalid { range: "bytes=9-".into(), size: 3 }.into_response();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */3");
    }
}
