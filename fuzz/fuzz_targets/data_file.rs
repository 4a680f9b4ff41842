//! Canonical data files (savepoints, heap checkpoints): header, footer, index, every block and
//! row, and a restore into a heap backend with typed decoding. Any bytes give a typed error or
//! the rows (`statebackend::fuzzing::data_file`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = statebackend::fuzzing::data_file(data);
});
