//! What a suspended sandbox leaves on the host for a short while after its
//! suspend.
//!
//! A suspend reports `suspended` as soon as the memory image is safe; the old
//! sandbox is stopped in the background ([`State::Stopping`]: its sentry
//! exits, its runtime container and cgroup are deleted). Its volume stays
//! mounted and its network (slot, netns, addresses, firewall rules) stays
//! configured meanwhile and then for the linger time ([`State::Ready`]), so
//! that a resume soon after (an agent that suspends between two steps)
//! skips unmounting, mounting and re-making them: ~70 ms of a ~400 ms resume
//! here. After it, they are released ([`State::Releasing`]) and the sandbox
//! holds nothing on the host but its files.
//!
//! With them lingers the sandbox's next run, made during its suspend's
//! checkpoint (a [`Standby`]), so that a resume only restores into it.
//!
//! A resume takes them over at once, also while the old sandbox is still
//! being stopped: the runtime restores beside it (a container and cgroup of
//! its own, see `sbx_runtime::runs`), so only a release under way, which
//! unmounts the volume and removes the network, is waited for. A destroy
//! and the server's shutdown wait for the stop too, then take over what
//! lingers.

use crate::net::Slot;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::watch;

enum State {
    /// The old sandbox is being stopped (the receiver sees `true` once it
    /// is); its volume and network stay on `slot`, with its `standby` if
    /// one was made, until a resume takes them (`None` from then on).
    Stopping {
        slot: Option<Slot>,
        standby: Option<Standby>,
        turn: u64,
        done: watch::Receiver<bool>,
    },
    /// Stopped; volume mounted and network ready on `slot`, and with a
    /// `standby`, the next run made (its sandbox's addresses are its).
    Ready {
        slot: Slot,
        turn: u64,
        standby: Option<Standby>,
    },
    /// The volume and network are being released; over when the receiver
    /// sees `true`.
    Releasing(watch::Receiver<bool>),
}

/// A suspended sandbox's next run, made during its suspend's checkpoint
/// (the runtime's `prepare_restore`), so that a resume only restores into
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Standby {
    /// Where it is pinned.
    pub pin: Option<sbx_runtime::Pin>,
}

/// Ends a piece of work ([`State::Stopping`], [`State::Releasing`]) when
/// dropped (whatever path the work took), and wakes whoever waits for it.
pub(crate) struct Busy {
    done: watch::Sender<bool>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.done.send(true);
    }
}

/// The old sandbox's stop of one suspend: hand it to [`Lingering::stopped`]
/// (dropped, it ends the stop too).
pub(crate) struct Stop {
    turn: u64,
    _busy: Busy,
}

#[derive(Default)]
pub(crate) struct Lingering {
    sandboxes: Mutex<HashMap<String, State>>,
    turns: AtomicU64,
}

impl Lingering {
    /// Sandbox `id` was suspended: its old sandbox is being stopped, its
    /// volume and network stay on `slot`, with its `standby`.
    pub(crate) fn begin(&self, id: &str, slot: Slot, standby: Option<Standby>) -> Stop {
        let turn = self.turns.fetch_add(1, Ordering::Relaxed);
        let (done, rx) = watch::channel(false);
        self.sandboxes.lock().unwrap().insert(
            id.to_string(),
            State::Stopping {
                slot: Some(slot),
                standby,
                turn,
                done: rx,
            },
        );
        Stop {
            turn,
            _busy: Busy { done },
        }
    }

    /// The old sandbox of `id` is stopped. Returns the turn for
    /// [`Lingering::expire`] when its volume and network now linger, `None`
    /// when a resume took them meanwhile (or a later suspend began).
    pub(crate) fn stopped(&self, id: &str, stop: Stop) -> Option<u64> {
        let mut sandboxes = self.sandboxes.lock().unwrap();
        let lingers = match sandboxes.get_mut(id) {
            Some(State::Stopping {
                slot,
                standby,
                turn,
                ..
            }) if *turn == stop.turn => slot.map(|s| (s, standby.take())),
            _ => return None,
        };
        match lingers {
            Some((slot, standby)) => {
                sandboxes.insert(
                    id.to_string(),
                    State::Ready {
                        slot,
                        turn: stop.turn,
                        standby,
                    },
                );
                Some(stop.turn)
            }
            None => {
                sandboxes.remove(id);
                None
            }
        }
    }

    /// For a resume: takes the lingering volume and network of `id` if it
    /// has them (their slot, and its standby if one was made; from then on
    /// the caller owns them), without waiting for the old sandbox's stop.
    /// Waits only for a release under way. `None`: nothing of it lingers.
    pub(crate) async fn take(&self, id: &str) -> Option<(Slot, Option<Standby>)> {
        self.take_when(id, false).await
    }

    /// For a destroy or a shutdown: waits until nothing is under way for
    /// `id` (the old sandbox stopped, a release done), then
    /// takes what lingers of it, as [`Lingering::take`]; a standby goes
    /// with the runtime's sandbox.
    pub(crate) async fn take_stopped(&self, id: &str) -> Option<Slot> {
        self.take_when(id, true).await.map(|(slot, _)| slot)
    }

    async fn take_when(&self, id: &str, after_stop: bool) -> Option<(Slot, Option<Standby>)> {
        loop {
            let mut rx = {
                let mut sandboxes = self.sandboxes.lock().unwrap();
                match sandboxes.get_mut(id) {
                    None => return None,
                    Some(State::Ready { slot, standby, .. }) => {
                        let taken = (*slot, standby.take());
                        sandboxes.remove(id);
                        return Some(taken);
                    }
                    Some(State::Stopping { done, .. }) if after_stop && !*done.borrow() => {
                        done.clone()
                    }
                    Some(State::Stopping {
                        slot,
                        standby,
                        done,
                        ..
                    }) => {
                        let taken = slot.take().map(|s| (s, standby.take()));
                        // A stop that ended without saying so (its task
                        // died) leaves nothing under way.
                        if *done.borrow() {
                            sandboxes.remove(id);
                        }
                        return taken;
                    }
                    Some(State::Releasing(rx)) if !*rx.borrow() => rx.clone(),
                    Some(State::Releasing(_)) => {
                        sandboxes.remove(id);
                        return None;
                    }
                }
            };
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Ends the linger of `id` begun at `turn`, unless a resume or destroy
    /// took it meanwhile: the slot to release, busy until the release is done.
    pub(crate) fn expire(&self, id: &str, turn: u64) -> Option<(Slot, Busy)> {
        let mut sandboxes = self.sandboxes.lock().unwrap();
        match sandboxes.get(id) {
            Some(State::Ready { slot, turn: t, .. }) if *t == turn => {
                let slot = *slot;
                let (done, rx) = watch::channel(false);
                sandboxes.insert(id.to_string(), State::Releasing(rx));
                Some((slot, Busy { done }))
            }
            _ => None,
        }
    }

    /// Forgets a finished release of `id`.
    pub(crate) fn finish(&self, id: &str, busy: Busy) {
        let mut sandboxes = self.sandboxes.lock().unwrap();
        if matches!(sandboxes.get(id), Some(State::Releasing(_))) {
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
                State::Stopping { slot, .. } => *slot,
                State::Ready { slot, .. } => Some(*slot),
                State::Releasing(_) => None,
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
    async fn a_resume_takes_the_slot_without_waiting_for_the_stop() {
        let l = Arc::new(Lingering::default());
        let stop = l.begin("a", Slot(7), None);
        assert_eq!(l.slots(), vec![Slot(7)], "held while the old sandbox stops");
        let taken = tokio::time::timeout(Duration::from_secs(1), l.take("a")).await;
        assert_eq!(
            taken.expect("a resume must not wait"),
            Some((Slot(7), None))
        );
        assert!(l.slots().is_empty());
        assert_eq!(l.take("a").await, None, "taken once");
        // The stop ends later: nothing lingers, nothing is left.
        assert_eq!(l.stopped("a", stop), None);
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn a_destroy_waits_for_the_stop_then_takes_the_slot() {
        let l = Arc::new(Lingering::default());
        let stop = l.begin("a", Slot(7), None);
        let taker = tokio::spawn({
            let l = l.clone();
            async move { l.take_stopped("a").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!taker.is_finished(), "take_stopped must wait for the stop");
        let turn = l.stopped("a", stop).expect("lingers");
        assert_eq!(taker.await.unwrap(), Some(Slot(7)));
        // Taken: the expiry finds nothing to release, nothing lingers.
        assert!(l.expire("a", turn).is_none());
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn a_destroy_after_a_resume_took_the_slot_still_waits_for_the_stop() {
        let l = Arc::new(Lingering::default());
        let stop = l.begin("a", Slot(7), None);
        assert_eq!(l.take("a").await, Some((Slot(7), None)));
        let taker = tokio::spawn({
            let l = l.clone();
            async move { l.take_stopped("a").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!taker.is_finished());
        assert_eq!(l.stopped("a", stop), None);
        assert_eq!(taker.await.unwrap(), None);
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn an_expiry_releases_once_and_a_taker_waits_for_it() {
        let l = Arc::new(Lingering::default());
        let stop = l.begin("a", Slot(3), None);
        let turn = l.stopped("a", stop).unwrap();
        assert_eq!(l.slots(), vec![Slot(3)]);
        let (slot, busy) = l.expire("a", turn).expect("still lingering");
        assert_eq!(slot, Slot(3));
        assert!(l.expire("a", turn).is_none(), "released twice");
        assert!(l.slots().is_empty());
        let resume = tokio::spawn({
            let l = l.clone();
            async move { l.take("a").await }
        });
        let destroy = tokio::spawn({
            let l = l.clone();
            async move { l.take_stopped("a").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!resume.is_finished(), "a resume must wait for the release");
        assert!(
            !destroy.is_finished(),
            "a destroy must wait for the release"
        );
        l.finish("a", busy);
        assert_eq!(resume.await.unwrap(), None);
        assert_eq!(destroy.await.unwrap(), None);
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn an_old_expiry_leaves_a_later_linger_alone() {
        let l = Lingering::default();
        let first = l.stopped("a", l.begin("a", Slot(1), None)).unwrap();
        assert_eq!(l.take("a").await, Some((Slot(1), None)));
        let second = l.stopped("a", l.begin("a", Slot(2), None)).unwrap();
        assert!(l.expire("a", first).is_none());
        assert_eq!(l.slots(), vec![Slot(2)]);
        assert!(l.expire("a", second).is_some());
    }

    #[tokio::test]
    async fn an_earlier_stop_ending_late_leaves_a_later_suspend_alone() {
        // Suspend, resume at once, suspend again before the first stop ends.
        let l = Lingering::default();
        let first = l.begin("a", Slot(1), None);
        assert_eq!(l.take("a").await, Some((Slot(1), None)));
        let second = l.begin("a", Slot(1), None);
        assert_eq!(l.stopped("a", first), None);
        assert_eq!(l.slots(), vec![Slot(1)], "the second suspend's, still held");
        let turn = l.stopped("a", second).expect("lingers");
        assert!(l.expire("a", turn).is_some());
    }

    fn standby() -> Standby {
        Standby {
            pin: Some(sbx_runtime::Pin {
                cpu: 1,
                partner: Some(0),
            }),
        }
    }

    #[tokio::test]
    async fn a_resume_takes_the_standby_also_while_the_old_sandbox_stops() {
        let l = Lingering::default();
        let stop = l.begin("a", Slot(5), Some(standby()));
        assert_eq!(l.take("a").await, Some((Slot(5), Some(standby()))));
        assert_eq!(l.stopped("a", stop), None, "taken: nothing lingers");
        assert!(l.ids().is_empty());
        // Once stopped, the standby lingers with the slot.
        let turn = l
            .stopped("a", l.begin("a", Slot(5), Some(standby())))
            .unwrap();
        assert_eq!(l.take("a").await, Some((Slot(5), Some(standby()))));
        assert!(l.expire("a", turn).is_none(), "taken: nothing to release");
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn a_destroy_takes_the_slot_its_standby_goes_with_the_runtime() {
        let l = Lingering::default();
        let turn = l
            .stopped("a", l.begin("a", Slot(6), Some(standby())))
            .unwrap();
        assert_eq!(l.slots(), vec![Slot(6)]);
        assert_eq!(l.take_stopped("a").await, Some(Slot(6)));
        assert!(l.expire("a", turn).is_none());
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn a_linger_with_a_standby_is_released_at_its_end() {
        let l = Lingering::default();
        let turn = l
            .stopped("a", l.begin("a", Slot(5), Some(standby())))
            .unwrap();
        let (slot, busy) = l.expire("a", turn).expect("released at its end");
        assert_eq!(slot, Slot(5));
        l.finish("a", busy);
        assert!(l.ids().is_empty());
    }

    #[tokio::test]
    async fn dropped_work_does_not_leave_takers_waiting() {
        let l = Arc::new(Lingering::default());
        let stop = l.begin("a", Slot(4), None);
        let taker = tokio::spawn({
            let l = l.clone();
            async move { l.take_stopped("a").await }
        });
        drop(stop); // e.g. the task panicked
                    // What lingered is the taker's to release.
        assert_eq!(taker.await.unwrap(), Some(Slot(4)));
        assert!(l.ids().is_empty());
    }
}
