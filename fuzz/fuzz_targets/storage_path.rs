//! Storage path and checkpoint directory name validation: any bytes give a typed error or a
//! path whose derived paths stay valid (`statebackend::fuzzing::storage_path`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = statebackend::fuzzing::storage_path(data);
});
