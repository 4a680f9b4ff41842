//! Checkpoint and savepoint `_metadata` decoding: any bytes give a typed error or metadata
//! that re-encodes to the same bytes (`statebackend::fuzzing::metadata`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = statebackend::fuzzing::metadata(data);
});
