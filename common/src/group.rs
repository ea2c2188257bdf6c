//! Group commit, written once: a worker takes a *round* — the first request it waits
//! for and every request already queued behind it, up to a bound — and serves the
//! whole round with one expensive step (one `fdatasync`, one Raft entry). N
//! concurrent requests pay for about one step, and no request waits for a round that
//! started after it (docs/design.md, "The commit path").
//!
//! Ratify's four group-commit loops use it: the Raft log writer and the participant
//! store's syncer (threads, `std::sync::mpsc`), the proposal batcher and the
//! completion logger of the driver (tasks, `tokio::sync::mpsc`).

/// A queue a round drains without waiting.
pub trait Drain {
    /// What is queued.
    type Item;
    /// The next queued item, if one is there right now.
    fn try_take(&mut self) -> Option<Self::Item>;
}

impl<T> Drain for std::sync::mpsc::Receiver<T> {
    type Item = T;
    fn try_take(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Drain for tokio::sync::mpsc::Receiver<T> {
    type Item = T;
    fn try_take(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Drain for tokio::sync::mpsc::UnboundedReceiver<T> {
    type Item = T;
    fn try_take(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// One round: `first`, then what `queue` holds right now, while `room_after` (told
/// each item as it joins, `first` too) says the round has room for more.
pub fn round<Q: Drain>(
    first: Q::Item,
    queue: &mut Q,
    mut room_after: impl FnMut(&Q::Item) -> bool,
) -> Vec<Q::Item> {
    let mut room = room_after(&first);
    let mut batch = vec![first];
    while room {
        let Some(item) = queue.try_take() else {
            break;
        };
        room = room_after(&item);
        batch.push(item);
    }
    batch
}

/// [`round`] bounded by a number of items only (at least one: `first`).
pub fn round_of<Q: Drain>(first: Q::Item, queue: &mut Q, max_items: usize) -> Vec<Q::Item> {
    let mut n = 0;
    round(first, queue, |_| {
        n += 1;
        n < max_items
    })
}

impl<T> Drain for &std::sync::mpsc::Receiver<T> {
    type Item = T;
    fn try_take(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_takes_what_is_queued_up_to_its_bound() {
        let (tx, mut rx) = std::sync::mpsc::channel();
        for i in 1..=5 {
            tx.send(i).expect("open");
        }
        assert_eq!(round_of(0, &mut rx, 3), vec![0, 1, 2]);
        // A weight bound: stop once the round holds 5 or more.
        let mut weight = 0;
        assert_eq!(
            round(10, &mut rx, |w| {
                weight += *w;
                weight < 15
            }),
            vec![10, 3, 4]
        );
        assert_eq!(round_of(7, &mut rx, 10), vec![7, 5], "only what is queued");
        assert_eq!(round_of(8, &mut rx, 0), vec![8], "the first always goes");
    }

    #[test]
    fn a_shared_receiver_drains_too() {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..100 {
            tx.send(i).expect("open");
        }
        let mut queue = &rx;
        let first = queue.recv().expect("queued");
        assert_eq!(
            round(first, &mut queue, |_| true),
            (0..100).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn tokio_queues_drain_too() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..4 {
            tx.send(i).expect("open");
        }
        let first = rx.recv().await.expect("queued");
        assert_eq!(round_of(first, &mut rx, 10), vec![0, 1, 2, 3]);
    }
}
