//! The Kaelix native client: [`Producer`], [`Consumer`] and [`Admin`] over
//! one [`Connection`] speaking the native protocol (`PROTOCOL.md`).
//!
//! Everything is written against the runtime contract
//! ([`kaelix_core::runtime::Runtime`]): the same client runs on the real
//! executor against a real server and inside the simulator against a
//! simulated one.
//!
//! * [`Connection`]: connect and handshake, then pipelined requests (each
//!   answered by correlation id, in any order) and pushes routed to their
//!   subscriptions by a reader task; requests time out
//!   ([`ClientConfig::request_timeout`]).
//! * [`Producer`]: send one message or a batch and get their positions,
//!   once appended ([`AckLevel::Leader`]) or committed
//!   ([`AckLevel::Committed`]); or fire and forget.
//! * [`Consumer`]: fetch a partition from an offset (with long poll),
//!   subscribe with a credit window replenished as the application
//!   consumes ([`Subscription`]), or join a consumer group
//!   ([`GroupConsumer`]: poll, commit, heartbeat, leave).
//! * [`Admin`]: create, describe and list topics.
//!
//! Failures are [`ClientError`]s; a server's refusal carries its stable
//! [`ErrorCode`].
//!
//! ```no_run
//! use kaelix_client::{AckLevel, Connection, Consumer, FetchOptions, Message, Producer, Topic};
//! use kaelix_core::runtime::Runtime;
//! use kaelix_core::time::Duration;
//!
//! async fn example<R: Runtime>(rt: &R) -> Result<(), kaelix_client::ClientError> {
//!     let conn = Connection::connect(rt, "127.0.0.1:7422".parse().unwrap()).await?;
//!     let orders = Topic::new("orders").unwrap();
//!     let producer = Producer::new(conn.clone()).with_acks(AckLevel::Committed);
//!     let message = Message::builder().topic(&orders).key("customer-7").payload("42 widgets").build().unwrap();
//!     let at = producer.send(message).await?;
//!     let consumer = Consumer::new(conn);
//!     let options = FetchOptions::default().wait(Duration::from_secs(1));
//!     let fetched = consumer.fetch(&orders, at.partition, at.offset, options).await?;
//!     assert_eq!(fetched.messages[0].payload().as_ref(), b"42 widgets");
//!     Ok(())
//! }
//! ```

mod admin;
mod connection;
mod consumer;
mod error;
mod producer;
mod window;

pub use self::admin::{Admin, TopicSettings};
pub use self::connection::{ClientConfig, Connection};
pub use self::consumer::{Consumer, FetchOptions, Fetched, GroupConsumer, SubscribeOptions, Subscription};
pub use self::error::{ClientError, Result};
pub use self::producer::{AckLevel, Producer};
pub use self::window::CreditWindow;
pub use kaelix_protocol::{
    Credentials, ErrorCode, LeaderHint, MemberId, Message, PartitionInfo, Pattern, Position, Retention, ServerInfo,
    StartPosition, StorageSpec, Topic, TopicDescription, TopicSummary,
};
