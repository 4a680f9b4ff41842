//! Layer 3, the runtime: what turns backends into recoverable state, generic over
//! [`CheckpointedBackend`](crate::backends::interface::CheckpointedBackend) with no `match` on
//! backend kinds. [`checkpoint`]: the coordinator (ids, completion, retention and garbage
//! collection, whose one planning function `statectl gc` also calls) and restore with
//! rescaling; [`driver`]: the checkpoint protocol in one call per barrier; [`timers`]: event- and processing-time timers kept as keyed state; [`savepoint`]: canonical savepoints, their restore into any backend at any
//! parallelism, and checkpoint conversion.

pub mod checkpoint;
pub mod driver;
pub mod processor;
pub mod savepoint;
pub mod timers;
