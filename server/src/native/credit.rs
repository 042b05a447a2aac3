//! Credit accounting of one push subscription (PROTOCOL.md §8.3): the
//! number of messages the server may still deliver before the client grants
//! more. Deliveries consume it, `Credit` frames add to it (saturating at
//! `u32::MAX`), and the server never delivers while it is 0.

/// Messages a subscription may still be delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Credit(u32);

impl Credit {
    /// The subscription's initial credit.
    pub(crate) fn new(initial: u32) -> Credit {
        Credit(initial)
    }

    /// What remains.
    pub(crate) fn available(self) -> u32 {
        self.0
    }

    /// Adds a grant; the sum saturates at `u32::MAX`.
    pub(crate) fn grant(&mut self, add: u32) {
        self.0 = self.0.saturating_add(add);
    }

    /// How many of `wanted` messages may be delivered now (at most what
    /// remains).
    pub(crate) fn allows(self, wanted: usize) -> usize {
        wanted.min(self.0 as usize)
    }

    /// Records `n` delivered messages.
    ///
    /// # Panics
    /// If `n` is more than what remains: delivering past the credit is a bug.
    pub(crate) fn consume(&mut self, n: usize) {
        let n = u32::try_from(n).ok().filter(|&n| n <= self.0);
        let n = n.expect("a delivery never exceeds the remaining credit");
        self.0 -= n;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grants_add_and_saturate() {
        let mut c = Credit::new(3);
        c.grant(4);
        assert_eq!(c.available(), 7);
        c.grant(u32::MAX);
        assert_eq!(c.available(), u32::MAX, "saturates instead of wrapping");
    }

    #[test]
    fn deliveries_consume_and_zero_allows_nothing() {
        let mut c = Credit::new(2);
        assert_eq!(c.allows(5), 2);
        c.consume(2);
        assert_eq!(c.available(), 0);
        assert_eq!(c.allows(1), 0);
        c.grant(1);
        assert_eq!(c.allows(10), 1);
    }

    #[test]
    #[should_panic(expected = "never exceeds the remaining credit")]
    fn consuming_past_the_credit_is_a_bug() {
        Credit::new(1).consume(2);
    }

    proptest! {
        /// Whatever the interleaving of grants and deliveries that take
        /// what is allowed, the total delivered never exceeds the initial
        /// credit plus the grants, and the remainder is exactly the
        /// difference (below saturation).
        #[test]
        fn never_delivers_more_than_granted(
            initial in 0u32..100,
            ops in prop::collection::vec((any::<bool>(), 0u32..50), 0..100),
        ) {
            let mut c = Credit::new(initial);
            let (mut granted, mut delivered) = (u64::from(initial), 0u64);
            for (is_grant, n) in ops {
                if is_grant {
                    c.grant(n);
                    granted += u64::from(n);
                } else {
                    let n = c.allows(n as usize);
                    c.consume(n);
                    delivered += n as u64;
                }
                prop_assert!(delivered <= granted);
                prop_assert_eq!(u64::from(c.available()), granted - delivered);
            }
        }
    }
}
