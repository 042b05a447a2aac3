//! The client's side of credit-based flow control (PROTOCOL.md §8.3).
//!
//! A subscription opens with a window of `W` messages of credit. As the
//! application consumes messages, [`CreditWindow::consumed`] returns the
//! grants to send: once half the window (at least one message) was
//! consumed since the last grant, all of it is granted back. So the server
//! never has more than `W` messages outstanding — delivered but not yet
//! consumed plus what it may still send — and a consumer that keeps
//! consuming never stalls for lack of credit.

/// Credit to grant back as messages are consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditWindow {
    window: u32,
    /// Consumed since the last grant.
    consumed: u32,
}

impl CreditWindow {
    /// A window of `window` messages (at least 1).
    pub fn new(window: u32) -> CreditWindow {
        CreditWindow { window: window.max(1), consumed: 0 }
    }

    /// The window: the subscription's initial credit.
    pub fn window(self) -> u32 {
        self.window
    }

    /// The application consumed `n` more messages; returns the credit to
    /// grant now, if any.
    pub fn consumed(&mut self, n: u32) -> Option<u32> {
        self.consumed = self.consumed.saturating_add(n);
        let threshold = (self.window / 2).max(1);
        if self.consumed >= threshold { Some(std::mem::take(&mut self.consumed)) } else { None }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grants_half_windows() {
        let mut w = CreditWindow::new(10);
        assert_eq!(w.window(), 10);
        assert_eq!((0..4).filter_map(|_| w.consumed(1)).count(), 0);
        assert_eq!(w.consumed(1), Some(5));
        assert_eq!(w.consumed(7), Some(7));
        let mut one = CreditWindow::new(1);
        assert_eq!(one.consumed(1), Some(1), "a window of one grants every message back");
        assert_eq!(CreditWindow::new(0).window(), 1);
    }

    proptest! {
        /// A server that delivers only while it has credit, against a client
        /// consuming in arbitrary steps: the messages outstanding (delivered
        /// and unconsumed, plus the server's credit) never exceed the
        /// window, and a client that consumed everything it got always
        /// leaves the server credit to send more.
        #[test]
        fn never_more_than_the_window_outstanding_and_never_stalls(
            window in 1u32..64,
            steps in prop::collection::vec((0u32..80, 0u32..80), 1..200),
        ) {
            let mut w = CreditWindow::new(window);
            let mut server_credit = window;
            let mut buffered = 0u32;
            for (deliver, consume) in steps {
                let d = deliver.min(server_credit);
                server_credit -= d;
                buffered += d;
                let c = consume.min(buffered);
                buffered -= c;
                if let Some(grant) = w.consumed(c) {
                    server_credit = server_credit.saturating_add(grant);
                }
                prop_assert!(buffered + server_credit <= window, "{buffered} + {server_credit} > {window}");
                if buffered == 0 {
                    prop_assert!(server_credit > 0, "stalled: nothing buffered and no credit");
                }
            }
        }
    }
}
