//! The hook through which a replicated publish's commit is traced.
//!
//! A publish to a replicated topic goes from proposal to outcome (forwarded
//! to the leader or not, committed by Raft, applied) inside
//! [`Broker::publish_replicated`](crate::Broker); distributed tracing
//! (`kaelix_server::trace`) wants that stretch as a `raft.commit` span,
//! a child of the publish's `broker.publish` span. The broker knows no
//! tracer: the server installs a [`CommitTracer`] on the broker
//! ([`Broker::set_commit_tracer`](crate::Broker::set_commit_tracer)), and
//! the broker hands it each replicated publish's message before the
//! proposal and the outcome after it. The tracer decides from the message
//! alone — a traced publish's message carries the W3C `traceparent` of its
//! `broker.publish` span (the front end set it) — so nothing about the
//! caller's span has to travel beside the message.
//!
//! Without a tracer (the simulator installs none, nor does `kaelix serve`
//! with tracing off) a replicated publish costs one atomic load more and
//! nothing else changes.

use crate::message::Message;

/// What traces replicated publishes (installed once per broker).
pub trait CommitTracer: Send + Sync + 'static {
    /// The commit span of a replicated publish of `message`, about to be
    /// proposed; `None` when that publish is not traced. Called once per
    /// replicated publish, so it must be cheap for an untraced message.
    fn begin(&self, message: &Message) -> Option<Box<dyn CommitSpan>>;
}

/// The open span of one replicated publish, from proposal to outcome. A
/// span dropped without either call (the publish's future was dropped, or
/// the proposal was refused) ends without an outcome.
pub trait CommitSpan: Send {
    /// The record was committed at `offset` of `partition`.
    fn committed(self: Box<Self>, partition: u32, offset: u64);

    /// The proposal failed (its error is the publisher's answer).
    fn failed(self: Box<Self>);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::FutureExt;
    use kaelix_core::rng::seeded;

    use super::*;
    use crate::storage::{ReplicationConfig, StorageKind};
    use crate::testing::ManualClock;
    use crate::topic::Topic;
    use crate::{Broker, BrokerError, TopicConfig};

    /// What the recording tracer saw, in order.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Seen {
        Begun(String),
        Committed(String, u32, u64),
        Failed(String),
        Dropped(String),
    }

    /// Traces the messages that carry a `traceparent`, recording each step.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Seen>>>);

    struct Open {
        payload: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        done: bool,
    }

    impl CommitTracer for Recorder {
        fn begin(&self, message: &Message) -> Option<Box<dyn CommitSpan>> {
            message.headers().get("traceparent")?;
            let payload = String::from_utf8(message.payload().to_vec()).unwrap();
            self.0.lock().unwrap().push(Seen::Begun(payload.clone()));
            Some(Box::new(Open { payload, seen: self.0.clone(), done: false }))
        }
    }

    impl CommitSpan for Open {
        fn committed(mut self: Box<Self>, partition: u32, offset: u64) {
            self.done = true;
            self.seen.lock().unwrap().push(Seen::Committed(self.payload.clone(), partition, offset));
        }
        fn failed(mut self: Box<Self>) {
            self.done = true;
            self.seen.lock().unwrap().push(Seen::Failed(self.payload.clone()));
        }
    }

    impl Drop for Open {
        fn drop(&mut self) {
            if !self.done {
                self.seen.lock().unwrap().push(Seen::Dropped(self.payload.clone()));
            }
        }
    }

    fn message(payload: &str, traced: bool) -> Message {
        let b = Message::builder().topic("r").payload(payload.to_owned());
        let b =
            if traced { b.header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") } else { b };
        b.build().unwrap()
    }

    /// Each traced replicated publish is begun before its proposal exists
    /// and finished with its own outcome — the committed position, or the
    /// failure — once; an untraced one is never traced; a publish given up
    /// before its outcome ends its span without one.
    #[test]
    fn a_traced_replicated_publish_is_followed_from_proposal_to_outcome() {
        let broker = Broker::with_replication(ManualClock::default(), seeded(3), Default::default());
        let storage = StorageKind::Replicated(ReplicationConfig::new(3).unwrap());
        broker.create_topic("r", TopicConfig { partitions: 1, storage, ..TopicConfig::default() }).unwrap();
        let recorder = Recorder::default();
        assert!(broker.set_commit_tracer(Arc::new(recorder.clone())));
        assert!(!broker.set_commit_tracer(Arc::new(Recorder::default())), "installed once");
        let topic = Topic::new("r").unwrap();
        let seen = || recorder.0.lock().unwrap().clone();

        let mut ok = Box::pin(broker.publish(message("a", true)));
        assert!(ok.as_mut().now_or_never().is_none(), "waits for its commit");
        assert_eq!(seen(), [Seen::Begun("a".into())], "begun when proposed, not finished");
        let mut plain = Box::pin(broker.publish(message("b", false)));
        assert!(plain.as_mut().now_or_never().is_none());
        let mut refused = Box::pin(broker.publish(message("c", true)));
        assert!(refused.as_mut().now_or_never().is_none());
        let mut abandoned = Box::pin(broker.publish(message("d", true)));
        assert!(abandoned.as_mut().now_or_never().is_none());
        let proposals = broker.next_proposals().now_or_never().flatten().expect("four proposals");
        assert_eq!(proposals.len(), 4);

        // Outcomes in another order than the proposals.
        broker.replicated_append(&topic, 0, 0, message("b", false));
        broker.proposal_done(proposals[1].id, Ok(0));
        broker.proposal_done(proposals[2].id, Err(BrokerError::ShutDown));
        broker.replicated_append(&topic, 0, 1, message("a", true));
        broker.proposal_done(proposals[0].id, Ok(1));
        assert_eq!(plain.now_or_never().unwrap().unwrap().offset, 0);
        assert!(refused.now_or_never().unwrap().is_err());
        assert_eq!(ok.now_or_never().unwrap().unwrap().offset, 1);
        drop(abandoned);
        assert_eq!(
            seen(),
            [
                Seen::Begun("a".into()),
                Seen::Begun("c".into()),
                Seen::Begun("d".into()),
                Seen::Failed("c".into()),
                Seen::Committed("a".into(), 0, 1),
                Seen::Dropped("d".into()),
            ]
        );
    }
}
