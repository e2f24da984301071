//! Response bodies: fixed bytes, or a channel whose every chunk is flushed to
//! the client as soon as it is sent.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

pub type RespBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed_unsync()
}

pub fn empty() -> RespBody {
    full(Bytes::new())
}

/// A body fed by an mpsc channel: each chunk becomes one DATA frame / chunk.
/// Dropping the body (client gone) makes the sender's `send` fail.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    len: Option<u64>,
}

impl ChannelBody {
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<Bytes, std::io::Error>>, RespBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ChannelBody { rx, len: None }.boxed_unsync())
    }

    /// A channel body that announces its exact length (Content-Length).
    pub fn with_len(capacity: usize, len: u64) -> (mpsc::Sender<Result<Bytes, std::io::Error>>, RespBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ChannelBody { rx, len: Some(len) }.boxed_unsync())
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
