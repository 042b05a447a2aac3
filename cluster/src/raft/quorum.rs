//! Cluster configurations and quorums, including joint consensus.
//!
//! A configuration names the **voters** and the **learners** (members that
//! receive the log but neither vote nor count toward commitment). During a
//! membership change the configuration is **joint** (§6 of the Raft
//! dissertation): `outgoing` holds the old voters, `voters` the new ones,
//! and every decision — an election, a commit, a ReadIndex confirmation,
//! CheckQuorum — needs a majority of *each* set.

use std::collections::BTreeSet;

use kaelix_core::NodeId;

/// Who votes, who learns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    /// Voters (the incoming set while joint).
    pub voters: BTreeSet<NodeId>,
    /// The outgoing voters while joint; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Non-voting members.
    pub learners: BTreeSet<NodeId>,
}

/// What a tally of votes says so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum (of both halves, if joint) granted.
    Won,
    /// Too many refused for a quorum ever to grant.
    Lost,
    /// Not decided yet.
    Pending,
}

impl Configuration {
    /// A plain configuration of `voters`.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Configuration { voters: voters.into_iter().collect(), ..Default::default() }
    }

    /// Whether a membership change is half done.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes (in either half).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether `id` is a member at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member, voters and learners, in id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters.iter().chain(&self.outgoing).chain(&self.learners).copied().collect()
    }

    /// Every voter of either half.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.outgoing).copied().collect()
    }

    /// Whether the nodes for which `yes` holds form a quorum.
    pub fn has_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        let majority =
            |set: &BTreeSet<NodeId>| set.is_empty() || set.iter().filter(|&&n| yes(n)).count() > set.len() / 2;
        majority(&self.voters) && majority(&self.outgoing)
    }

    /// Tally of an election: `granted` / `refused` voters so far.
    pub fn tally(&self, granted: &BTreeSet<NodeId>, refused: &BTreeSet<NodeId>) -> VoteResult {
        if self.has_quorum(|n| granted.contains(&n)) {
            VoteResult::Won
        } else if !self.has_quorum(|n| !refused.contains(&n)) {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// The highest index a quorum holds, given each voter's match index:
    /// the majority-th largest of each half, then the smaller of the two.
    pub fn committed_index(&self, match_of: impl Fn(NodeId) -> u64) -> u64 {
        let half = |set: &BTreeSet<NodeId>| {
            if set.is_empty() {
                return u64::MAX;
            }
            let mut m: Vec<u64> = set.iter().map(|&n| match_of(n)).collect();
            m.sort_unstable_by(|a, b| b.cmp(a));
            m[set.len() / 2]
        };
        half(&self.voters).min(half(&self.outgoing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|&n| NodeId(n)).collect()
    }

    #[test]
    fn majority_of_a_plain_configuration() {
        let c = Configuration::new(ids(&[1, 2, 3]));
        assert!(c.has_quorum(|n| n.0 <= 2));
        assert!(!c.has_quorum(|n| n.0 == 1));
        assert_eq!(c.committed_index(|n| [0, 9, 5, 7][n.0 as usize]), 7);
    }

    #[test]
    fn joint_needs_both_halves() {
        let c = Configuration { voters: ids(&[3, 4, 5]), outgoing: ids(&[1, 2, 3]), learners: ids(&[6]) };
        assert!(!c.has_quorum(|n| [1, 2, 3].contains(&n.0)), "old half alone is not enough");
        assert!(c.has_quorum(|n| [2, 3, 4].contains(&n.0)));
        // Old half holds 7 on a majority, new half only 5.
        let matches = [0, 9, 7, 5, 1, 5, 100];
        assert_eq!(c.committed_index(|n| matches[n.0 as usize]), 5);
        assert!(!c.is_voter(NodeId(6)) && c.contains(NodeId(6)));
    }

    #[test]
    fn tallies_decide_early() {
        let c = Configuration::new(ids(&[1, 2, 3, 4, 5]));
        assert_eq!(c.tally(&ids(&[1, 2]), &ids(&[3])), VoteResult::Pending);
        assert_eq!(c.tally(&ids(&[1, 2, 4]), &ids(&[3])), VoteResult::Won);
        assert_eq!(c.tally(&ids(&[1, 2]), &ids(&[3, 4, 5])), VoteResult::Lost);
    }
}
