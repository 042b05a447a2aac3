//! Consumer-group memberships of native clients (PROTOCOL.md §8.4).
//!
//! A membership is not tied to the connection that joined: the server keeps
//! the broker's [`GroupMember`] here, by member id, until the member leaves
//! or sends no request of its group for the session timeout; a client that
//! reconnects rejoins under its id. [`expire_sessions`] removes the silent
//! ones (dropping a `GroupMember` leaves the group: a rebalance).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kaelix_broker::{GroupMember, MemberId};
use kaelix_core::runtime::{Clock, Runtime};
use kaelix_core::time::{Duration, Instant};
use kaelix_protocol::ErrorCode;

use crate::Shared;
use crate::shutdown::unless;

struct Entry<C: Clock> {
    group: String,
    member: Arc<GroupMember<C>>,
    last_seen: Instant,
}

/// The memberships, by member id.
pub(crate) struct Memberships<C: Clock> {
    inner: Mutex<BTreeMap<MemberId, Entry<C>>>,
}

impl<C: Clock> Default for Memberships<C> {
    fn default() -> Self {
        Memberships { inner: Mutex::new(BTreeMap::new()) }
    }
}

/// Why a membership was not found: the group does not exist, or the
/// member is not (or no longer) in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// `UnknownGroup`.
    Group,
    /// `UnknownMember`.
    Member,
}

impl Missing {
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            Missing::Group => ErrorCode::UnknownGroup,
            Missing::Member => ErrorCode::UnknownMember,
        }
    }
}

impl<C: Clock> Memberships<C> {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<MemberId, Entry<C>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a new member of `group`.
    pub(crate) fn insert(&self, group: &str, member: GroupMember<C>, now: Instant) -> Arc<GroupMember<C>> {
        let member = Arc::new(member);
        let entry = Entry { group: group.to_owned(), member: member.clone(), last_seen: now };
        self.lock().insert(member.id(), entry);
        member
    }

    /// The member `id` of `group`, its session refreshed; `None` if it is
    /// not one (the caller tells an unknown group from an unknown member).
    pub(crate) fn touch(&self, group: &str, id: MemberId, now: Instant) -> Option<Arc<GroupMember<C>>> {
        let mut members = self.lock();
        let entry = members.get_mut(&id).filter(|e| e.group == group)?;
        entry.last_seen = entry.last_seen.max(now);
        Some(entry.member.clone())
    }

    /// Forgets member `id` of `group` (the caller drops it: it leaves).
    pub(crate) fn remove(&self, group: &str, id: MemberId) -> Option<Arc<GroupMember<C>>> {
        let mut members = self.lock();
        members.get(&id).filter(|e| e.group == group)?;
        members.remove(&id).map(|e| e.member)
    }

    /// Forgets the members silent since before `now - timeout` that no
    /// request is using; returns them to be dropped outside the lock.
    pub(crate) fn expire(&self, now: Instant, timeout: Duration) -> Vec<(String, Arc<GroupMember<C>>)> {
        let mut members = self.lock();
        let expired: Vec<MemberId> = members
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) > timeout && Arc::strong_count(&e.member) == 1)
            .map(|(id, _)| *id)
            .collect();
        expired.into_iter().filter_map(|id| members.remove(&id)).map(|e| (e.group, e.member)).collect()
    }

    /// Members kept.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Removes silent members until the server stops.
pub(crate) async fn expire_sessions<R: Runtime>(shared: Arc<Shared<R>>) {
    let timeout = shared.config().native.group_session_timeout();
    let interval = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    while unless(&shared.stopping, shared.rt.sleep(interval)).await.is_some() {
        for (group, member) in shared.memberships.expire(shared.rt.now(), timeout) {
            tracing::info!(group, member = member.id().0, ?timeout, "consumer-group member timed out");
            drop(member);
        }
    }
}

#[cfg(test)]
mod tests {
    use kaelix_broker::testing::ManualClock;
    use kaelix_broker::{Broker, TopicConfig};

    use super::*;

    #[test]
    fn sessions_expire_unless_touched_or_in_use() {
        let clock = ManualClock::default();
        let broker = Broker::new(clock, kaelix_core::rng::seeded(1), Default::default());
        broker.create_topic("t", TopicConfig { partitions: 2, ..TopicConfig::default() }).unwrap();
        let m = Memberships::default();
        let t0 = Instant::from_nanos(0);
        let a = m.insert("g", broker.join_group("g", "t").unwrap(), t0);
        let b = m.insert("g", broker.join_group("g", "t").unwrap(), t0);
        let (a_id, b_id) = (a.id(), b.id());
        drop(a);
        assert!(m.touch("other", b_id, t0).is_none(), "a member of another group");
        let timeout = Duration::from_secs(30);
        let t1 = Instant::from_nanos(20_000_000_000);
        assert!(m.touch("g", a_id, t1).is_some());
        let t2 = Instant::from_nanos(40_000_000_000);
        // b is silent past the timeout but held by a request: kept.
        assert!(m.expire(t2, timeout).is_empty());
        drop(b);
        let expired = m.expire(t2, timeout);
        assert_eq!(expired.iter().map(|(_, e)| e.id()).collect::<Vec<_>>(), [b_id]);
        drop(expired);
        assert_eq!(broker.join_group("g", "t").unwrap().assignment().unwrap().1, [1], "a rebalance dealt the others");
        assert_eq!(m.len(), 1);
        assert!(m.remove("g", a_id).is_some());
        assert!(m.remove("g", a_id).is_none());
    }
}
