//! The conformance suite on the heap backend.
use crate::conformance_suite;

conformance_suite!(|max_parallelism, range| {
    statebackend::HeapBackend::new(max_parallelism, range).unwrap()
});
