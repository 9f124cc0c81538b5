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
