//! The logic of the `statectl` command-line tool (feature `cli`), kept apart from its argument
//! parsing (`statectl/src/main.rs`) so that it can be called and tested as a library.
//!
//! Every command reads checkpoint roots, checkpoints and savepoints in a local directory or,
//! given a URL (`s3://bucket/prefix`; features `aws`, `gcp`, `azure`), on an object store
//! ([`location::Location`]), through the library's storage and its own readers:
//!
//! - [`list`]: the checkpoints and savepoints under a checkpoint root;
//! - [`inspect`]: what one checkpoint or savepoint holds;
//! - [`verify`]: checks every referenced file (presence, size, crc32, data-file blocks);
//! - [`dump`]: a state's entries as JSON lines, decoded by their recorded type names;
//! - [`convert`]: offline conversion of a checkpoint into a savepoint;
//! - [`gc`]: deletion of the files no retained checkpoint references;
//! - [`discard`]: setting an unusable checkpoint aside, so that `gc` can collect it;
//! - [`rewrite`]: a new savepoint with a state or operator renamed or dropped, or an operator
//!   rescaled, through the state processor;
//! - [`diff`]: two snapshots compared row by row.
//!
//! [`root`] holds what the commands that change a root check first: that it is a checkpoint
//! root by its layout, and that no live coordinator holds it.
//!
//! Apart from `convert` and the rewrites (which write a new savepoint), `gc` without `--dry-run` and
//! `discard`, the commands never write: in particular they do not open a
//! [`CheckpointCoordinator`](crate::runtime::checkpoint::CheckpointCoordinator), which collects
//! garbage when it opens a root.
//!
//! Each command returns a report that serializes to JSON (`--json`) and renders itself for
//! people ([`write_human`](list::ListReport::write_human) and friends).

pub mod convert;
pub mod decode;
pub mod diff;
pub mod discard;
pub mod dump;
pub mod gc;
pub mod inspect;
pub mod list;
pub mod location;
pub mod new_savepoint;
pub mod progress;
pub mod rewrite;
pub mod root;
pub mod snapshot;
pub mod verify;

use std::fmt;

use crate::model::error::Error;

/// Why a `statectl` command failed. Every failure exits with status 1.
#[derive(Debug)]
pub enum CliError {
    /// An error reported by the library (or phrased as one, naming the file involved).
    Library(Error),
    /// A failure the tool detected itself, already phrased for the user.
    Failed(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Library(e) => e.fmt(f),
            CliError::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Library(e) => Some(e),
            CliError::Failed(_) => None,
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Library(e)
    }
}

/// `Result` of the CLI commands.
pub type CliResult<T> = std::result::Result<T, CliError>;

/// `bytes` in binary units for people: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC timestamp
/// (`2024-05-01T12:34:56.789Z`).
pub fn format_time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A plural `s` for `n` things.
pub(crate) fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_sizes() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            format_time_ms(1_714_566_896_789),
            "2024-05-01T12:34:56.789Z"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
