//! Shared test support: a deterministic PRNG, the random-operation model, and the conformance
//! suite every backend runs (`conformance_suite!`).
#![allow(dead_code)]

pub mod checkpointing;
pub mod conformance;
pub mod faults;
pub mod model;
pub mod untrusted;

/// Runs test `name` of module `module` (its `module_path!()`) of this test binary again in a
/// child process, with the environment variable `var` set to `dir`, and asserts that the child
/// succeeded: how a test gets a process that ends without closing anything (the child checks
/// `var` and exits from inside the test).
pub fn run_child_test(module: &str, name: &str, var: &str, dir: &std::path::Path) {
    // The test harness names tests by their path without the crate's name.
    let test = match module.split_once("::") {
        Some((_, inner)) => format!("{inner}::{name}"),
        None => name.to_owned(),
    };
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test, "--test-threads=1"])
        .env(var, dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "child: {status}");
}

/// SplitMix64, the workloads' PRNG (see `../shared/WORKLOADS.md`).
#[derive(Debug, Clone)]
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

#[test]
fn splitmix_matches_reference() {
    let mut g = SplitMix64::new(42);
    assert_eq!(g.next_u64(), 13679457532755275413);
    assert_eq!(g.next_u64(), 2949826092126892291);
    assert_eq!(g.next_u64(), 5139283748462763858);
}
