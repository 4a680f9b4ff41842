//! Layer 4, engines: keyed state, checkpoints and rescaling inside stream processing engines,
//! built on the runtime. Each engine is a module behind a cargo feature of its own.
//!
//! - `timely` (feature `timely`): timely-dataflow. Records are routed to the worker that
//!   owns their key group, a stateful operator hands its logic a backend, key contexts and
//!   event-time timers, and checkpoints are taken when timely's progress says an epoch is
//!   complete.

#[cfg(feature = "timely")]
pub mod timely;
