//! Timers: due timers fire in timestamp order, once, deduplicated; across a checkpoint, a
//! crash and a restore at another parallelism, every timer fires exactly once (a model test of
//! random register, delete and advance on every backend).
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
