//! The conformance suite on the heap backend.
mod common;

conformance_suite!(|max_parallelism, range| {
    statebackend::HeapBackend::new(max_parallelism, range).unwrap()
});
