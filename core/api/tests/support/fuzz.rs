//! The fuzz harness shared by the `tests/fuzz.rs` of unlearn-api, unlearn-data and
//! unlearn-pipeline (each includes this file with `#[path]`: a test file cannot import another
//! crate's test modules, and a helper crate for ~200 lines is not worth its build).
//!
//! `UNLEARN_FUZZ_CASES` sets the cases per target (default 64), `UNLEARN_FUZZ_SEED` the RNG seed
//! (default 0, so CI runs are reproducible). See docs/fuzzing.md.
#![allow(dead_code)]

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

pub fn cases() -> u32 {
    std::env::var("UNLEARN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

pub fn seed() -> u64 {
    std::env::var("UNLEARN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `target` on `cases()` inputs drawn from `strategy`; a panic fails the test with the
/// shrunk input. Prints the budget, executions (shrinking included) and wall time.
pub fn fuzz<S: Strategy>(name: &str, strategy: S, target: impl Fn(&S::Value))
where
    S::Value: Debug,
{
    let cases = cases();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed().to_le_bytes());
    key[8..8 + name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
    let config = Config {
        cases,
        failure_persistence: None,
        // Every input is interesting: rejections are not used.
        max_global_rejects: 0,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let runs = AtomicU64::new(0);
    let start = Instant::now();
    let result = runner.run(&strategy, |input| {
        runs.fetch_add(1, Ordering::Relaxed);
        catch_unwind(AssertUnwindSafe(|| target(&input))).map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TestCaseError::fail(format!("panicked: {msg}"))
        })
    });
    let findings = usize::from(result.is_err());
    eprintln!(
        "fuzz {name}: budget {cases} cases, {} executions, {:.1} s, {findings} findings",
        runs.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz target {name} failed: {e}");
    }
}

/// One change to a seed input. Positions are fractions of the length, so they shrink well and
/// stay in range whatever the seed's size.
#[derive(Debug, Clone)]
pub enum Op {
    Truncate(Index),
    FlipBit(Index, u8),
    Overwrite(Index, Vec<u8>),
    Insert(Index, Vec<u8>),
    /// A 32-bit size field set to a boundary value, little or big endian.
    SetU32(Index, u32, bool),
    /// A 64-bit size field set to a boundary value (safetensors' header length).
    SetU64(Index, u64),
}

pub fn interesting_u32() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(7),
        Just(8),
        Just(127),
        Just(128),
        Just(255),
        Just(0xffff),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(0xffff_fff8),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

pub fn interesting_u64() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(8),
        Just(100_000_000),
        Just(u32::MAX as u64),
        Just(i64::MAX as u64),
        Just(u64::MAX - 7),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

pub fn op() -> impl Strategy<Value = Op> + Clone {
    let bytes = prop::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        any::<Index>().prop_map(Op::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Op::FlipBit(i, b)),
        (any::<Index>(), bytes.clone()).prop_map(|(i, b)| Op::Overwrite(i, b)),
        (any::<Index>(), bytes).prop_map(|(i, b)| Op::Insert(i, b)),
        (any::<Index>(), interesting_u32(), any::<bool>())
            .prop_map(|(i, v, be)| Op::SetU32(i, v, be)),
        (any::<Index>(), interesting_u64()).prop_map(|(i, v)| Op::SetU64(i, v)),
    ]
}

pub fn apply(seed: &[u8], ops: &[Op]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for op in ops {
        let len = b.len();
        match op {
            Op::Truncate(i) => b.truncate(i.index(len + 1)),
            Op::FlipBit(i, bit) if len > 0 => b[i.index(len)] ^= 1 << bit,
            Op::Overwrite(i, bytes) if len > 0 => {
                let at = i.index(len);
                for (k, &x) in bytes.iter().enumerate().take(len - at) {
                    b[at + k] = x;
                }
            }
            Op::Insert(i, bytes) => {
                let at = i.index(len + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Op::SetU32(i, v, be) if len >= 4 => {
                let at = i.index(len - 3);
                let v = if *be {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                b[at..at + 4].copy_from_slice(&v);
            }
            Op::SetU64(i, v) if len >= 8 => {
                let at = i.index(len - 7);
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

/// A file's bytes: the seed mutated, or random bytes.
#[derive(Debug, Clone)]
pub enum Bytes {
    Mutated(Vec<Op>),
    Random(Vec<u8>),
}

pub fn bytes_input() -> impl Strategy<Value = Bytes> + Clone {
    prop_oneof![
        4 => prop::collection::vec(op(), 0..6).prop_map(Bytes::Mutated),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::Random),
    ]
}

impl Bytes {
    pub fn of(&self, seed: &[u8]) -> Vec<u8> {
        match self {
            Bytes::Mutated(ops) => apply(seed, ops),
            Bytes::Random(b) => b.clone(),
        }
    }
}
