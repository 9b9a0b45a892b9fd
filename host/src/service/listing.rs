//! Reading the spawn table a page at a time (`GET /v1/spawns`), and
//! forgetting ended spawns: on request (purge) and after the instance's
//! `lifecycle.retention_secs` (see [`Service::purge_expired`]).

use chrono::{DateTime, Utc};

use super::{Service, ServiceError};
use crate::model::{Spawn, SpawnState};

/// Where a page ended: the (created_at, id) of its last spawn, the order of
/// the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

impl ListCursor {
    /// `NANOS_ID`: the creation time in Unix nanoseconds, `_`, the spawn id
    /// (`sp-` and 24 hex digits). Every string of that form is a valid
    /// cursor: the page after it starts after that position.
    pub fn encode(&self) -> String {
        let nanos = self.created_at.timestamp_nanos_opt().unwrap_or(0).max(0);
        format!("{nanos}_{}", self.id)
    }

    pub fn decode(s: &str) -> Option<ListCursor> {
        let (nanos, id) = s.split_once('_')?;
        let hex = id.strip_prefix("sp-")?;
        // At most 18 digits, or 19 starting with 1-8: always an i64.
        let ok = (nanos.len() <= 18
            || (nanos.len() == 19 && (b'1'..=b'8').contains(&nanos.as_bytes()[0])))
            && !nanos.is_empty()
            && nanos.bytes().all(|b| b.is_ascii_digit())
            && hex.len() == 24
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return None;
        }
        Some(ListCursor {
            created_at: DateTime::from_timestamp_nanos(nanos.parse().ok()?),
            id: id.to_string(),
        })
    }

    fn of(s: &Spawn) -> ListCursor {
        ListCursor {
            created_at: s.created_at,
            id: s.id.clone(),
        }
    }
}

/// What `GET /v1/spawns` asks for.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub user: Option<String>,
    pub state: Option<SpawnState>,
    /// Only spawns changed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only spawns after this one in the list's order.
    pub after: Option<ListCursor>,
    pub limit: usize,
}

impl Service {
    /// One page of spawns matching `f`, oldest first (by creation, then
    /// id), and the cursor of the next page if there are more.
    pub fn list_page(&self, f: &ListFilter) -> (Vec<Spawn>, Option<ListCursor>) {
        let inner = self.lock();
        let key = |s: &Spawn| (s.created_at, s.id.clone());
        let after = f.after.as_ref().map(|c| (c.created_at, c.id.clone()));
        let mut hits: Vec<&Spawn> = inner
            .spawns
            .values()
            .map(|e| &e.spawn)
            .filter(|s| f.user.as_deref().is_none_or(|u| s.user.name == u))
            .filter(|s| f.state.is_none_or(|st| s.state == st))
            .filter(|s| f.since.is_none_or(|t| s.updated_at >= t))
            .filter(|s| after.as_ref().is_none_or(|a| key(s) > *a))
            .collect();
        let limit = f.limit.max(1);
        let more = hits.len() > limit;
        if more {
            hits.select_nth_unstable_by(limit, |a, b| {
                a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id))
            });
            hits.truncate(limit);
        }
        hits.sort_unstable_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let next = if more {
            hits.last().map(|s| ListCursor::of(s))
        } else {
            None
        };
        (hits.into_iter().cloned().collect(), next)
    }

    /// Forgets an ended spawn now: its record and its events. A spawn that
    /// has not ended is refused (`spawn_active`): stop it first.
    pub fn purge(&self, id: &str) -> Result<(), ServiceError> {
        let mut inner = self.lock();
        let e = inner
            .spawns
            .get(id)
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        if !e.spawn.state.is_terminal() {
            return Err(ServiceError::Conflict {
                code: "spawn_active",
                message: format!(
                    "spawn {id} is {}; only a stopped or failed spawn can be purged: stop it (DELETE without purge), then purge it",
                    e.spawn.state
                ),
                spawn_id: id.to_string(),
            });
        }
        self.store.delete(id)?;
        let s = inner.spawns.remove(id).map(|e| e.spawn);
        if let Some(s) = s {
            let key = (s.user.name, s.server_name, s.request_id);
            if inner.by_request.get(&key).is_some_and(|i| i == id) {
                inner.by_request.remove(&key);
            }
        }
        tracing::info!(spawn_id = id, "spawn purged");
        Ok(())
    }

    /// Purges every ended spawn whose end is longer ago than its instance's
    /// `lifecycle.retention_secs` (the default for an instance no longer
    /// configured). Returns how many.
    pub fn purge_expired(&self, now: DateTime<Utc>) -> usize {
        let expired: Vec<String> = {
            let inner = self.lock();
            inner
                .spawns
                .values()
                .filter(|e| e.spawn.state.is_terminal())
                .filter(|e| {
                    let keep = self
                        .registry
                        .config
                        .instances
                        .get(&e.spawn.instance)
                        .map_or(crate::config::DEFAULT_RETENTION, |i| i.lifecycle.retention);
                    chrono::Duration::from_std(keep)
                        .ok()
                        .and_then(|k| e.spawn.state_since.checked_add_signed(k))
                        .is_some_and(|until| until < now)
                })
                .map(|e| e.spawn.id.clone())
                .collect()
        };
        let mut n = 0;
        for id in expired {
            match self.purge(&id) {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(spawn_id = %id, "cannot purge the expired spawn: {e}"),
            }
        }
        if n > 0 {
            tracing::info!("purged {n} spawns ended longer ago than their retention");
        }
        n
    }

    /// Runs [`Service::purge_expired`] every minute until the service is
    /// dropped.
    pub fn start_retention(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                {
                    let Some(svc) = weak.upgrade() else { return };
                    svc.purge_expired(Utc::now());
                }
                tokio::time::sleep(RETENTION_EVERY).await;
            }
        })
    }
}

/// How often ended spawns past their retention are looked for.
pub const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = ListCursor {
            created_at: DateTime::from_timestamp_nanos(1_764_580_000_123_456_789),
            id: "sp-0123456789abcdef01234567".into(),
        };
        assert_eq!(ListCursor::decode(&c.encode()), Some(c));
        for bad in [
            "",
            "!!",
            "1_sp-0123",
            "_sp-0123456789abcdef01234567",
            "9234567890123456789_sp-0123456789abcdef01234567",
            "12345678901234567890_sp-0123456789abcdef01234567",
            "1_sp-0123456789ABCDEF01234567",
            "1_sp-0123456789abcdef01234567x",
        ] {
            assert_eq!(ListCursor::decode(bad), None, "{bad}");
        }
    }
}
