use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::CodecError;
use crate::proto::{RequestKind, ResponseKind};

/// Why a connection to an extension failed.
///
/// Once a connection fails, every pending and later call on it fails with a
/// clone of the same error, so each caller sees the real cause. The error is
/// cheap to clone.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The extension closed the connection.
    #[error("connection closed by the extension")]
    Closed,
    /// Reading from or writing to the socket failed.
    #[error("connection i/o failed: {0}")]
    Io(Arc<io::Error>),
    /// A frame could not be decoded (garbage, oversized or truncated).
    #[error("protocol violation: {0}")]
    Codec(Arc<CodecError>),
    /// The extension answered when no request was waiting for an answer.
    #[error("protocol violation: unsolicited `{response}` response with no request pending")]
    Unsolicited {
        /// The kind of the response that arrived.
        response: ResponseKind,
    },
    /// The extension answered a request with a response of the wrong kind.
    #[error("protocol violation: `{response}` response to a `{request}` request")]
    WrongResponse {
        /// The request being answered.
        request: RequestKind,
        /// The kind of the response that arrived.
        response: ResponseKind,
    },
    /// An answer carried the correlation id of another request (the
    /// extension skipped, repeated or reordered answers), or none at all
    /// from an extension that had been echoing ids.
    #[error("protocol violation: {} arrived where the answer to request #{expected} was due", describe(*.got))]
    Mismatched {
        /// The correlation id of the request due.
        expected: u64,
        /// The correlation id the answer carried, if any.
        got: Option<u64>,
    },
    /// A request over the frame limit: refused before anything was
    /// written. Only this call fails; the connection is fine, and nothing
    /// reached the extension.
    #[error("request of {len} bytes exceeds the {max}-byte frame limit; not sent")]
    RequestTooLarge {
        /// The request's encoded length, in bytes.
        len: usize,
        /// The frame limit, in bytes.
        max: usize,
    },
    /// An answer that arrived well framed but cannot be used: over the
    /// frame limit (skipped, never stored) or not a valid message (a tool
    /// result that is not UTF-8, say). Only its call fails; the connection
    /// stays in step and keeps serving.
    #[error("protocol violation: unusable answer: {0}")]
    UnusableAnswer(Arc<CodecError>),
    /// An MCP server's answer that does not follow the protocol (a result
    /// of the wrong type, or one that does not parse). Only its call
    /// fails; the session goes on.
    #[error("protocol violation: malformed answer: {0}")]
    Malformed(Arc<str>),
    /// The oldest request went unanswered long past its deadline.
    ///
    /// An extension that skips an answer would shift every later answer by
    /// one, so the connection is reset instead.
    #[error("connection stuck: a `{request}` request has been unanswered for {waited:?}")]
    Stuck {
        /// The request that was never answered.
        request: RequestKind,
        /// How long it had waited.
        waited: Duration,
    },
}

fn describe(got: Option<u64>) -> String {
    match got {
        Some(id) => format!("the answer to request #{id}"),
        None => "an answer without a correlation id".to_owned(),
    }
}

impl ConnectionError {
    /// Whether the extension broke the protocol (as opposed to going away).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            ConnectionError::Codec(_)
                | ConnectionError::Unsolicited { .. }
                | ConnectionError::WrongResponse { .. }
                | ConnectionError::Mismatched { .. }
                | ConnectionError::Stuck { .. }
                | ConnectionError::UnusableAnswer(_)
                | ConnectionError::Malformed(_)
        )
    }
}

impl From<CodecError> for ConnectionError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(io) if io.kind() == io::ErrorKind::BrokenPipe => ConnectionError::Closed,
            CodecError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset => {
                ConnectionError::Closed
            }
            CodecError::Io(io) => ConnectionError::Io(Arc::new(io)),
            other => ConnectionError::Codec(Arc::new(other)),
        }
    }
}
