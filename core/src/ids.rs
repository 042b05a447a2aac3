//! Identifiers shared by every layer.

use std::fmt;

/// A participant of a Kaelix deployment: a server node or (in simulation) a
/// client. Stable across restarts of the same node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}
