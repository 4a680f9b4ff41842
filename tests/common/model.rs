//! Random operation sequences over value, list, map, reducing and aggregating state, checked
//! against a plain `BTreeMap` model. Every read returns an [`Observation`]; a backend agrees with
//! the model (or with another backend) when every observation is equal.

use std::collections::{BTreeMap, BTreeSet};

use statebackend::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyedStateBackend, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    Result, ValueState, ValueStateDescriptor,
};

use super::SplitMix64;

pub type Key = String;
pub type Ns = u8;

/// Average of i64 inputs: (sum, count) accumulator.
pub struct Average;

impl AggregateFunction<i64, (i64, u64), i64> for Average {
    fn create_accumulator(&self) -> (i64, u64) {
        (0, 0)
    }
    fn add(&self, value: &i64, acc: (i64, u64)) -> (i64, u64) {
        (acc.0.wrapping_add(*value), acc.1 + 1)
    }
    fn get_result(&self, acc: &(i64, u64)) -> i64 {
        if acc.1 == 0 { 0 } else { acc.0 / acc.1 as i64 }
    }
}

/// The handles of the model's five states.
pub struct Handles {
    pub value: ValueState<Key, Ns, i64>,
    pub list: ListState<Key, Ns, String>,
    pub map: MapState<Key, Ns, u16, Vec<u8>>,
    pub reducing: ReducingState<Key, Ns, i64>,
    pub aggregating: AggregatingState<Key, Ns, i64, (i64, u64), i64>,
}

impl Handles {
    pub fn register<B: KeyedStateBackend>(backend: &mut B) -> Result<Self> {
        Ok(Self {
            value: backend.value_state(&ValueStateDescriptor::new("value"))?,
            list: backend.list_state(&ListStateDescriptor::new("list"))?,
            map: backend.map_state(&MapStateDescriptor::new("map"))?,
            reducing: backend.reducing_state(&ReducingStateDescriptor::new(
                "reducing",
                |a: &i64, b: &i64| a.wrapping_add(*b),
            ))?,
            aggregating: backend
                .aggregating_state(&AggregatingStateDescriptor::new("aggregating", Average))?,
        })
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    ValueGet(Key, Ns),
    ValuePut(Key, Ns, i64),
    ValueClear(Key, Ns),
    ListGet(Key, Ns),
    ListAppend(Key, Ns, String),
    ListReplace(Key, Ns, Vec<String>),
    ListClear(Key, Ns),
    MapGet(Key, Ns, u16),
    MapPut(Key, Ns, u16, Vec<u8>),
    MapRemove(Key, Ns, u16),
    MapContains(Key, Ns, u16),
    MapEntries(Key, Ns),
    MapIsEmpty(Key, Ns),
    MapClear(Key, Ns),
    ReducingAdd(Key, Ns, i64),
    ReducingGet(Key, Ns),
    AggregatingAdd(Key, Ns, i64),
    AggregatingGet(Key, Ns),
    /// All (key, namespace) pairs of the named state, optionally of one namespace.
    Keys(&'static str, Option<Ns>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    None,
    Int(Option<i64>),
    List(Vec<String>),
    Bytes(Option<Vec<u8>>),
    Bool(bool),
    Entries(BTreeMap<u16, Vec<u8>>),
    Keys(BTreeSet<(Key, Ns)>),
}

/// Generates operations over `keys` distinct keys (filtered by `accept`) and 3 namespaces.
pub struct OpGenerator {
    rng: SplitMix64,
    keys: Vec<Key>,
}

impl OpGenerator {
    pub fn new(seed: u64, key_count: usize, accept: impl Fn(&Key) -> bool) -> Self {
        let keys: Vec<Key> = (0..)
            .map(|i| format!("key-{i}"))
            .filter(|k| accept(k))
            .take(key_count)
            .collect();
        Self {
            rng: SplitMix64::new(seed),
            keys,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let r = &mut self.rng;
        let key = self.keys[r.below(self.keys.len() as u64) as usize].clone();
        let ns = r.below(3) as Ns;
        let uk = r.below(8) as u16;
        let int = r.below(2001) as i64 - 1000;
        let bytes = vec![r.below(256) as u8; r.below(5) as usize];
        let word = format!("w{}", r.below(100));
        match r.below(40) {
            0..=3 => Op::ValueGet(key, ns),
            4..=6 => Op::ValuePut(key, ns, int),
            7 => Op::ValueClear(key, ns),
            8..=10 => Op::ListGet(key, ns),
            11..=13 => Op::ListAppend(key, ns, word),
            14 => Op::ListReplace(key, ns, (0..r.below(3)).map(|i| format!("r{i}")).collect()),
            15 => Op::ListClear(key, ns),
            16..=18 => Op::MapGet(key, ns, uk),
            19..=22 => Op::MapPut(key, ns, uk, bytes),
            23..=24 => Op::MapRemove(key, ns, uk),
            25 => Op::MapContains(key, ns, uk),
            26..=27 => Op::MapEntries(key, ns),
            28 => Op::MapIsEmpty(key, ns),
            29 => Op::MapClear(key, ns),
            30..=31 => Op::ReducingAdd(key, ns, int),
            32 => Op::ReducingGet(key, ns),
            33..=34 => Op::AggregatingAdd(key, ns, int),
            35 => Op::AggregatingGet(key, ns),
            36 => Op::Keys("value", if r.below(2) == 0 { None } else { Some(ns) }),
            37 => Op::Keys("list", None),
            38 => Op::Keys("map", if r.below(2) == 0 { None } else { Some(ns) }),
            _ => Op::Keys("aggregating", Some(ns)),
        }
    }
}

fn collect_keys<B: KeyedStateBackend>(
    backend: &B,
    id: statebackend::StateId,
    ns: Option<Ns>,
) -> Result<Observation> {
    let mut set = BTreeSet::new();
    for item in backend.keys::<Key, Ns>(id, ns.as_ref())? {
        let pair = item?;
        assert!(set.insert(pair.clone()), "keys() reported {pair:?} twice");
    }
    Ok(Observation::Keys(set))
}

/// Applies `op` to a backend.
pub fn apply<B: KeyedStateBackend>(backend: &mut B, h: &Handles, op: &Op) -> Result<Observation> {
    use Observation as O;
    Ok(match op {
        Op::ValueGet(k, n) => O::Int(h.value.get(backend, k, n)?),
        Op::ValuePut(k, n, v) => {
            h.value.put(backend, k, n, *v)?;
            O::None
        }
        Op::ValueClear(k, n) => {
            h.value.clear(backend, k, n)?;
            O::None
        }
        Op::ListGet(k, n) => O::List(h.list.get(backend, k, n)?),
        Op::ListAppend(k, n, v) => {
            h.list.append(backend, k, n, v.clone())?;
            O::None
        }
        Op::ListReplace(k, n, v) => {
            h.list.replace(backend, k, n, v.clone())?;
            O::None
        }
        Op::ListClear(k, n) => {
            h.list.clear(backend, k, n)?;
            O::None
        }
        Op::MapGet(k, n, uk) => O::Bytes(h.map.get(backend, k, n, uk)?),
        Op::MapPut(k, n, uk, v) => {
            h.map.put(backend, k, n, *uk, v.clone())?;
            O::None
        }
        Op::MapRemove(k, n, uk) => {
            h.map.remove(backend, k, n, uk)?;
            O::None
        }
        Op::MapContains(k, n, uk) => O::Bool(h.map.contains(backend, k, n, uk)?),
        Op::MapEntries(k, n) => {
            let entries: BTreeMap<u16, Vec<u8>> =
                h.map.entries(backend, k, n)?.collect::<Result<_>>()?;
            let keys: BTreeSet<u16> = h.map.keys(backend, k, n)?.collect::<Result<_>>()?;
            let values: Vec<Vec<u8>> = h.map.values(backend, k, n)?.collect::<Result<_>>()?;
            assert_eq!(keys, entries.keys().copied().collect());
            assert_eq!(values.len(), entries.len());
            O::Entries(entries)
        }
        Op::MapIsEmpty(k, n) => O::Bool(h.map.is_empty(backend, k, n)?),
        Op::MapClear(k, n) => {
            h.map.clear(backend, k, n)?;
            O::None
        }
        Op::ReducingAdd(k, n, v) => {
            h.reducing.add(backend, k, n, *v)?;
            O::None
        }
        Op::ReducingGet(k, n) => O::Int(h.reducing.get(backend, k, n)?),
        Op::AggregatingAdd(k, n, v) => {
            h.aggregating.add(backend, k, n, v)?;
            O::None
        }
        Op::AggregatingGet(k, n) => O::Int(h.aggregating.get(backend, k, n)?),
        Op::Keys(state, ns) => {
            let id = match *state {
                "value" => h.value.id(),
                "list" => h.list.id(),
                "map" => h.map.id(),
                _ => h.aggregating.id(),
            };
            collect_keys(backend, id, *ns)?
        }
    })
}

/// The reference model: plain ordered maps.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    pub value: BTreeMap<(Key, Ns), i64>,
    pub list: BTreeMap<(Key, Ns), Vec<String>>,
    pub map: BTreeMap<(Key, Ns), BTreeMap<u16, Vec<u8>>>,
    pub reducing: BTreeMap<(Key, Ns), i64>,
    pub aggregating: BTreeMap<(Key, Ns), (i64, u64)>,
}

impl Model {
    pub fn apply(&mut self, op: &Op) -> Observation {
        use Observation as O;
        let kn = |k: &Key, n: &Ns| (k.clone(), *n);
        match op {
            Op::ValueGet(k, n) => O::Int(self.value.get(&kn(k, n)).copied()),
            Op::ValuePut(k, n, v) => {
                self.value.insert(kn(k, n), *v);
                O::None
            }
            Op::ValueClear(k, n) => {
                self.value.remove(&kn(k, n));
                O::None
            }
            Op::ListGet(k, n) => O::List(self.list.get(&kn(k, n)).cloned().unwrap_or_default()),
            Op::ListAppend(k, n, v) => {
                self.list.entry(kn(k, n)).or_default().push(v.clone());
                O::None
            }
            Op::ListReplace(k, n, v) => {
                if v.is_empty() {
                    self.list.remove(&kn(k, n));
                } else {
                    self.list.insert(kn(k, n), v.clone());
                }
                O::None
            }
            Op::ListClear(k, n) => {
                self.list.remove(&kn(k, n));
                O::None
            }
            Op::MapGet(k, n, uk) => {
                O::Bytes(self.map.get(&kn(k, n)).and_then(|m| m.get(uk)).cloned())
            }
            Op::MapPut(k, n, uk, v) => {
                self.map.entry(kn(k, n)).or_default().insert(*uk, v.clone());
                O::None
            }
            Op::MapRemove(k, n, uk) => {
                if let Some(m) = self.map.get_mut(&kn(k, n)) {
                    m.remove(uk);
                    if m.is_empty() {
                        self.map.remove(&kn(k, n));
                    }
                }
                O::None
            }
            Op::MapContains(k, n, uk) => {
                O::Bool(self.map.get(&kn(k, n)).is_some_and(|m| m.contains_key(uk)))
            }
            Op::MapEntries(k, n) => {
                O::Entries(self.map.get(&kn(k, n)).cloned().unwrap_or_default())
            }
            Op::MapIsEmpty(k, n) => O::Bool(!self.map.contains_key(&kn(k, n))),
            Op::MapClear(k, n) => {
                self.map.remove(&kn(k, n));
                O::None
            }
            Op::ReducingAdd(k, n, v) => {
                let e = self.reducing.entry(kn(k, n)).or_insert(0);
                *e = e.wrapping_add(*v);
                O::None
            }
            Op::ReducingGet(k, n) => O::Int(self.reducing.get(&kn(k, n)).copied()),
            Op::AggregatingAdd(k, n, v) => {
                let acc = self.aggregating.get(&kn(k, n)).copied().unwrap_or((0, 0));
                self.aggregating.insert(kn(k, n), Average.add(v, acc));
                O::None
            }
            Op::AggregatingGet(k, n) => O::Int(
                self.aggregating
                    .get(&kn(k, n))
                    .map(|a| Average.get_result(a)),
            ),
            Op::Keys(state, ns) => {
                let keys: Vec<(Key, Ns)> = match *state {
                    "value" => self.value.keys().cloned().collect(),
                    "list" => self.list.keys().cloned().collect(),
                    "map" => self.map.keys().cloned().collect(),
                    _ => self.aggregating.keys().cloned().collect(),
                };
                O::Keys(
                    keys.into_iter()
                        .filter(|(_, n)| ns.is_none_or(|w| w == *n))
                        .collect(),
                )
            }
        }
    }

    /// Keeps only the entries whose key satisfies `keep`.
    pub fn retain_keys(&mut self, keep: impl Fn(&Key) -> bool) {
        self.value.retain(|(k, _), _| keep(k));
        self.list.retain(|(k, _), _| keep(k));
        self.map.retain(|(k, _), _| keep(k));
        self.reducing.retain(|(k, _), _| keep(k));
        self.aggregating.retain(|(k, _), _| keep(k));
    }

    /// Adds every entry of `other` (whose keys are disjoint from this model's).
    pub fn absorb(&mut self, other: Model) {
        self.value.extend(other.value);
        self.list.extend(other.list);
        self.map.extend(other.map);
        self.reducing.extend(other.reducing);
        self.aggregating.extend(other.aggregating);
    }

    /// Every read that covers the whole model: the keys of each state and every stored entry.
    pub fn full_read_ops(&self) -> Vec<Op> {
        let mut ops = vec![
            Op::Keys("value", None),
            Op::Keys("list", None),
            Op::Keys("map", None),
            Op::Keys("aggregating", None),
        ];
        for (k, n) in self.value.keys() {
            ops.push(Op::ValueGet(k.clone(), *n));
        }
        for (k, n) in self.list.keys() {
            ops.push(Op::ListGet(k.clone(), *n));
        }
        for (k, n) in self.map.keys() {
            ops.push(Op::MapEntries(k.clone(), *n));
        }
        for (k, n) in self.reducing.keys() {
            ops.push(Op::ReducingGet(k.clone(), *n));
        }
        for (k, n) in self.aggregating.keys() {
            ops.push(Op::AggregatingGet(k.clone(), *n));
        }
        ops
    }
}
