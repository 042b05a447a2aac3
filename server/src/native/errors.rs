//! How broker failures become the native protocol's typed errors
//! (PROTOCOL.md §9): one [`ErrorCode`] per [`BrokerError`] kind, and the
//! broker's message for humans.

use kaelix_broker::partition::ReadError;
use kaelix_broker::{BrokerError, GroupError};
use kaelix_protocol::ErrorCode;

/// The code answering a request the broker refused with `e`.
pub(crate) fn code_of(e: &BrokerError) -> ErrorCode {
    match e {
        BrokerError::Topic(_) => ErrorCode::InvalidTopic,
        BrokerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        // A topic that exists, with the same or other settings: both are a
        // create of an existing topic.
        BrokerError::TopicExists { .. } | BrokerError::StorageMismatch { .. } => ErrorCode::TopicExists,
        BrokerError::BadPartitionCount { .. } => ErrorCode::InvalidRequest,
        BrokerError::NoSuchPartition { .. } => ErrorCode::UnknownPartition,
        // The broker's stream limit: retry once others closed.
        BrokerError::Registry(_) => ErrorCode::Throttled,
        BrokerError::Group(g) => match g {
            GroupError::NotMember(_) => ErrorCode::UnknownMember,
            GroupError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
            GroupError::NotAssigned { .. } => ErrorCode::NotAssigned,
            GroupError::Backwards { .. } => ErrorCode::OffsetOutOfRange,
        },
        BrokerError::Read(ReadError::OffsetBelowRetained { .. } | ReadError::OffsetBeyondEnd { .. }) => {
            ErrorCode::OffsetOutOfRange
        }
        BrokerError::GroupTopicMismatch { .. }
        | BrokerError::InvalidSubscription(_)
        | BrokerError::NoDurableStorage(_)
        | BrokerError::NoReplication(_)
        | BrokerError::ReplicatedNeedsCommit(_) => ErrorCode::InvalidRequest,
        BrokerError::NotLeader { .. } => ErrorCode::NotLeader,
        // Leadership moved before commit: the produce may or may not land.
        BrokerError::ReplicationUnknown { .. } => ErrorCode::Timeout,
        // No leader confirmed a linearizable read: nothing changed, retry.
        BrokerError::ReadUnconfirmed { .. } => ErrorCode::Unavailable,
        BrokerError::ShutDown => ErrorCode::ShuttingDown,
        // A plugin chain dropped or dead-lettered the message: the request
        // was handled, but the message did not land on its topic (the
        // error's text names the plugin and why).
        BrokerError::Intercepted(_) => ErrorCode::InvalidRequest,
        // Dead-letter construction and closed streams are not reachable
        // from a request: a bug if they are.
        BrokerError::Message(_) | BrokerError::StreamClosed(_) => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use kaelix_broker::registry::RegistryError;
    use kaelix_broker::storage::StorageKind;
    use kaelix_broker::topic::Topic;
    use kaelix_broker::{MemberId, StreamId};

    use super::*;

    #[test]
    fn every_broker_error_has_its_code() {
        let t = Topic::new("orders").unwrap();
        let m = MemberId(3);
        let cases = [
            (BrokerError::Topic(Topic::new("a..b").unwrap_err()), ErrorCode::InvalidTopic),
            (BrokerError::UnknownTopic(t.clone()), ErrorCode::UnknownTopic),
            (BrokerError::TopicExists { topic: t.clone(), existing: 2 }, ErrorCode::TopicExists),
            (BrokerError::StorageMismatch { topic: t.clone(), existing: StorageKind::Memory }, ErrorCode::TopicExists),
            (
                BrokerError::BadPartitionCount { topic: t.clone(), requested: 0, why: "at least one" },
                ErrorCode::InvalidRequest,
            ),
            (
                BrokerError::NoSuchPartition { topic: t.clone(), partitions: 1, requested: 4 },
                ErrorCode::UnknownPartition,
            ),
            (BrokerError::Registry(RegistryError::TooManyStreams { limit: 1 }), ErrorCode::Throttled),
            (BrokerError::Group(GroupError::NotMember(m)), ErrorCode::UnknownMember),
            (BrokerError::Group(GroupError::StaleGeneration { given: 1, current: 2 }), ErrorCode::StaleGeneration),
            (BrokerError::Group(GroupError::NotAssigned { member: m, partition: 1 }), ErrorCode::NotAssigned),
            (
                BrokerError::Group(GroupError::Backwards { partition: 0, offset: 1, committed: 5 }),
                ErrorCode::OffsetOutOfRange,
            ),
            (
                BrokerError::Read(ReadError::OffsetBelowRetained { requested: 0, earliest: 4, latest: None }),
                ErrorCode::OffsetOutOfRange,
            ),
            (BrokerError::Read(ReadError::OffsetBeyondEnd { requested: 9, next: 4 }), ErrorCode::OffsetOutOfRange),
            (
                BrokerError::GroupTopicMismatch { group: "g".into(), existing: t.clone(), requested: t.clone() },
                ErrorCode::InvalidRequest,
            ),
            (BrokerError::InvalidSubscription("x"), ErrorCode::InvalidRequest),
            (BrokerError::NoDurableStorage(t.clone()), ErrorCode::InvalidRequest),
            (BrokerError::ShutDown, ErrorCode::ShuttingDown),
            (
                BrokerError::ReadUnconfirmed { topic: t.clone(), partition: 0, reason: "no leader".into() },
                ErrorCode::Unavailable,
            ),
            (
                BrokerError::Intercepted(kaelix_broker::intercept::Disposition::Dropped { plugin: "p".into() }),
                ErrorCode::InvalidRequest,
            ),
            (BrokerError::Message("x".into()), ErrorCode::Internal),
            (BrokerError::StreamClosed(StreamId(1)), ErrorCode::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(code_of(&error), code, "{error}");
        }
    }
}
