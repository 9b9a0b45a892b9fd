//! The one table of a spawn's lifecycle: state × event → state, and whether
//! the job must be cancelled. Every change of a spawn's state is an
//! [`Event`] looked up here ([`next`], through `Entry::fire`); a pair
//! missing from [`TABLE`] is an [`IllegalTransition`], logged and refused,
//! and `Service::update` refuses any state change that is not in the table
//! besides.
//!
//! ```text
//! validating ─Validated→ submitting ─Submitted→ queued ⇄ running ─Listening→ ready
//!      │                      │                   │         │                 │
//!      └────StopRequested─────┴──→ stopping ←─────┴─────────┴─────────────────┘
//!                                     │ JobGone / StoppedBeforeSubmit / SubmitFailed
//!                                     ▼
//!            failed ←(SubmitFailed, JobEnded, HostRefused, Timeout, NeverListened, Restarted)
//!            stopped
//! ```

use crate::model::SpawnState::{self, *};

/// What happens to a spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The plugin accepted the options.
    Validated,
    /// The plugin's submit returned a job id.
    Submitted,
    /// The plugin's submit failed.
    SubmitFailed,
    /// The hub asked to stop (DELETE).
    StopRequested,
    /// A stop came before any job was submitted: nothing to cancel.
    StoppedBeforeSubmit,
    /// The scheduler: the job waits in the queue.
    JobPending,
    /// The scheduler: the job runs.
    JobRunning,
    /// The scheduler: the job ended (or is gone).
    JobEnded,
    /// The scheduler names a host the instance refuses.
    HostRefused,
    /// The queue or start timeout passed.
    Timeout,
    /// The reported server accepts connections.
    Listening,
    /// The reported server never accepted a connection in time.
    NeverListened,
    /// The host restarted while the spawn was here and it cannot go on.
    Restarted,
}

impl Event {
    pub const ALL: [Event; 13] = [
        Event::Validated,
        Event::Submitted,
        Event::SubmitFailed,
        Event::StopRequested,
        Event::StoppedBeforeSubmit,
        Event::JobPending,
        Event::JobRunning,
        Event::JobEnded,
        Event::HostRefused,
        Event::Timeout,
        Event::Listening,
        Event::NeverListened,
        Event::Restarted,
    ];
}

/// One row: from `from`, `event` leads to `to`; `cancel`: the job (which
/// may exist) must be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub from: SpawnState,
    pub event: Event,
    pub to: SpawnState,
    pub cancel: bool,
}

const fn row(from: SpawnState, event: Event, to: SpawnState, cancel: bool) -> Row {
    Row {
        from,
        event,
        to,
        cancel,
    }
}

use Event as E;

/// Every legal transition. A stop of a spawn that is stopping or ended,
/// and scheduler news that changes nothing, are rows to the same state.
pub const TABLE: &[Row] = &[
    row(Validating, E::Validated, Submitting, false),
    row(Validating, E::StopRequested, Stopping, false),
    row(Validating, E::Restarted, Failed, false),
    row(Submitting, E::Submitted, Queued, false),
    row(Submitting, E::SubmitFailed, Failed, false),
    row(Submitting, E::StopRequested, Stopping, false),
    row(Submitting, E::Restarted, Failed, false),
    row(Queued, E::JobPending, Queued, false),
    row(Queued, E::JobRunning, Running, false),
    row(Queued, E::JobEnded, Failed, false),
    row(Queued, E::HostRefused, Failed, true),
    row(Queued, E::Timeout, Failed, true),
    row(Queued, E::Listening, Ready, false),
    row(Queued, E::NeverListened, Failed, true),
    row(Queued, E::StopRequested, Stopping, true),
    row(Running, E::JobPending, Queued, false),
    row(Running, E::JobRunning, Running, false),
    row(Running, E::JobEnded, Failed, false),
    row(Running, E::HostRefused, Failed, true),
    row(Running, E::Timeout, Failed, true),
    row(Running, E::Listening, Ready, false),
    row(Running, E::NeverListened, Failed, true),
    row(Running, E::StopRequested, Stopping, true),
    row(Ready, E::JobRunning, Ready, false),
    row(Ready, E::JobEnded, Stopped, false),
    row(Ready, E::StopRequested, Stopping, true),
    // A job submitted while a stop was requested is cancelled at once.
    row(Stopping, E::Submitted, Stopping, true),
    row(Stopping, E::SubmitFailed, Stopped, false),
    row(Stopping, E::StoppedBeforeSubmit, Stopped, false),
    row(Stopping, E::JobEnded, Stopped, false),
    row(Stopping, E::StopRequested, Stopping, false),
    row(Stopped, E::StopRequested, Stopped, false),
    row(Failed, E::StopRequested, Failed, false),
];

/// An event the spawn's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: a spawn in state {from} cannot take {event:?}")]
pub struct IllegalTransition {
    pub from: SpawnState,
    pub event: Event,
}

/// The row for `event` in state `from`.
pub fn next(from: SpawnState, event: Event) -> Result<Row, IllegalTransition> {
    TABLE
        .iter()
        .find(|r| r.from == from && r.event == event)
        .copied()
        .ok_or(IllegalTransition { from, event })
}

/// Whether some event leads from `from` to `to` (or it is no change).
pub fn is_legal(from: SpawnState, to: SpawnState) -> bool {
    from == to || TABLE.iter().any(|r| r.from == from && r.to == to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_table_is_a_function_and_ended_spawns_stay_ended() {
        let mut seen = HashSet::new();
        for r in TABLE {
            assert!(seen.insert((r.from, r.event)), "two rows for {r:?}");
            if r.from.is_terminal() {
                assert_eq!(r.to, r.from, "{r:?}");
            }
            // Only a spawn whose job may exist is cancelled.
            if r.cancel {
                assert!(
                    matches!(r.from, Queued | Running | Ready | Stopping),
                    "{r:?}"
                );
            }
        }
        // Every state is reachable from validating.
        let mut reach = vec![Validating];
        let mut i = 0;
        while i < reach.len() {
            let from = reach[i];
            for r in TABLE.iter().filter(|r| r.from == from) {
                if !reach.contains(&r.to) {
                    reach.push(r.to);
                }
            }
            i += 1;
        }
        assert_eq!(reach.len(), SpawnState::ALL.len(), "{reach:?}");
    }

    #[test]
    fn an_illegal_event_is_a_typed_error() {
        let e = next(Ready, Event::Validated).unwrap_err();
        assert_eq!(
            e,
            IllegalTransition {
                from: Ready,
                event: Event::Validated
            }
        );
        assert!(e.to_string().contains("ready"));
        assert!(next(Stopped, Event::Listening).is_err());
        assert!(!is_legal(Stopped, Ready));
        assert!(!is_legal(Failed, Queued));
        assert!(is_legal(Queued, Ready));
    }

    /// The world a spawn lives in, for the property test: its job (none,
    /// live, ended) and whether a cancel of it was asked for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Job {
        None,
        Live,
        Ended,
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// An event from the hub, the plugin, the scheduler, the job.
        Event(Event),
        /// kill -9 of the host and a restart: recovery's events.
        Crash,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            10 => (0..Event::ALL.len()).prop_map(|i| Step::Event(Event::ALL[i])),
            1 => Just(Step::Crash),
        ]
    }

    /// What recovery does with a spawn found at startup (`recover_one`).
    fn recovery_event(state: SpawnState, job: Job) -> Option<Event> {
        match state {
            Validating | Submitting => Some(Event::Restarted),
            Stopping if job == Job::None => Some(Event::StoppedBeforeSubmit),
            _ => None,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Random sequences of hub calls, plugin and scheduler answers,
        /// callbacks and crashes: the state is always one the table
        /// reaches, an illegal event changes nothing, an ended spawn stays
        /// ended, a stop is always possible, and no job is lost: a spawn
        /// that ended while its job may still run has asked for a cancel.
        #[test]
        fn random_event_sequences_never_reach_an_illegal_state_or_lose_a_job(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let mut state = Validating;
            let mut job = Job::None;
            let mut job_id: Option<u32> = None;
            let mut cancel_asked = false;
            let mut seen = vec![Validating];
            for st in steps {
                let ev = match st {
                    Step::Event(ev) => ev,
                    Step::Crash => match recovery_event(state, job) {
                        Some(ev) => ev,
                        None => continue,
                    },
                };
                // What the world allows: the scheduler speaks only of a
                // job that exists; submit answers only while submitting.
                let world_ok = match ev {
                    Event::JobPending | Event::JobRunning | Event::HostRefused => job == Job::Live,
                    Event::JobEnded => job != Job::None,
                    Event::Listening | Event::NeverListened => job == Job::Live,
                    Event::Submitted => job == Job::None,
                    _ => true,
                };
                if !world_ok {
                    continue;
                }
                let before = state;
                match next(state, ev) {
                    Ok(r) => {
                        proptest::prop_assert_eq!(r.from, state);
                        state = r.to;
                        if r.cancel {
                            cancel_asked = true;
                        }
                        match ev {
                            Event::Submitted => {
                                job = Job::Live;
                                job_id = Some(1);
                            }
                            Event::JobEnded => job = Job::Ended,
                            _ => {}
                        }
                    }
                    Err(e) => {
                        proptest::prop_assert_eq!(e.from, before);
                    }
                }
                proptest::prop_assert!(is_legal(before, state), "{before} -> {state}");
                if before.is_terminal() {
                    proptest::prop_assert_eq!(state, before, "an ended spawn moved");
                }
                if !seen.contains(&state) {
                    seen.push(state);
                }
                // A stop is always possible.
                proptest::prop_assert!(next(state, Event::StopRequested).is_ok(), "{state}");
                // No job lost: a live job has its id, and an ended spawn
                // with a live job asked for its cancel.
                if job == Job::Live {
                    proptest::prop_assert!(job_id.is_some());
                    if state.is_terminal() {
                        proptest::prop_assert!(cancel_asked, "{state} with a live job and no cancel");
                    }
                }
            }
        }
    }
}
