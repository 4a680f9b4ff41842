//! Timers: a timer service per keyed backend, for windows and other operators that act when
//! event time (the watermark) or processing time passes a point.
//!
//! A timer is `(key, namespace, timestamp)` in one of two domains, event time and processing
//! time; registering the same timer twice keeps one.
//!
//! Timers fire one at a time from the head of their queue, as in Flink's timer service: the
//! engine moves time forward ([`TimerService::advance_watermark_to`],
//! [`TimerService::advance_processing_time_to`]), then takes the next due timer
//! ([`TimerService::next_due_event_time`], [`TimerService::next_due_processing_time`]) and runs
//! its callback, until none is due. Each timer is removed from the queue and the state just
//! before it is handed out, with its key as a [`KeyContext`], ready for the state calls the
//! timer triggers. So whatever a callback does to the timers counts for the timers after it in
//! the same advance: a timer it registers at or before the current time fires in that advance,
//! after the current one, in timestamp order; a timer it deletes does not fire.
//! [`TimerService::fire_event_time_timers`] and [`TimerService::fire_processing_time_timers`]
//! run that loop with a callback that gets the service and the backend.
//!
//! [`TimerService::advance_watermark`] and [`TimerService::advance_processing_time`] take the
//! batch due now, in timestamp order: the timers they return were removed before any of them
//! was handed out, so nothing done while processing the batch changes it (timers registered
//! then at or before the current time fire at the next call, timers deleted then still come in
//! the batch). Engines whose timer callbacks register or delete timers use the one-at-a-time
//! calls.
//!
//! Time does not go back: advancing to a time below the current one leaves it, and a call
//! hands out what is due at the current time (a timer registered at or before the current time
//! fires at the next call, even one with the same time).
//!
//! Timers are keyed state: each domain is a map state (`__timers/<service>/event-time` and
//! `__timers/<service>/processing-time`) from the key to its `(timestamp, namespace)` pairs.
//! So they live in the key group of their key, go into checkpoints and savepoints with the rest
//! of the state, restore at any parallelism with their keys, and cost a checkpoint's
//! synchronous part nothing beyond the state they are: no separate format. The service keeps
//! an in-memory index ordered by `(timestamp, key bytes, namespace bytes)` next to the state,
//! rebuilt from the state when the service is created on a restored backend. Ties at one
//! timestamp fire in the order of the keys' and namespaces' encodings, the same on every
//! backend and at every parallelism. The current times are the engine's (not checkpointed): a
//! service created on a restored backend starts with none.

use std::collections::BTreeSet;

use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::state::key::{AsKey, KeyContext};
use crate::model::state::{KeyedStateBackend, MapState, MapStateDescriptor, StateKey};

/// The prefix of the state names timer services use; engine states should not start with it.
pub const TIMER_STATE_PREFIX: &str = "__timers/";

/// A due timer: its timestamp, its key (ready as the current key) and its namespace.
#[derive(Debug, Clone)]
pub struct Timer<K, N> {
    /// When it was due.
    pub timestamp: i64,
    /// Its key.
    pub key: KeyContext<K>,
    /// Its namespace (a window, for windowed operators).
    pub namespace: N,
}

/// The timers of one keyed backend (see the module docs).
pub struct TimerService<K, N> {
    event_time: TimerQueue<K, N>,
    processing_time: TimerQueue<K, N>,
    watermark: Option<i64>,
    processing_now: Option<i64>,
}

/// One domain's timers: the persisted map state and the in-memory index over it.
struct TimerQueue<K, N> {
    name: String,
    state: MapState<K, (), (i64, N), ()>,
    /// `(timestamp, key encoding, namespace encoding)` of every pending timer.
    index: BTreeSet<(i64, Vec<u8>, Vec<u8>)>,
}

impl<K: StateKey, N: StateKey> TimerService<K, N> {
    /// The timer service `name` of `backend`: registers its states, and indexes the timers a
    /// restore brought back.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if the service's states exist with other key or namespace
    /// types; decode and backend errors while indexing restored timers.
    pub fn new<B: KeyedStateBackend>(backend: &mut B, name: &str) -> Result<Self> {
        Ok(Self {
            event_time: TimerQueue::open(
                backend,
                &format!("{TIMER_STATE_PREFIX}{name}/event-time"),
            )?,
            processing_time: TimerQueue::open(
                backend,
                &format!("{TIMER_STATE_PREFIX}{name}/processing-time"),
            )?,
            watermark: None,
            processing_now: None,
        })
    }

    /// Registers an event-time timer; registering it again changes nothing.
    ///
    /// # Errors
    /// As the state calls: a key this instance does not own, encoding and backend errors.
    pub fn register_event_time_timer<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &impl AsKey<K>,
        namespace: &N,
        timestamp: i64,
    ) -> Result<()> {
        self.event_time.register(backend, key, namespace, timestamp)
    }

    /// Deletes an event-time timer, if it is pending.
    ///
    /// # Errors
    /// As [`TimerService::register_event_time_timer`].
    pub fn delete_event_time_timer<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &impl AsKey<K>,
        namespace: &N,
        timestamp: i64,
    ) -> Result<()> {
        self.event_time.delete(backend, key, namespace, timestamp)
    }

    /// Registers a processing-time timer; registering it again changes nothing.
    ///
    /// # Errors
    /// As [`TimerService::register_event_time_timer`].
    pub fn register_processing_time_timer<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &impl AsKey<K>,
        namespace: &N,
        timestamp: i64,
    ) -> Result<()> {
        self.processing_time
            .register(backend, key, namespace, timestamp)
    }

    /// Deletes a processing-time timer, if it is pending.
    ///
    /// # Errors
    /// As [`TimerService::register_event_time_timer`].
    pub fn delete_processing_time_timer<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &impl AsKey<K>,
        namespace: &N,
        timestamp: i64,
    ) -> Result<()> {
        self.processing_time
            .delete(backend, key, namespace, timestamp)
    }

    /// Moves event time to `watermark` and takes the batch due now: removes and returns every
    /// event-time timer with a timestamp at or before the event time, in timestamp order. A
    /// watermark below the current one leaves event time where it is (watermarks do not go
    /// back); the timers due at the current one are still taken.
    ///
    /// The batch is taken whole before the caller sees any of it: timers that processing it
    /// registers or deletes do not change it (module docs). For callbacks that register or
    /// delete timers, use [`TimerService::fire_event_time_timers`] or
    /// [`TimerService::advance_watermark_to`] with [`TimerService::next_due_event_time`].
    ///
    /// # Errors
    /// Decode and backend errors; the timers not yet removed stay pending.
    pub fn advance_watermark<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        watermark: i64,
    ) -> Result<Vec<Timer<K, N>>> {
        self.advance_watermark_to(watermark);
        let mut due = Vec::new();
        while let Some(timer) = self.next_due_event_time(backend)? {
            due.push(timer);
        }
        Ok(due)
    }

    /// Moves processing time to `now` and takes the batch due now, as
    /// [`TimerService::advance_watermark`] does for event time.
    ///
    /// # Errors
    /// As [`TimerService::advance_watermark`].
    pub fn advance_processing_time<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        now: i64,
    ) -> Result<Vec<Timer<K, N>>> {
        self.advance_processing_time_to(now);
        let mut due = Vec::new();
        while let Some(timer) = self.next_due_processing_time(backend)? {
            due.push(timer);
        }
        Ok(due)
    }

    /// Moves event time to `watermark`, firing nothing: the event-time timers at or before it
    /// become due, for [`TimerService::next_due_event_time`]. A watermark below the current one
    /// changes nothing. Returns the event time now.
    pub fn advance_watermark_to(&mut self, watermark: i64) -> i64 {
        let now = self.watermark.map_or(watermark, |w| w.max(watermark));
        self.watermark = Some(now);
        now
    }

    /// Moves processing time to `now`, firing nothing, as
    /// [`TimerService::advance_watermark_to`] does event time. Returns the processing time now.
    pub fn advance_processing_time_to(&mut self, now: i64) -> i64 {
        let now = self.processing_now.map_or(now, |p| p.max(now));
        self.processing_now = Some(now);
        now
    }

    /// Removes and returns the first due event-time timer (the earliest, at or before the
    /// event time), or `None` if none is due (or event time was never advanced). Call it again
    /// after handling each timer: timers registered or deleted in between are seen.
    ///
    /// # Errors
    /// Decode and backend errors; the timer then stays pending.
    pub fn next_due_event_time<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> Result<Option<Timer<K, N>>> {
        match self.watermark {
            Some(until) => self.event_time.pop_due(backend, until),
            None => Ok(None),
        }
    }

    /// Removes and returns the first due processing-time timer, as
    /// [`TimerService::next_due_event_time`] does for event time.
    ///
    /// # Errors
    /// As [`TimerService::next_due_event_time`].
    pub fn next_due_processing_time<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> Result<Option<Timer<K, N>>> {
        match self.processing_now {
            Some(until) => self.processing_time.pop_due(backend, until),
            None => Ok(None),
        }
    }

    /// Moves event time to `watermark` and fires the due event-time timers one at a time, in
    /// timestamp order: `on_timer` gets the service, the backend and the timer, and may
    /// register and delete timers, which then fire (at or before the event time) or not
    /// (deleted) in this same call. Returns how many fired. A callback that registers a due
    /// timer every time it runs never lets this return.
    ///
    /// # Errors
    /// The first error of `on_timer` or of the timers' state; the timers after it stay
    /// pending (the one whose callback failed has been removed).
    pub fn fire_event_time_timers<B, F>(
        &mut self,
        backend: &mut B,
        watermark: i64,
        mut on_timer: F,
    ) -> Result<usize>
    where
        B: KeyedStateBackend,
        F: FnMut(&mut Self, &mut B, Timer<K, N>) -> Result<()>,
    {
        self.advance_watermark_to(watermark);
        let mut fired = 0;
        while let Some(timer) = self.next_due_event_time(backend)? {
            on_timer(self, backend, timer)?;
            fired += 1;
        }
        Ok(fired)
    }

    /// Moves processing time to `now` and fires the due processing-time timers one at a time,
    /// as [`TimerService::fire_event_time_timers`] does for event time.
    ///
    /// # Errors
    /// As [`TimerService::fire_event_time_timers`].
    pub fn fire_processing_time_timers<B, F>(
        &mut self,
        backend: &mut B,
        now: i64,
        mut on_timer: F,
    ) -> Result<usize>
    where
        B: KeyedStateBackend,
        F: FnMut(&mut Self, &mut B, Timer<K, N>) -> Result<()>,
    {
        self.advance_processing_time_to(now);
        let mut fired = 0;
        while let Some(timer) = self.next_due_processing_time(backend)? {
            on_timer(self, backend, timer)?;
            fired += 1;
        }
        Ok(fired)
    }

    /// The event time: the highest watermark advanced to, if any (not checkpointed: the
    /// engine's, like source positions).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The processing time: the highest time advanced to, if any (not checkpointed).
    pub fn processing_time(&self) -> Option<i64> {
        self.processing_now
    }

    /// Pending timers: (event time, processing time).
    pub fn pending(&self) -> (usize, usize) {
        (
            self.event_time.index.len(),
            self.processing_time.index.len(),
        )
    }

    /// The earliest pending event-time timestamp, if any.
    pub fn next_event_time(&self) -> Option<i64> {
        self.event_time.index.first().map(|t| t.0)
    }

    /// The earliest pending processing-time timestamp, if any (for an engine that sets a wall
    /// clock alarm).
    pub fn next_processing_time(&self) -> Option<i64> {
        self.processing_time.index.first().map(|t| t.0)
    }
}

impl<K: StateKey, N: StateKey> TimerQueue<K, N> {
    fn open<B: KeyedStateBackend>(backend: &mut B, name: &str) -> Result<Self> {
        let state = backend.map_state(&MapStateDescriptor::<K, (), (i64, N), ()>::new(name))?;
        let mut index = BTreeSet::new();
        let keys: Vec<K> = backend
            .keys::<K, ()>(state.id(), None)?
            .map(|k| k.map(|(key, ())| key))
            .collect::<Result<_>>()?;
        for key in keys {
            let key_bytes = encode(name, &key)?;
            for entry in state.keys(backend, &key, &())? {
                let (timestamp, namespace) = entry?;
                index.insert((timestamp, key_bytes.clone(), encode(name, &namespace)?));
            }
        }
        Ok(Self {
            name: name.to_owned(),
            state,
            index,
        })
    }

    fn register<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &impl AsKey<K>,
        namespace: &N,
        timestamp: i64,
    ) -> Result<()> {
        let key = key.key_ref(backend)?;
        let entry = (timestamp, namespace.clone());
        if self.state.contains(backend, &key, &(), &entry)? {
            return Ok(());
        }
        self.state.put(backend, &key, &(), entry, ())?;
        self.index.insert((
            timestamp,
            encode(&self.name, key.key())?,
            encode(&self.name, namespace)?,
        ));
        Ok(())
    }

    fn delete<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &impl AsKey<K>,
        namespace: &N,
        timestamp: i64,
    ) -> Result<()> {
        let key = key.key_ref(backend)?;
        self.state
            .remove(backend, &key, &(), &(timestamp, namespace.clone()))?;
        self.index.remove(&(
            timestamp,
            encode(&self.name, key.key())?,
            encode(&self.name, namespace)?,
        ));
        Ok(())
    }

    /// Removes and returns the head of the queue if it is due at `until`.
    fn pop_due<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        until: i64,
    ) -> Result<Option<Timer<K, N>>> {
        let Some((timestamp, key_bytes, namespace_bytes)) = self.index.first() else {
            return Ok(None);
        };
        if *timestamp > until {
            return Ok(None);
        }
        let timestamp = *timestamp;
        let name = &self.name;
        let codec = DefaultCodec::default();
        let key: K = codec
            .decode(key_bytes)
            .map_err(|e| decode_error(name, e.0))?;
        let namespace: N = codec
            .decode(namespace_bytes)
            .map_err(|e| decode_error(name, e.0))?;
        let key = backend.key_context(key)?;
        self.state
            .remove(backend, &key, &(), &(timestamp, namespace.clone()))?;
        self.index.pop_first();
        Ok(Some(Timer {
            timestamp,
            key,
            namespace,
        }))
    }
}

fn encode<T: serde::Serialize>(state: &str, value: &T) -> Result<Vec<u8>> {
    DefaultCodec::default()
        .encode(value)
        .map_err(|e| Error::Encode {
            state: state.to_owned(),
            message: e.0,
        })
}

fn decode_error(state: &str, message: String) -> Error {
    Error::Decode {
        state: state.to_owned(),
        message,
    }
}
