//! Connect protocol framing, as the E2B SDKs use it (JSON codec only).
//!
//! Unary calls carry a bare JSON body (`application/json`). Streaming calls
//! carry a sequence of envelopes (`application/connect+json`): one flag byte,
//! a 4-byte big-endian length, then the payload. Flag 0x02 marks the
//! end-of-stream envelope, whose payload is `{}` or `{"error": {...}}`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Content type of unary requests and replies.
pub const CONTENT_TYPE_UNARY: &str = "application/json";
/// Content type of streaming requests and replies. The SDK compares the reply's
/// header to this string exactly: no `charset` parameter may be added.
pub const CONTENT_TYPE_STREAM: &str = "application/connect+json";

/// Envelope flag: payload is compressed (never used here).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: end of stream.
pub const FLAG_END_STREAM: u8 = 0x02;

/// Connect error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    const ALL: [Code; 16] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status a unary error with this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }

    /// The code a client infers from an HTTP status when the body carries no
    /// Connect code (a proxy's error, say).
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            413 | 429 => Code::ResourceExhausted,
            499 => Code::Canceled,
            500 => Code::Internal,
            501 | 505 => Code::Unimplemented,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Unknown,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Connect peers send string codes; proxies may send the HTTP status.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Code::parse(&s).unwrap_or(Code::Unknown)),
            serde_json::Value::Number(n) => Ok(Code::from_http_status(n.as_u64().unwrap_or(0) as u16)),
            _ => Ok(Code::Unknown),
        }
    }
}

/// A Connect error: the body of a failed unary call, or the `error` of an
/// end-of-stream envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ConnectError {
    pub code: Code,
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
}

/// The payload of the end-of-stream envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
}

/// Frames one envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Frames a message envelope holding `msg` as JSON.
pub fn message_envelope<T: Serialize>(msg: &T) -> Bytes {
    // Serializing plain data structs into a Vec cannot fail.
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    envelope(0, &json)
}

/// Frames the end-of-stream envelope.
pub fn end_stream_envelope(error: Option<ConnectError>) -> Bytes {
    let json = serde_json::to_vec(&EndStream { error }).unwrap_or_else(|_| b"{}".to_vec());
    envelope(FLAG_END_STREAM, &json)
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub payload: Bytes,
}

impl Envelope {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Why a byte stream could not be split into envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("envelope of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("compressed envelopes are not supported")]
    Compressed,
    #[error("stream ended inside an envelope ({0} bytes left over)")]
    Truncated(usize),
}

/// Incremental envelope decoder with a size limit per message.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder { buf: BytesMut::new(), limit }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete envelope, if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.limit {
            return Err(FrameError::TooLarge { size: len, limit: self.limit });
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Call at the end of the body: errors if a partial envelope is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

/// Parses the `Connect-Timeout-Ms` header value (at most 10 digits, per the spec).
pub fn parse_timeout_ms(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map_statuses() {
        for c in Code::ALL {
            assert_eq!(Code::parse(c.as_str()), Some(c));
        }
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::from_http_status(409), Code::AlreadyExists);
        let e: ConnectError = serde_json::from_str(r#"{"code":502,"message":"gone"}"#).unwrap();
        assert_eq!(e.code, Code::Unavailable);
    }

    #[test]
    fn decoder_splits_across_pushes() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&envelope(0, b"{\"a\":1}"));
        wire.extend_from_slice(&end_stream_envelope(None));
        let mut d = Decoder::new(1024);
        let mut got = Vec::new();
        for byte in wire {
            d.push(&[byte]);
            while let Some(env) = d.next_envelope().unwrap() {
                got.push(env);
            }
        }
        d.finish().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].payload[..], b"{\"a\":1}");
        assert!(got[1].is_end_stream());
        assert_eq!(&got[1].payload[..], b"{}");
    }

    #[test]
    fn decoder_rejects_oversized_compressed_and_truncated() {
        let mut d = Decoder::new(4);
        d.push(&envelope(0, b"12345"));
        assert_eq!(d.next_envelope(), Err(FrameError::TooLarge { size: 5, limit: 4 }));
        let mut d = Decoder::new(100);
        d.push(&envelope(FLAG_COMPRESSED, b"x"));
        assert_eq!(d.next_envelope(), Err(FrameError::Compressed));
        let mut d = Decoder::new(100);
        d.push(&[0, 0, 0, 0, 9, b'x']);
        assert_eq!(d.next_envelope(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(6)));
    }

    #[test]
    fn timeout_header() {
        assert_eq!(parse_timeout_ms("60000"), Some(60000));
        assert_eq!(parse_timeout_ms("-1"), None);
        assert_eq!(parse_timeout_ms("12345678901"), None);
    }
}
