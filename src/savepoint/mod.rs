//! Savepoints: the user's portable backups in one canonical format.
//!
//! [`data_file`] is the canonical data file (also the heap backend's checkpoint format).

pub mod data_file;
