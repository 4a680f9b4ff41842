//! Timers: a timer service per keyed backend, for windows and other operators that act when
//! event time (the watermark) or processing time passes a point.
//!
//! A timer is `(key, namespace, timestamp)` in one of two domains, event time and processing
//! time; registering the same timer twice keeps one. [`TimerService::advance_watermark`] (and
//! [`TimerService::advance_processing_time`]) removes and returns the due timers in timestamp
//! order, each with its key as a [`KeyContext`], ready for the state calls the timer triggers.
//!
//! Timers are keyed state: each domain is a map state (`__timers/<service>/event-time` and
//! `__timers/<service>/processing-time`) from the key to its `(timestamp, namespace)` pairs.
//! So they live in the key group of their key, go into checkpoints and savepoints with the rest
//! of the state, restore at any parallelism with their keys, and cost a checkpoint's
//! synchronous part nothing beyond the state they are: no separate format. The service keeps
//! an in-memory index ordered by `(timestamp, key bytes, namespace bytes)` next to the state,
//! rebuilt from the state when the service is created on a restored backend. Ties at one
//! timestamp fire in the order of the keys' and namespaces' encodings, the same on every
//! backend and at every parallelism.

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

    /// Moves event time to `watermark`: removes and returns every event-time timer with a
    /// timestamp at or before it, in timestamp order. A watermark below the current one
    /// changes nothing (watermarks do not go back).
    ///
    /// # Errors
    /// Decode and backend errors; the timers not yet removed stay pending.
    pub fn advance_watermark<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        watermark: i64,
    ) -> Result<Vec<Timer<K, N>>> {
        if self.watermark.is_some_and(|w| w >= watermark) {
            return Ok(Vec::new());
        }
        let due = self.event_time.take_due(backend, watermark)?;
        self.watermark = Some(watermark);
        Ok(due)
    }

    /// Moves processing time to `now`, as [`TimerService::advance_watermark`] does event time.
    ///
    /// # Errors
    /// As [`TimerService::advance_watermark`].
    pub fn advance_processing_time<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        now: i64,
    ) -> Result<Vec<Timer<K, N>>> {
        if self.processing_now.is_some_and(|p| p >= now) {
            return Ok(Vec::new());
        }
        let due = self.processing_time.take_due(backend, now)?;
        self.processing_now = Some(now);
        Ok(due)
    }

    /// The last watermark advanced to, if any (not checkpointed: the engine's, like source
    /// positions).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
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

    fn take_due<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        until: i64,
    ) -> Result<Vec<Timer<K, N>>> {
        let name = &self.name;
        let codec = DefaultCodec::default();
        let mut due = Vec::new();
        while let Some(first) = self.index.first() {
            if first.0 > until {
                break;
            }
            let (timestamp, key_bytes, namespace_bytes) = first.clone();
            let key: K = codec
                .decode(&key_bytes)
                .map_err(|e| decode_error(name, e.0))?;
            let namespace: N = codec
                .decode(&namespace_bytes)
                .map_err(|e| decode_error(name, e.0))?;
            let key = backend.key_context(key)?;
            self.state
                .remove(backend, &key, &(), &(timestamp, namespace.clone()))?;
            self.index.pop_first();
            due.push(Timer {
                timestamp,
                key,
                namespace,
            });
        }
        Ok(due)
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
