//! Timers: due timers fire in timestamp order, once, deduplicated; across a checkpoint, a
//! crash and a restore at another parallelism, every timer fires exactly once (a model test of
//! random register, delete and advance on every backend); timers fire one at a time, so a
//! callback's registrations at or before the current time fire in the same advance and its
//! deletions keep later timers of the batch from firing, also after a checkpoint taken in the
//! middle of a batch and a restore at another parallelism.
use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::SplitMix64;
use common::checkpointing::{config, kinds};
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::storage::CheckpointStorage;
use statebackend::{
    AnyBackend, BackendConfig, CheckpointDriver, DriverOptions, KeyGroupRange, KeyedStateBackend,
    Result, Timer, TimerService, ValueStateDescriptor,
};

type Service = TimerService<String, u32>;

fn fired(timers: Vec<Timer<String, u32>>) -> Vec<(i64, String, u32)> {
    timers
        .into_iter()
        .map(|t| (t.timestamp, t.key.into_key(), t.namespace))
        .collect()
}

#[test]
fn due_timers_fire_in_order_once_and_registering_twice_keeps_one() -> Result<()> {
    for kind in kinds() {
        let mut b = AnyBackend::open(&config(kind, KeyGroupRange::all(128)?))?;
        let mut timers = Service::new(&mut b, "windows")?;
        let (k1, k2, k3) = ("k1".to_string(), "k2".to_string(), "k3".to_string());
        timers.register_event_time_timer(&mut b, &k1, &1, 10)?;
        timers.register_event_time_timer(&mut b, &k2, &1, 5)?;
        timers.register_event_time_timer(&mut b, &k1, &1, 10)?;
        timers.register_event_time_timer(&mut b, &k3, &2, 20)?;
        timers.delete_event_time_timer(&mut b, &k3, &2, 20)?;
        timers.register_event_time_timer(&mut b, &k3, &2, 15)?;
        timers.register_processing_time_timer(&mut b, &k1, &9, 1)?;
        assert_eq!(timers.pending(), (3, 1), "{kind}");
        assert_eq!(timers.next_event_time(), Some(5));
        assert_eq!(
            fired(timers.advance_watermark(&mut b, 9)?),
            [(5, k2.clone(), 1)]
        );
        assert_eq!(
            fired(timers.advance_watermark(&mut b, 12)?),
            [(10, k1.clone(), 1)]
        );
        assert!(timers.advance_watermark(&mut b, 12)?.is_empty());
        // A late timer (at or before the watermark) fires at the next call, even at the same
        // watermark or a lower one: time does not go back.
        timers.register_event_time_timer(&mut b, &k2, &7, 11)?;
        assert_eq!(
            fired(timers.advance_watermark(&mut b, 3)?),
            [(11, k2.clone(), 7)]
        );
        assert_eq!(timers.watermark(), Some(12));
        // A due timer's key is ready as the current key.
        let due = timers.advance_watermark(&mut b, 100)?;
        assert_eq!(due.len(), 1);
        let value = b.value_state(&ValueStateDescriptor::<String, u32, u64>::new("fired"))?;
        value.put(&mut b, &due[0].key, &due[0].namespace, 1)?;
        assert_eq!(value.get(&b, &k3, &2)?, Some(1));
        assert_eq!(
            fired(timers.advance_processing_time(&mut b, 1)?),
            [(1, k1.clone(), 9)]
        );
        assert_eq!(timers.pending(), (0, 0));
        // Nothing is left in the state either: a new service on the backend finds no timers.
        assert_eq!(Service::new(&mut b, "windows")?.pending(), (0, 0));
    }
    Ok(())
}

/// A job of `parallelism` instances, each with its timer service.
struct Job {
    backends: Vec<AnyBackend>,
    timers: Vec<Service>,
    parallelism: u32,
}

impl Job {
    fn route(&self, key: &String) -> Result<usize> {
        let group = self.backends[0].key_group_of(key)?;
        Ok(KeyGroupRange::operator_for_key_group(128, self.parallelism, group)? as usize)
    }

    /// Advances every instance to `watermark`; each instance's timers must come in timestamp
    /// order.
    fn advance(&mut self, watermark: i64) -> Result<Vec<(i64, String, u32)>> {
        let mut all = Vec::new();
        for (b, t) in self.backends.iter_mut().zip(&mut self.timers) {
            let due = fired(t.advance_watermark(b, watermark)?);
            assert!(
                due.windows(2).all(|w| w[0].0 <= w[1].0),
                "out of order: {due:?}"
            );
            all.extend(due);
        }
        all.sort();
        Ok(all)
    }
}

#[test]
fn every_timer_fires_exactly_once_across_checkpoint_crash_and_rescale() -> Result<()> {
    for kind in kinds() {
        for (p, q) in [(2u32, 3u32), (3, 1)] {
            let tmp = tempfile::tempdir().unwrap();
            let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
            let mut driver = CheckpointDriver::new(
                CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
                DriverOptions::default(),
            );
            let mut job = Job {
                backends: Vec::new(),
                timers: Vec::new(),
                parallelism: p,
            };
            for i in 0..p {
                let mut b =
                    AnyBackend::open(&config(kind, KeyGroupRange::for_operator(128, p, i)?))?;
                job.timers.push(Service::new(&mut b, "windows")?);
                job.backends.push(b);
            }
            let mut rng = SplitMix64::new(u64::from(p * 10 + q));
            let mut pending: BTreeSet<(i64, String, u32)> = BTreeSet::new();
            let mut fired_once: Vec<(i64, String, u32)> = Vec::new();
            let mut watermark = 0i64;
            let mut at_checkpoint = None;
            for step in 0..1_500 {
                let key = format!("k{}", rng.below(60));
                let ns = rng.below(3) as u32;
                let ts = watermark + 1 + rng.below(200) as i64;
                let i = job.route(&key)?;
                match rng.below(10) {
                    0..=5 => {
                        job.timers[i].register_event_time_timer(
                            &mut job.backends[i],
                            &key,
                            &ns,
                            ts,
                        )?;
                        pending.insert((ts, key, ns));
                    }
                    6 => {
                        // Delete a pending timer of this key, if any, else one that is not there.
                        let target = pending.iter().find(|t| t.1 == key).cloned();
                        let (ts, ns) = target.map_or((ts, ns), |t| (t.0, t.2));
                        job.timers[i].delete_event_time_timer(
                            &mut job.backends[i],
                            &key,
                            &ns,
                            ts,
                        )?;
                        pending.remove(&(ts, key, ns));
                    }
                    _ => {
                        watermark += rng.below(60) as i64;
                        let due: Vec<_> = pending
                            .iter()
                            .filter(|t| t.0 <= watermark)
                            .cloned()
                            .collect();
                        assert_eq!(job.advance(watermark)?, due, "{kind} {p}->{q} step {step}");
                        for t in &due {
                            pending.remove(t);
                        }
                        fired_once.extend(due);
                    }
                }
                if step == 1_000 {
                    driver.checkpoint(&mut job.backends)?;
                    at_checkpoint = Some((pending.clone(), fired_once.len(), watermark));
                }
            }
            // The crash: everything after checkpoint 1 is lost, the engine replays from it.
            drop(job);
            let (pending, fired_before, watermark) = at_checkpoint.unwrap();
            fired_once.truncate(fired_before);
            let meta = latest_restorable(storage.as_ref())?;
            let mut job = Job {
                backends: Vec::new(),
                timers: Vec::new(),
                parallelism: q,
            };
            for i in 0..q {
                let range = KeyGroupRange::for_operator(128, q, i)?;
                let mut config: BackendConfig = config(kind, range);
                config.replace_existing = true;
                let mut b =
                    restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)?;
                let t = Service::new(&mut b, "windows")?;
                assert!(
                    t.next_event_time().is_none_or(|n| n > watermark),
                    "{kind}: a due timer survived the checkpoint"
                );
                job.timers.push(t);
                job.backends.push(b);
            }
            let restored: usize = job.timers.iter().map(|t| t.pending().0).sum();
            assert_eq!(restored, pending.len(), "{kind} {p}->{q}");
            let rest = job.advance(i64::MAX)?;
            assert_eq!(
                rest,
                pending.iter().cloned().collect::<Vec<_>>(),
                "{kind} {p}->{q}"
            );
            // Exactly once: nothing fired before the checkpoint fires again.
            let before: BTreeSet<_> = fired_once.iter().cloned().collect();
            assert_eq!(before.len(), fired_once.len());
            assert!(rest.iter().all(|t| !before.contains(t)));
        }
    }
    Ok(())
}

/// A fired timer: (timestamp, key, namespace).
type Fired = (i64, String, u32);

/// A timer a callback registers or deletes on its own key: (timestamp, namespace).
type Planned = (i64, u32);

/// What the callback of a firing timer does, on its own key: registers the timers `.0` and
/// deletes the timers `.1`, each `(timestamp, namespace)`. Timers the script registers have no
/// reaction of their own unless listed here.
fn reaction(timer: &Fired) -> (Vec<Planned>, Vec<Planned>) {
    match (timer.0, timer.1.as_str(), timer.2) {
        // Below the current timestamp and between it and the watermark (25); deletes a
        // later-due timer of the same batch.
        (10, "ka", 0) => (vec![(5, 2), (15, 3)], vec![(12, 1)]),
        // Exactly at the watermark.
        (11, "kb", 0) => (vec![(25, 5)], vec![]),
        // At its own timestamp: fires right after it (namespace 4 sorts after 0).
        (20, "kb", 0) => (vec![(20, 4)], vec![]),
        // Deletes a timer that already fired, and a later-due timer of another batch.
        (15, "ka", 3) => (vec![], vec![(10, 0), (30, 1)]),
        // At input end: registers a timer far in the future, which fires at once.
        (30, "ka", 0) => (vec![(1_000_000, 6)], vec![]),
        _ => (vec![], vec![]),
    }
}

/// The timers the scenario starts with (event or processing time).
fn initial_timers() -> Vec<Fired> {
    vec![
        (10, "ka".into(), 0),
        (12, "ka".into(), 1),
        (30, "ka".into(), 0),
        (30, "ka".into(), 1),
        (11, "kb".into(), 0),
        (20, "kb".into(), 0),
        (26, "kb".into(), 0),
    ]
}

/// What fires at watermark 25, then at input end, all keys on one instance.
fn expected_at_25() -> Vec<Fired> {
    vec![
        (10, "ka".into(), 0),
        (5, "ka".into(), 2),
        (11, "kb".into(), 0),
        (15, "ka".into(), 3),
        (20, "kb".into(), 0),
        (20, "kb".into(), 4),
        (25, "kb".into(), 5),
    ]
}

fn expected_at_end() -> Vec<Fired> {
    vec![
        (26, "kb".into(), 0),
        (30, "ka".into(), 0),
        (1_000_000, "ka".into(), 6),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Domain {
    Event,
    Processing,
}

fn register(t: &mut Service, b: &mut AnyBackend, d: Domain, timer: &Fired) -> Result<()> {
    match d {
        Domain::Event => t.register_event_time_timer(b, &timer.1, &timer.2, timer.0),
        Domain::Processing => t.register_processing_time_timer(b, &timer.1, &timer.2, timer.0),
    }
}

/// The callback: records the timer and applies its reaction.
fn react(
    t: &mut Service,
    b: &mut AnyBackend,
    d: Domain,
    timer: Timer<String, u32>,
    fired: &mut Vec<Fired>,
) -> Result<()> {
    let f = (timer.timestamp, timer.key.key().clone(), timer.namespace);
    let (add, delete) = reaction(&f);
    for (ts, ns) in add {
        match d {
            Domain::Event => t.register_event_time_timer(b, &timer.key, &ns, ts)?,
            Domain::Processing => t.register_processing_time_timer(b, &timer.key, &ns, ts)?,
        }
    }
    for (ts, ns) in delete {
        match d {
            Domain::Event => t.delete_event_time_timer(b, &timer.key, &ns, ts)?,
            Domain::Processing => t.delete_processing_time_timer(b, &timer.key, &ns, ts)?,
        }
    }
    fired.push(f);
    Ok(())
}

/// Fires every timer due at `time` through the callback API.
fn fire(t: &mut Service, b: &mut AnyBackend, d: Domain, time: i64) -> Result<Vec<Fired>> {
    let mut fired = Vec::new();
    let count = match d {
        Domain::Event => {
            t.fire_event_time_timers(b, time, |t, b, timer| react(t, b, d, timer, &mut fired))?
        }
        Domain::Processing => {
            t.fire_processing_time_timers(b, time, |t, b, timer| react(t, b, d, timer, &mut fired))?
        }
    };
    assert_eq!(count, fired.len());
    Ok(fired)
}

/// Fires every timer due at `time` through `advance_*_to` and `next_due_*`.
fn fire_by_pulling(
    t: &mut Service,
    b: &mut AnyBackend,
    d: Domain,
    time: i64,
) -> Result<Vec<Fired>> {
    let mut fired = Vec::new();
    match d {
        Domain::Event => t.advance_watermark_to(time),
        Domain::Processing => t.advance_processing_time_to(time),
    };
    loop {
        let next = match d {
            Domain::Event => t.next_due_event_time(b)?,
            Domain::Processing => t.next_due_processing_time(b)?,
        };
        let Some(timer) = next else { break };
        react(t, b, d, timer, &mut fired)?;
    }
    Ok(fired)
}

#[test]
fn timers_registered_by_a_firing_callback_at_or_before_the_time_fire_in_the_same_advance()
-> Result<()> {
    for kind in kinds() {
        for d in [Domain::Event, Domain::Processing] {
            for pull in [false, true] {
                let mut b = AnyBackend::open(&config(kind, KeyGroupRange::all(128)?))?;
                let mut t = Service::new(&mut b, "windows")?;
                for timer in initial_timers() {
                    register(&mut t, &mut b, d, &timer)?;
                }
                let run = if pull { fire_by_pulling } else { fire };
                let what = format!("{kind} {d:?} pull={pull}");
                assert_eq!(run(&mut t, &mut b, d, 25)?, expected_at_25(), "{what}");
                // Input end: what its callbacks register fires too, nothing is left behind.
                assert_eq!(
                    run(&mut t, &mut b, d, i64::MAX)?,
                    expected_at_end(),
                    "{what}"
                );
                assert_eq!(t.pending(), (0, 0), "{what}");
                assert_eq!(Service::new(&mut b, "windows")?.pending(), (0, 0), "{what}");
            }
        }
    }
    Ok(())
}

#[test]
fn a_timer_deleted_by_an_earlier_callback_of_the_same_batch_does_not_fire() -> Result<()> {
    for kind in kinds() {
        for d in [Domain::Event, Domain::Processing] {
            let mut b = AnyBackend::open(&config(kind, KeyGroupRange::all(128)?))?;
            let mut t = Service::new(&mut b, "windows")?;
            for timer in initial_timers() {
                register(&mut t, &mut b, d, &timer)?;
            }
            let fired = fire(&mut t, &mut b, d, 25)?;
            // (12, ka, 1) was due at 25 and deleted by (10, ka, 0)'s callback.
            assert!(!fired.contains(&(12, "ka".into(), 1)), "{kind} {d:?}");
            let rest = fire(&mut t, &mut b, d, i64::MAX)?;
            // (30, ka, 1) was deleted by (15, ka, 3)'s callback, an advance earlier.
            assert!(!rest.contains(&(30, "ka".into(), 1)), "{kind} {d:?}");
            assert_eq!(fired.len() + rest.len(), 10, "{kind} {d:?}");
        }
    }
    Ok(())
}

#[test]
fn timers_registered_and_deleted_mid_batch_survive_a_checkpoint_and_a_rescaled_restore()
-> Result<()> {
    for kind in kinds() {
        for d in [Domain::Event, Domain::Processing] {
            for q in [1u32, 3] {
                let what = format!("{kind} {d:?} 1->{q}");
                let tmp = tempfile::tempdir().unwrap();
                let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
                let mut driver = CheckpointDriver::new(
                    CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
                    DriverOptions::default(),
                );
                let mut b = AnyBackend::open(&config(kind, KeyGroupRange::all(128)?))?;
                let mut t = Service::new(&mut b, "windows")?;
                for timer in initial_timers() {
                    register(&mut t, &mut b, d, &timer)?;
                }
                // The first timer of the batch fires; its callback registers (5, ka, 2) and
                // (15, ka, 3) and deletes (12, ka, 1). Then the barrier, then a crash.
                match d {
                    Domain::Event => t.advance_watermark_to(25),
                    Domain::Processing => t.advance_processing_time_to(25),
                };
                let first = match d {
                    Domain::Event => t.next_due_event_time(&mut b)?,
                    Domain::Processing => t.next_due_processing_time(&mut b)?,
                }
                .expect("a due timer");
                let mut fired = Vec::new();
                react(&mut t, &mut b, d, first, &mut fired)?;
                assert_eq!(fired, expected_at_25()[..1], "{what}");
                let mut job = vec![b];
                driver.checkpoint(&mut job)?;
                drop((job, t));

                // The engine restores and replays from the barrier: time 25 again, then the
                // input's end. Each instance fires its own keys' timers in the same order.
                let meta = latest_restorable(storage.as_ref())?;
                let mut instances = Vec::new();
                for i in 0..q {
                    let range = KeyGroupRange::for_operator(128, q, i)?;
                    let mut b = restore_instance(
                        storage.as_ref(),
                        &meta,
                        &config(kind, range),
                        RestoreMode::NoClaim,
                    )?;
                    let t = Service::new(&mut b, "windows")?;
                    instances.push((b, t));
                }
                let pending: usize = instances
                    .iter()
                    .map(|(_, t)| match d {
                        Domain::Event => t.pending().0,
                        Domain::Processing => t.pending().1,
                    })
                    .sum();
                assert_eq!(pending, 7, "{what}");
                for (time, expected) in [
                    (25, expected_at_25()[1..].to_vec()),
                    (i64::MAX, expected_at_end()),
                ] {
                    for (b, t) in &mut instances {
                        let range = b.key_group_range();
                        let mut own = Vec::new();
                        for timer in &expected {
                            if range.contains(b.key_group_of(&timer.1)?) {
                                own.push(timer.clone());
                            }
                        }
                        assert_eq!(fire(t, b, d, time)?, own, "{what} at {time}");
                    }
                }
                assert!(instances.iter().all(|(_, t)| t.pending() == (0, 0)));
            }
        }
    }
    Ok(())
}
