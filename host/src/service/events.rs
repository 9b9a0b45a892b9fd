//! A spawn's event stream: stored events first, then live ones, ending with
//! the final event (ready, failed or stopped). Only the last stored event
//! can be final in a replay: an earlier `ready` is replayed as progress.

use std::sync::Arc;

use futures_util::stream::{self, Stream};
use tokio::sync::broadcast;

use super::Service;
use crate::model::SpawnEvent;

enum Phase {
    Backlog(std::vec::IntoIter<SpawnEvent>),
    Live,
    Done,
}

struct Cursor {
    svc: Arc<Service>,
    id: String,
    rx: broadcast::Receiver<SpawnEvent>,
    last: i64,
    phase: Phase,
}

/// All events of spawn `id` so far, then new ones as they happen; the
/// stream ends after the final event.
pub fn stream(
    svc: Arc<Service>,
    id: String,
) -> anyhow::Result<impl Stream<Item = SpawnEvent> + Send + 'static> {
    // Subscribe before reading the backlog, so nothing falls between.
    let rx = svc.events.subscribe();
    let backlog = svc.store.events(&id, 0)?;
    let cursor = Cursor {
        svc,
        id,
        rx,
        last: 0,
        phase: Phase::Backlog(backlog.into_iter()),
    };
    Ok(stream::unfold(cursor, |mut c| async move {
        loop {
            match &mut c.phase {
                Phase::Done => return None,
                Phase::Backlog(it) => match it.next() {
                    // A final event followed by more (ready, then stopping)
                    // no longer tells the current state: it is replayed as
                    // progress, so the replay never ends with an old
                    // `ready` while the spawn is stopping or stopped.
                    Some(mut e) if e.is_final && it.len() > 0 => {
                        e.is_final = false;
                        c.last = e.seq;
                        return Some((e, c));
                    }
                    Some(e) => return Some(c.emit(e)),
                    None => c.phase = Phase::Live,
                },
                Phase::Live => match c.rx.recv().await {
                    Ok(e) if e.spawn_id == c.id && e.seq > c.last => return Some(c.emit(e)),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some: read them from the store.
                        let missed = c.svc.store.events(&c.id, c.last).unwrap_or_default();
                        c.phase = Phase::Backlog(missed.into_iter());
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }))
}

impl Cursor {
    fn emit(mut self, e: SpawnEvent) -> (SpawnEvent, Cursor) {
        self.last = e.seq;
        if e.is_final {
            self.phase = Phase::Done;
        }
        (e, self)
    }
}
