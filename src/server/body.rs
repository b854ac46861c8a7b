//! The response body type of both doors: one or two chunks of `Bytes`, so
//! a token answer is the token's pre-rendered JSON (shared, not copied)
//! followed by a few bytes of `expires_in`, written with one vectored write.

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body of at most two chunks with an exact length.
#[derive(Debug, Default)]
pub struct Body {
    chunks: [Option<Bytes>; 2],
}

impl Body {
    pub fn two(first: Bytes, second: Bytes) -> Body {
        Body {
            chunks: [Some(first), Some(second)],
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body {
            chunks: [Some(b), None],
        }
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::from(Bytes::from(s))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.iter_mut().find_map(Option::take);
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.iter().all(Option::is_none)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.chunks.iter().flatten().map(|b| b.len() as u64).sum())
    }
}
