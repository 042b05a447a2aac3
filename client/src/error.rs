//! [`ClientError`]: everything a client call can fail with.

use kaelix_core::runtime::NetError;
use kaelix_core::time::Duration;
use kaelix_protocol::{ErrorCode, LeaderHint};

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("connecting to the server: {0}")]
    Connect(NetError),
    /// The server refused the request with a typed error (PROTOCOL.md §9).
    #[error("{code}: {message}")]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Where the leader is (only with [`ErrorCode::NotLeader`]).
        leader: Option<LeaderHint>,
    },
    /// No answer within the time allowed. The outcome is unknown: a
    /// produce may have been appended.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection is closed (by either side, or it broke); every
    /// outstanding request fails with this.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The server sent something this client cannot make sense of.
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The call's arguments cannot make a valid request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again (after a back-off, on a new connection for
    /// [`ClientError::Closed`]) may succeed. A retried produce may be
    /// appended twice (at least once).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code.is_retriable(),
            ClientError::Connect(_) | ClientError::Timeout(_) | ClientError::Closed(_) => true,
            ClientError::Protocol(_) | ClientError::InvalidArgument(_) => false,
        }
    }
}

/// A client result.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retries() {
        let e = ClientError::Server { code: ErrorCode::UnknownTopic, message: "unknown topic x".into(), leader: None };
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
        assert!(!e.is_retriable());
        assert_eq!(e.to_string(), "UnknownTopic (20): unknown topic x");
        let throttled = ClientError::Server { code: ErrorCode::Throttled, message: String::new(), leader: None };
        assert!(throttled.is_retriable());
        assert!(ClientError::Timeout(Duration::from_secs(1)).is_retriable());
        assert_eq!(ClientError::Closed("x".into()).code(), None);
        assert!(!ClientError::InvalidArgument("x".into()).is_retriable());
    }
}
