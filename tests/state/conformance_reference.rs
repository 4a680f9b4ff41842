//! The conformance suite on the reference backend, which implements the backend interface
//! and nothing else.
use crate::conformance_suite;

conformance_suite!(|max_parallelism, range| {
    statebackend::backends::reference::ReferenceBackend::new(max_parallelism, range).unwrap()
});
