//! What a suspended sandbox leaves on the host for a short while after its
//! suspend.
//!
//! A suspend reports `suspended` as soon as the memory image is safe; the old
//! sandbox is stopped in the background ([`State::Busy`]). Its volume then
//! stays mounted and its network (slot, netns, addresses, firewall rules)
//! stays configured for the linger time ([`State::Ready`]), so that a resume
//! soon after (an agent that suspends between two steps) skips unmounting,
//! mounting and re-making them: ~70 ms of a ~400 ms resume here. After it,
//! they are released and the sandbox holds nothing on the host but its
//! files. A destroy, a shutdown or a resume takes them over at any time.

use crate::net::Slot;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::watch;

enum State {
    /// The old sandbox is being stopped, or its volume and network
    /// released; over when the receiver sees `true`.
    Busy(watch::Receiver<bool>),
    /// Stopped; volume mounted and network ready on `slot`. `turn` tells
    /// this stay from a later one of the same sandbox.
    Ready { slot: Slot, turn: u64 },
}

/// Ends a [`State::Busy`] when dropped (whatever path the work took), and
/// wakes whoever waits for it.
pub(crate) struct Busy {
    done: watch::Sender<bool>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.done.send(true);
    }
}

#[derive(Default)]
pub(crate) struct Lingering {
    sandboxes: Mutex<HashMap<String, State>>,
    turns: AtomicU64,
}

impl Lingering {
    /// Marks sandbox `id` busy: its old sandbox is being stopped.
    pub(crate) fn begin(&self, id: &str) -> Busy {
        let (done, rx) = watch::channel(false);
        self.sandboxes
            .lock()
            .unwrap()
            .insert(id.to_string(), State::Busy(rx));
        Busy { done }
    }

    /// The old sandbox of `id` is stopped; its volume and network on `slot`
    /// wait for a resume. The returned turn is for [`Lingering::expire`].
    pub(crate) fn ready(&self, id: &str, slot: Slot, busy: Busy) -> u64 {
        let turn = self.turns.fetch_add(1, Ordering::Relaxed);
        self.sandboxes
            .lock()
            .unwrap()
            .insert(id.to_string(), State::Ready { slot, turn });
        drop(busy);
        turn
    }

    /// Waits until nothing is under way for `id`, then takes its lingering
    /// volume and network if it has them: their slot, and from then on the
    /// caller owns them. `None`: nothing of it lingers.
    pub(crate) async fn take(&self, id: &str) -> Option<Slot> {
        loop {
            let mut rx = {
                let mut sandboxes = self.sandboxes.lock().unwrap();
                match sandboxes.get(id) {
                    None => return None,
                    Some(State::Ready { slot, .. }) => {
                        let slot = *slot;
                        sandboxes.remove(id);
                        return Some(slot);
                    }
                    Some(State::Busy(rx)) => rx.clone(),
                }
            };
            let _ = rx.wait_for(|done| *done).await;
            // The work is over: its entry is gone, or now `Ready`.
            let mut sandboxes = self.sandboxes.lock().unwrap();
            if matches!(sandboxes.get(id), Some(State::Busy(rx)) if *rx.borrow()) {
                sandboxes.remove(id);
            }
        }
    }

    /// Ends the linger of `id` begun at `turn`, unless a resume or destroy
    /// took it meanwhile: the slot to release, busy until the release is done.
    pub(crate) fn expire(&self, id: &str, turn: u64) -> Option<(Slot, Busy)> {
        let mut sandboxes = self.sandboxes.lock().unwrap();
        match sandboxes.get(id) {
            Some(State::Ready { slot, turn: t }) if *t == turn => {
                let slot = *slot;
                let (done, rx) = watch::channel(false);
                sandboxes.insert(id.to_string(), State::Busy(rx));
                Some((slot, Busy { done }))
            }
            _ => None,
        }
    }

    /// Forgets a finished piece of work of `id`.
    pub(crate) fn finish(&self, id: &str, busy: Busy) {
        let mut sandboxes = self.sandboxes.lock().unwrap();
        if matches!(sandboxes.get(id), Some(State::Busy(_))) {
            sandboxes.remove(id);
        }
        drop(busy);
    }

    /// Slots that lingering sandboxes hold: not to be handed out.
    pub(crate) fn slots(&self) -> Vec<Slot> {
        self.sandboxes
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| match s {
                State::Ready { slot, .. } => Some(*slot),
                State::Busy(_) => None,
            })
            .collect()
    }

    /// Sandboxes with something lingering or under way.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.sandboxes.lock().unwrap().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_resume_waits_for_the_stop_then_takes_the_slot() {
        let l = Arc::new(Lingering::default());
        let busy = l.begin("a");
        let taker = tokio::spawn({
            let l = l.clone();
            async move { l.take("a").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!taker.is_finished(), "take must wait while busy");
        let turn = l.ready("a", Slot(7), busy);
        assert_eq!(taker.await.unwrap(), Some(Slot(7)));
        // Taken: the expiry finds nothing to release, nothing lingers.
        assert!(l.expire("a", turn).is_none());
        assert!(l.ids().is_empty());
        assert_eq!(l.take("a").await, None);
    }

    #[tokio::test]
    async fn an_expiry_releases_once_and_a_taker_waits_for_it() {
        let l = Arc::new(Lingering::default());
        let turn = l.ready("a", Slot(3), l.begin("a"));
        assert_eq!(l.slots(), vec![Slot(3)]);
        let (slot, busy) = l.expire("a", turn).expect("still lingering");
        assert_eq!(slot, Slot(3));
        assert!(l.expire("a", turn).is_none(), "released twice");
        assert!(l.slots().is_empty());
        let taker = tokio::spawn({
            let l = l.clone();
            async move { l.take("a").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!taker.is_finished(), "take must wait for the release");
        l.finish("a", busy);
        assert_eq!(taker.await.unwrap(), None);
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn an_old_expiry_leaves_a_later_linger_alone() {
        let l = Lingering::default();
        let first = l.ready("a", Slot(1), l.begin("a"));
        assert_eq!(l.take("a").await, Some(Slot(1)));
        let second = l.ready("a", Slot(2), l.begin("a"));
        assert!(l.expire("a", first).is_none());
        assert_eq!(l.slots(), vec![Slot(2)]);
        assert!(l.expire("a", second).is_some());
    }

    #[tokio::test]
    async fn dropped_work_does_not_leave_takers_waiting() {
        let l = Arc::new(Lingering::default());
        let busy = l.begin("a");
        let taker = tokio::spawn({
            let l = l.clone();
            async move { l.take("a").await }
        });
        drop(busy); // e.g. the task panicked
        assert_eq!(taker.await.unwrap(), None);
        assert!(l.ids().is_empty());
    }
}
