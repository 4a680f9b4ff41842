//! The demo's job, shared with the job benchmark (`benches/job.rs`): per-user event counts,
//! page views per window in map state, pages per window in list state, the last time a user
//! was seen in reducing state, and tumbling windows closed by event-time timers, over several
//! instances that each own a range of key groups.

use std::collections::BTreeMap;

use statebackend::{
    AnyBackend, CheckpointedBackend, KeyGroupRange, KeyedStateBackend, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    Result, TimerService, ValueState, ValueStateDescriptor,
};

/// Key groups of the job.
pub const MAX_PARALLELISM: u32 = 128;
/// Users the events come from.
pub const USERS: u64 = 20_000;
/// Pages they view.
pub const PAGES: u64 = 50;
/// Events per tumbling window (the window namespace of the map and list states).
pub const WINDOW: u64 = 10_000;

/// One generated event: a user viewed a page at a time.
#[derive(Clone, Copy)]
pub struct Event {
    /// Who.
    pub user: u64,
    /// Which page.
    pub page: u16,
    /// When: the event's position in the stream.
    pub time: u64,
}

/// The event at position `i` of the stream: a pure function, so a restored job replays
/// exactly the events after its checkpoint.
pub fn event(i: u64) -> Event {
    let mut z = i
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Skewed users: a quarter of the events come from 1% of the users.
    let user = if z % 4 == 0 {
        (z >> 8) % (USERS / 100)
    } else {
        (z >> 8) % USERS
    };
    Event {
        user,
        page: ((z >> 40) % PAGES) as u16,
        time: i,
    }
}

/// The state handles of one instance (registration is by name, so every instance's are
/// equal in kind and types).
pub struct Handles {
    /// Events per user.
    pub events: ValueState<u64, (), u64>,
    /// Views per page, per user and window.
    pub views: MapState<u64, u64, u16, u32>,
    /// Pages viewed, per user and window.
    pub recent: ListState<u64, u64, u16>,
    /// The last time each user was seen.
    pub last_seen: ReducingState<u64, (), u64>,
    /// Per user: windows closed by their timer, and the page views they held.
    pub closed: ValueState<u64, (), (u64, u64)>,
}

impl Handles {
    fn register(backend: &mut AnyBackend) -> Result<Self> {
        Ok(Self {
            events: backend.value_state(&ValueStateDescriptor::new("events-per-user"))?,
            views: backend.map_state(&MapStateDescriptor::new("page-views-per-window"))?,
            recent: backend.list_state(&ListStateDescriptor::new("pages-in-window"))?,
            last_seen: backend.reducing_state(&ReducingStateDescriptor::new(
                "last-seen",
                |a: &u64, b: &u64| *a.max(b),
            ))?,
            closed: backend.value_state(&ValueStateDescriptor::new("closed-windows"))?,
        })
    }
}

/// The job: its instances (backends), their handles and timer services.
pub struct Job {
    /// The instances, in key-group order.
    pub backends: Vec<AnyBackend>,
    /// Each instance's state handles.
    pub handles: Vec<Handles>,
    timers: Vec<TimerService<u64, u64>>,
}

impl Job {
    /// The job over `backends` (empty or restored).
    ///
    /// # Errors
    /// Registration errors.
    pub fn new(mut backends: Vec<AnyBackend>) -> Result<Self> {
        let mut handles = Vec::new();
        let mut timers = Vec::new();
        for b in &mut backends {
            handles.push(Handles::register(b)?);
            // Created on a restored backend, it finds the timers the checkpoint holds.
            timers.push(TimerService::new(b, "window-end")?);
        }
        Ok(Self {
            backends,
            handles,
            timers,
        })
    }

    pub fn parallelism(&self) -> u32 {
        self.backends.len() as u32
    }

    /// One event: routed to the instance that owns its key group, its key set once, four
    /// states updated, and a timer for the end of its window.
    pub fn process(&mut self, e: Event) -> Result<()> {
        let group = self.backends[0].key_group_of(&e.user)?;
        let index =
            KeyGroupRange::operator_for_key_group(MAX_PARALLELISM, self.parallelism(), group)?;
        let (b, h) = (
            &mut self.backends[index as usize],
            &self.handles[index as usize],
        );
        let window = e.time / WINDOW;
        let user = b.key_context(e.user)?;
        let n = h.events.get(b, &user, &())?.unwrap_or(0);
        h.events.put(b, &user, &(), n + 1)?;
        let v = h.views.get(b, &user, &window, &e.page)?.unwrap_or(0);
        h.views.put(b, &user, &window, e.page, v + 1)?;
        h.recent.append(b, &user, &window, e.page)?;
        h.last_seen.add(b, &user, &(), e.time)?;
        let window_end = (window + 1) * WINDOW - 1;
        self.timers[index as usize].register_event_time_timer(b, &user, &window, window_end as i64)
    }

    /// Event time reached `watermark`: every window that ended fires. Its page views are added
    /// to the user's closed windows and its list of pages is dropped.
    pub fn advance(&mut self, watermark: u64) -> Result<()> {
        for ((b, h), timers) in self
            .backends
            .iter_mut()
            .zip(&self.handles)
            .zip(&mut self.timers)
        {
            for timer in timers.advance_watermark(b, watermark as i64)? {
                let (user, window) = (&timer.key, &timer.namespace);
                let mut views = 0u64;
                for entry in h.views.entries(b, user, window)? {
                    views += u64::from(entry?.1);
                }
                let (windows, total) = h.closed.get(b, user, &())?.unwrap_or((0, 0));
                h.closed.put(b, user, &(), (windows + 1, total + views))?;
                h.recent.clear(b, user, window)?;
            }
        }
        Ok(())
    }

    /// Records the source's position in every instance's operator state (broadcast: each
    /// holds the same), so that a checkpoint taken now holds it.
    pub fn set_position(&mut self, position: u64) -> Result<()> {
        for b in &mut self.backends {
            let operator = b.operator_state_mut();
            let source = operator.broadcast_state::<String, u64>("source")?;
            source.put(operator, "position".into(), position)?;
        }
        Ok(())
    }

    /// The source position a restored job resumes from.
    pub fn position(&mut self) -> Result<u64> {
        let operator = self.backends[0].operator_state_mut();
        let source = operator.broadcast_state::<String, u64>("source")?;
        Ok(source.get(operator, &"position".into())?.unwrap_or(0))
    }

    /// Runs events `from..to`; at each window's end the watermark passes it.
    pub fn run(&mut self, from: u64, to: u64) -> Result<()> {
        for i in from..to {
            self.process(event(i))?;
            if (i + 1) % WINDOW == 0 {
                self.advance(i)?;
            }
        }
        Ok(())
    }

    /// Per user: events, last seen, page views summed over windows, list entries of windows
    /// still open, and (windows closed, views in them).
    pub fn summarize(&self) -> Result<Summary> {
        let mut out = Summary::new();
        for (b, h) in self.backends.iter().zip(&self.handles) {
            for item in b.keys::<u64, ()>(h.events.id(), None)? {
                let (user, ()) = item?;
                let entry = out.entry(user).or_default();
                entry.0 = h.events.get(b, &user, &())?.unwrap_or(0);
                entry.1 = h.last_seen.get(b, &user, &())?.unwrap_or(0);
                entry.4 = h.closed.get(b, &user, &())?.unwrap_or((0, 0));
            }
            for item in b.keys::<u64, u64>(h.views.id(), None)? {
                let (user, window) = item?;
                let mut views = 0u64;
                for e in h.views.entries(b, &user, &window)? {
                    views += u64::from(e?.1);
                }
                let listed = h.recent.get(b, &user, &window)?.len() as u64;
                let entry = out.entry(user).or_default();
                entry.2 += views;
                entry.3 += listed;
            }
        }
        Ok(out)
    }
}

/// Per user: events, last seen, page views summed over windows, list entries of open windows,
/// (windows closed, views in them).
pub type Summary = BTreeMap<u64, (u64, u64, u64, u64, (u64, u64))>;
