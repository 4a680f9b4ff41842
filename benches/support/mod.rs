//! The standard workloads of `../shared/WORKLOADS.md` (W1–W5), written once against small
//! "store" traits so that our backends and the raw baselines replay exactly the same
//! operations. Sizes scale with `STATEBACKEND_BENCH_SCALE` (default 1 = the specified sizes;
//! CI runs 0.002); check values are asserted at full scale only.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// SplitMix64, as WORKLOADS.md specifies.
#[derive(Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The workload scale factor.
pub fn scale() -> f64 {
    std::env::var("STATEBACKEND_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

pub fn full_scale() -> bool {
    (scale() - 1.0).abs() < f64::EPSILON
}

pub fn scaled(n: u64) -> u64 {
    ((n as f64 * scale()) as u64).max(100)
}

/// The number in environment variable `name`, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Value state of i64 → i64 (W1, W2).
pub trait ValueStore {
    fn get(&mut self, k: i64) -> Option<i64>;
    fn put(&mut self, k: i64, v: i64);
    /// W1's read-modify-write of one key: a record that reads and writes one state.
    fn update(&mut self, k: i64, f: &dyn Fn(Option<i64>) -> i64) {
        let c = self.get(k);
        self.put(k, f(c));
    }
}

/// List state of i64 → [i64] (W3).
pub trait ListStore {
    fn append(&mut self, k: i64, v: i64);
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64));
}

/// Map state of i64 → (i64 → i64) (W4).
pub trait MapStore {
    fn put(&mut self, k: i64, uk: i64, v: i64);
    fn get(&mut self, k: i64, uk: i64) -> Option<i64>;
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64, i64));
}

/// A measured workload phase.
pub struct Phase {
    pub name: &'static str,
    pub ops: u64,
    pub elapsed: Duration,
}

impl Phase {
    pub fn ns_per_op(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.ops as f64
    }
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn timed(name: &'static str, ops: u64, f: impl FnOnce()) -> Phase {
    let t = Instant::now();
    f();
    Phase {
        name,
        ops,
        elapsed: t.elapsed(),
    }
}

/// W1 value-update then W2 value-get; returns both phases and W2's (hits, sum).
pub fn w1_w2(store: &mut dyn ValueStore) -> (Phase, Phase, (u64, i64)) {
    let (n, keys) = (scaled(10_000_000), scaled(1_000_000));
    let w1 = timed("W1 value-update", n, || {
        let mut g = SplitMix64::new(42);
        for _ in 0..n {
            let k = g.below(keys) as i64;
            store.update(k, &|c| c.map_or(1, |c| c + 1));
        }
    });
    let mut check = (0u64, 0i64);
    let w2 = timed("W2 value-get", n, || {
        let mut g = SplitMix64::new(43);
        for _ in 0..n {
            let k = g.below(keys) as i64;
            if let Some(c) = store.get(k) {
                check.0 += 1;
                check.1 += c;
            }
        }
    });
    if full_scale() {
        assert_eq!(check, (9_999_527, 99_989_192), "W2 check values");
    }
    (w1, w2, check)
}

/// W3 list-append then list-get; returns both phases and (n, h).
pub fn w3(store: &mut dyn ListStore) -> (Phase, Phase, (u64, i64)) {
    let (n, keys) = (scaled(5_000_000), scaled(100_000));
    let append = timed("W3 list-append", n, || {
        let mut g = SplitMix64::new(44);
        for i in 0..n {
            let k = g.below(keys) as i64;
            store.append(k, i as i64);
        }
    });
    let mut check = (0u64, 0i64);
    let get = timed("W3 list-get", keys, || {
        for k in 0..keys as i64 {
            store.for_each(k, &mut |v| {
                check.0 += 1;
                check.1 = check.1.wrapping_mul(31).wrapping_add(v);
            });
        }
    });
    if full_scale() {
        assert_eq!(
            check,
            (5_000_000, 4_706_060_574_323_863_250),
            "W3 check values"
        );
    }
    (append, get, check)
}

/// W4 map-put, map-get, map-iter; returns the phases and (hits, sum, x).
pub fn w4(store: &mut dyn MapStore) -> (Vec<Phase>, (u64, i64, i64)) {
    let (k_count, u) = (scaled(10_000).max(10), 100u64);
    let n = k_count * u;
    let mut perm: Vec<u64> = (0..n).collect();
    let mut g = SplitMix64::new(45);
    for i in (1..n as usize).rev() {
        let j = g.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let put = timed("W4 map-put", n, || {
        for &p in &perm {
            store.put((p / u) as i64, (p % u) as i64, p as i64);
        }
    });
    let gets = scaled(1_000_000);
    let mut check = (0u64, 0i64, 0i64);
    let get = timed("W4 map-get", gets, || {
        let mut g = SplitMix64::new(46);
        for _ in 0..gets {
            let k = g.below(k_count) as i64;
            let uk = g.below(u) as i64;
            if let Some(v) = store.get(k, uk) {
                check.0 += 1;
                check.1 += v;
            }
        }
    });
    let iter = timed("W4 map-iter", n, || {
        for k in 0..k_count as i64 {
            store.for_each(k, &mut |uk, v| check.2 += uk ^ v);
        }
    });
    if full_scale() {
        assert_eq!(
            check,
            (1_000_000, 500_047_872_868, 499_998_000_000),
            "W4 check values"
        );
    }
    (vec![put, get, iter], check)
}

/// W5's value: the first 100 bytes of SplitMix64((round << 32) | key) outputs, little-endian.
pub fn w5_value(key: u64, round: u64) -> Vec<u8> {
    let mut h = SplitMix64::new((round << 32) | key);
    let mut out = Vec::with_capacity(104);
    while out.len() < 100 {
        out.extend_from_slice(&h.next_u64().to_le_bytes());
    }
    out.truncate(100);
    out
}

/// Prints one result row.
pub fn report(bench: &str, subject: &str, phase: &Phase, baseline: Option<&Phase>) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("{:>7.2}x", phase.ns_per_op() / b.ns_per_op())
    });
    println!(
        "{bench:<10} {:<16} {subject:<28} {:>12.0} ops/s {:>9.1} ns/op {ratio}",
        phase.name,
        phase.ops_per_sec(),
        phase.ns_per_op()
    );
}

/// YCSB's Zipfian generator (`ZipfianGenerator`, after Gray et al., "Quickly generating
/// billion-record synthetic databases", SIGMOD 1994) over ranks `0..n` with constant `theta`.
/// ζ(n) is summed for i = 1..=n in ascending order, in f64.
pub struct Zipfian {
    n: u64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    pub fn new(n: u64, theta: f64) -> Self {
        let zeta = |count: u64| {
            (1..=count)
                .map(|i| 1.0 / (i as f64).powf(theta))
                .sum::<f64>()
        };
        let zetan = zeta(n);
        Self {
            n,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta(2) / zetan),
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    /// The rank drawn by the uniform `u` in [0, 1): 0 is the most frequent.
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1;
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

/// FNV-1a 64 of `x`'s 8 little-endian bytes (YCSB's `fnvhash64`).
pub fn fnv1a64(x: u64) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// W7's key stream: YCSB's scrambled Zipfian over `n` keys (constant 0.99), the uniform source
/// SplitMix64(48) as `next() / 2^64`, each rank scrambled to `fnv1a64(rank) % n`.
pub struct W7Keys {
    zipf: Zipfian,
    uniform: SplitMix64,
    n: u64,
}

impl W7Keys {
    pub fn new(n: u64) -> Self {
        Self {
            zipf: Zipfian::new(n, 0.99),
            uniform: SplitMix64::new(48),
            n,
        }
    }
    pub fn next_key(&mut self) -> u64 {
        let u = self.uniform.next_u64() as f64 / 18_446_744_073_709_551_616.0;
        fnv1a64(self.zipf.rank(u)) % self.n
    }
}

/// A key-value store of byte values (W7).
pub trait BytesStore {
    fn get(&mut self, k: u64) -> Option<Vec<u8>>;
    fn put(&mut self, k: u64, v: &[u8]);
}

/// W7: `n` keys of 100-byte values (`w5_value(key, 0)`) put in ascending key order, then `n`
/// read-modify-writes on the scrambled Zipfian keys: the first 8 bytes of the value, a
/// little-endian u64, incremented. Returns both phases and the check values (hits, the wrapping
/// sum of the counters read, distinct keys touched).
pub fn w7(store: &mut dyn BytesStore) -> (Phase, Phase, (u64, u64, u64)) {
    let n = scaled(10_000_000);
    let build = timed("W7 build", n, || {
        for k in 0..n {
            store.put(k, &w5_value(k, 0));
        }
    });
    let mut check = (0u64, 0u64, 0u64);
    let mut touched = vec![false; n as usize];
    let rmw = timed("W7 zipf-update", n, || {
        let mut keys = W7Keys::new(n);
        for _ in 0..n {
            let k = keys.next_key();
            let Some(mut v) = store.get(k) else { continue };
            check.0 += 1;
            let counter = u64::from_le_bytes(v[..8].try_into().expect("100-byte value"));
            check.1 = check.1.wrapping_add(counter);
            v[..8].copy_from_slice(&counter.wrapping_add(1).to_le_bytes());
            store.put(k, &v);
            if !std::mem::replace(&mut touched[k as usize], true) {
                check.2 += 1;
            }
        }
    });
    if full_scale() {
        assert_eq!(
            check,
            (10_000_000, 7_475_850_994_438_564_624, 1_653_416),
            "W7 check values"
        );
    }
    (build, rmw, check)
}
