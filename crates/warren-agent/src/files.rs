//! `GET /files` (streamed download) and `POST /files` (multipart or raw,
//! streamed to disk).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_proto::http::parse_query;
use warren_proto::http::{constant_time_eq, file_signature, FileOp, WriteInfo};

use crate::body::{ChannelBody, RespBody};
use crate::fsops::{chown, create_dirs_owned, resolve_path};
use crate::server::{http_error, json_response, token_ok};
use crate::state::Agent;
use crate::users::User;

const READ_CHUNK: usize = 64 * 1024;

pub async fn handle(agent: Arc<Agent>, req: Request<Incoming>) -> Response<RespBody> {
    let op = match *req.method() {
        Method::GET => FileOp::Read,
        Method::POST => FileOp::Write,
        ref m => return http_error(StatusCode::METHOD_NOT_ALLOWED, format!("method {m} not allowed on /files")),
    };
    let q = parse_query(req.uri().query().unwrap_or(""));
    if let Err(msg) = authorize(&agent, req.headers(), &q, op) {
        return http_error(StatusCode::UNAUTHORIZED, msg);
    }
    let user = match agent.resolve_user(q.get("username").map(String::as_str)) {
        Ok(u) => u,
        Err(e) => return http_error(StatusCode::UNAUTHORIZED, e.message),
    };
    match op {
        FileOp::Read => download(&user, &q).await,
        FileOp::Write => upload(&user, q.get("path").filter(|p| !p.is_empty()).cloned(), req).await,
    }
}

/// Access token in the header, or a valid unexpired URL signature.
fn authorize(agent: &Agent, h: &HeaderMap, q: &BTreeMap<String, String>, op: FileOp) -> Result<(), String> {
    let Some(token) = agent.access_token() else {
        return Ok(());
    };
    if h.contains_key(warren_proto::ACCESS_TOKEN_HEADER) {
        return if token_ok(agent, h) { Ok(()) } else { Err("invalid access token".into()) };
    }
    let Some(sig) = q.get("signature") else {
        return Err("missing access token or signature".into());
    };
    let path = q.get("path").map(String::as_str).unwrap_or("");
    let username = q.get("username").map(String::as_str).unwrap_or("");
    let expiration = match q.get("signature_expiration") {
        None => None,
        Some(e) => Some(e.parse::<i64>().map_err(|_| "invalid signature_expiration".to_string())?),
    };
    if let Some(exp) = expiration {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        if exp < now {
            return Err("signature has expired".into());
        }
    }
    let want = file_signature(path, op, username, &token, expiration);
    if constant_time_eq(sig.as_bytes(), want.as_bytes()) {
        Ok(())
    } else {
        Err("invalid signature".into())
    }
}

async fn download(user: &User, q: &BTreeMap<String, String>) -> Response<RespBody> {
    let Some(raw) = q.get("path").filter(|p| !p.is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "query parameter 'path' is required");
    };
    let path = resolve_path(raw, &user.home);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return http_error(StatusCode::NOT_FOUND, format!("path '{}' does not exist", path.display()))
        }
        Err(e) => return http_error(StatusCode::INTERNAL_SERVER_ERROR, format!("open '{}': {e}", path.display())),
    };
    let meta = match file.metadata().await {
        Ok(m) => m,
        Err(e) => return http_error(StatusCode::INTERNAL_SERVER_ERROR, format!("stat '{}': {e}", path.display())),
    };
    if meta.is_dir() {
        return http_error(StatusCode::BAD_REQUEST, format!("path '{}' is a directory", path.display()));
    }
    let len = meta.len();
    let (tx, body) = if meta.is_file() { ChannelBody::with_len(4, len) } else { ChannelBody::channel(4) };
    tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    // A file that grows while read: never send more than announced.
                    let n = if meta.is_file() { n.min((len - sent) as usize) } else { n };
                    buf.truncate(n);
                    sent += n as u64;
                    if n == 0 || tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_DISPOSITION, format!("inline; filename=\"{}\"", name.replace('"', "")))
        .body(body)
        .unwrap_or_default()
}

/// An upload failure with its HTTP status.
struct UploadError(StatusCode, String);

impl UploadError {
    fn io(e: &std::io::Error, what: &str, path: &Path) -> Self {
        let status = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StatusCode::INSUFFICIENT_STORAGE,
            Some(libc::EISDIR) | Some(libc::ENOTDIR) => StatusCode::BAD_REQUEST,
            _ if e.kind() == std::io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        UploadError(status, format!("{what} '{}': {e}", path.display()))
    }
}

async fn upload(user: &User, path: Option<String>, req: Request<Incoming>) -> Response<RespBody> {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let gzip = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("gzip"))
        .unwrap_or(false);
    let body = req.into_body();
    let result = if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        upload_multipart(user, path, &ct, body).await
    } else {
        match path {
            None => Err(UploadError(StatusCode::BAD_REQUEST, "query parameter 'path' is required".into())),
            Some(p) => {
                let stream = body.into_data_stream().map(|r| r.map_err(std::io::Error::other));
                write_stream(user, &p, stream, gzip).await.map(|w| vec![w])
            }
        }
    };
    match result {
        Ok(infos) => json_response(StatusCode::OK, &infos),
        Err(UploadError(status, msg)) => http_error(status, msg),
    }
}

async fn upload_multipart(
    user: &User,
    path: Option<String>,
    ct: &str,
    body: Incoming,
) -> Result<Vec<WriteInfo>, UploadError> {
    let boundary = multer::parse_boundary(ct)
        .map_err(|e| UploadError(StatusCode::BAD_REQUEST, format!("bad multipart content type: {e}")))?;
    let stream = body.into_data_stream();
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(UploadError(StatusCode::BAD_REQUEST, format!("bad multipart body: {e}"))),
        };
        if field.name() != Some("file") {
            continue;
        }
        // The `path` query parameter (single-file uploads) wins over the filename.
        let target = match (&path, field.file_name()) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) if !f.is_empty() => f.to_string(),
            _ => {
                return Err(UploadError(
                    StatusCode::BAD_REQUEST,
                    "multipart part 'file' has no filename and no path was given".into(),
                ))
            }
        };
        let stream = field.map(|r| r.map_err(std::io::Error::other));
        out.push(write_stream(user, &target, stream, false).await?);
    }
    if out.is_empty() {
        return Err(UploadError(StatusCode::BAD_REQUEST, "multipart body holds no part named 'file'".into()));
    }
    Ok(out)
}

/// Streams chunks to `raw` (resolved for `user`), creating parent directories;
/// the file and new directories belong to the user.
async fn write_stream<S>(user: &User, raw: &str, mut stream: S, gzip: bool) -> Result<WriteInfo, UploadError>
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let path: PathBuf = resolve_path(raw, &user.home);
    if path.is_dir() {
        return Err(UploadError(StatusCode::BAD_REQUEST, format!("path '{}' is a directory", path.display())));
    }
    if let Some(parent) = path.parent() {
        create_dirs_owned(parent, user).map_err(|e| UploadError::io(&e, "make directory", parent))?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .await
        .map_err(|e| UploadError::io(&e, "open", &path))?;
    chown(&path, user);
    let mut gz = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UploadError(StatusCode::BAD_REQUEST, format!("reading upload: {e}")))?;
        let data: Vec<u8> = match gz.as_mut() {
            Some(d) => {
                d.write_all(&chunk).map_err(|e| UploadError(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
                std::mem::take(d.get_mut())
            }
            None => chunk.to_vec(),
        };
        file.write_all(&data).await.map_err(|e| UploadError::io(&e, "write", &path))?;
    }
    if let Some(d) = gz {
        let rest = d.finish().map_err(|e| UploadError(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
        file.write_all(&rest).await.map_err(|e| UploadError::io(&e, "write", &path))?;
    }
    file.flush().await.map_err(|e| UploadError::io(&e, "write", &path))?;
    Ok(WriteInfo {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        kind: "file".into(),
        path: path.to_string_lossy().into_owned(),
    })
}
