//! [`Admin`]: creates, describes and lists topics.

use kaelix_core::runtime::Runtime;
use kaelix_protocol::{Request, Response, Retention, StorageSpec, Topic, TopicDescription, TopicSummary};

use crate::connection::{Connection, unexpected};
use crate::error::Result;

/// A new topic's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopicSettings {
    /// Partitions (at least 1).
    pub partitions: u32,
    /// Where they live.
    pub storage: StorageSpec,
    /// What each retains (`None` dimensions: the server's defaults).
    pub retention: Retention,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings { partitions: 1, storage: StorageSpec::Memory, retention: Retention::default() }
    }
}

/// Topic administration.
pub struct Admin<R: Runtime> {
    conn: Connection<R>,
}

impl<R: Runtime> Clone for Admin<R> {
    fn clone(&self) -> Self {
        Admin { conn: self.conn.clone() }
    }
}

impl<R: Runtime> Admin<R> {
    /// Administration over `conn`.
    pub fn new(conn: Connection<R>) -> Admin<R> {
        Admin { conn }
    }

    /// Creates `topic`; `TopicExists` if it exists.
    pub async fn create_topic(&self, topic: &Topic, settings: TopicSettings) -> Result<()> {
        let request = Request::CreateTopic {
            topic: topic.clone(),
            partitions: settings.partitions,
            storage: settings.storage,
            retention: settings.retention,
        };
        match self.conn.request(&request).await? {
            Response::TopicCreated => Ok(()),
            other => Err(unexpected("TopicCreated", &other)),
        }
    }

    /// A topic's settings and the watermarks of its partitions.
    pub async fn describe_topic(&self, topic: &Topic) -> Result<TopicDescription> {
        match self.conn.request(&Request::DescribeTopic { topic: topic.clone() }).await? {
            Response::TopicDescription(description) => Ok(description),
            other => Err(unexpected("TopicDescription", &other)),
        }
    }

    /// Every topic, in name order.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        match self.conn.request(&Request::ListTopics).await? {
            Response::TopicList { topics } => Ok(topics),
            other => Err(unexpected("TopicList", &other)),
        }
    }

    /// Deletes a topic and its messages (a server that cannot answers
    /// `InvalidRequest`; Kaelix's single server cannot yet).
    pub async fn delete_topic(&self, topic: &Topic) -> Result<()> {
        match self.conn.request(&Request::DeleteTopic { topic: topic.clone() }).await? {
            Response::TopicDeleted => Ok(()),
            other => Err(unexpected("TopicDeleted", &other)),
        }
    }
}
