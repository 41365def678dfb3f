//! Reading HTTP request bodies with a size limit and a deadline.
//!
//! A body over the limit is refused, but what the client is still sending is read and
//! discarded (up to [`DRAIN_FACTOR`] times the limit, within the same deadline) before the
//! answer goes out. Answering while the client still writes makes the server close the
//! connection under it, and the client then sees a broken pipe instead of the refusal.

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use thiserror::Error;

/// How much more than the limit is drained, as a multiple of the limit, before the
/// connection is given up on.
pub const DRAIN_FACTOR: usize = 4;

/// A body could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BodyError {
    /// More than the limit was sent.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed while the body was read.
    #[error("cannot read the body: {0}")]
    Read(String),
    /// The body did not arrive before the deadline.
    #[error("the body did not arrive within {}", humantime::format_duration(*.0))]
    Slow(Duration),
}

/// Reads at most `max` bytes of `body` within `deadline`.
pub async fn read(body: Body, max: usize, deadline: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(deadline, read_inner(body, max)).await {
        Ok(r) => r,
        Err(_) => Err(BodyError::Slow(deadline)),
    }
}

async fn read_inner(mut body: Body, max: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    let mut seen: usize = 0;
    let drain_limit = max.saturating_mul(DRAIN_FACTOR);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len());
        if seen > max {
            if seen > drain_limit {
                // Far over: stop reading; the connection is closed after the answer.
                return Err(BodyError::TooLarge(max));
            }
            buf.clear();
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if seen > max {
        return Err(BodyError::TooLarge(max));
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: Vec<&'static [u8]>) -> Body {
        let chunks = parts
            .into_iter()
            .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)));
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let got = read(body(vec![b"ab", b"cd"]), 4, Duration::from_secs(1)).await;
        assert_eq!(got, Ok(Bytes::from_static(b"abcd")));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_drained_and_refused() {
        let got = read(body(vec![b"abc", b"de", b"fgh"]), 4, Duration::from_secs(1)).await;
        assert_eq!(got, Err(BodyError::TooLarge(4)));
    }

    #[tokio::test]
    async fn a_body_far_over_the_limit_is_refused_without_reading_it_all() {
        let huge = vec![b"0123456789".as_slice(); 1000];
        let got = read(body(huge), 4, Duration::from_secs(1)).await;
        assert_eq!(got, Err(BodyError::TooLarge(4)));
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_slow() {
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let got = read(never, 4, Duration::from_millis(50)).await;
        assert_eq!(got, Err(BodyError::Slow(Duration::from_millis(50))));
    }
}
