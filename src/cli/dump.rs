//! `statectl dump PATH --state NAME`: a state's entries as JSON lines, read from the canonical
//! data files of a savepoint or a heap checkpoint, decoded as [`crate::cli::decode`] says.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::cli::decode::decode_row;
use crate::cli::snapshot::{Location, chain_rows, is_data_file, load};
use crate::cli::{CliError, CliResult};
use crate::model::error::Error;
use crate::model::format::data_file::DataFileReader;
use crate::model::format::view::RowSource;
use crate::model::key_group::KeyGroup;
use crate::model::key_group::KeyGroupRange;

/// What to dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpOptions {
    /// The state's name.
    pub state: String,
    /// Only this key group.
    pub key_group: Option<KeyGroup>,
    /// At most this many entries.
    pub limit: Option<u64>,
}

/// Writes the entries of the state `options.state` of the savepoint or heap checkpoint in
/// `path` to `out`, one JSON object per line, in (key group, row key) order; returns how many.
/// Stops quietly when `out` is a closed pipe.
///
/// # Errors
/// [`CliError::Failed`] for a RocksDB checkpoint (convert it to a savepoint first), an
/// unknown state or a key group no instance owns; I/O and format errors naming the file.
pub fn dump(path: &Location, options: &DumpOptions, out: &mut dyn Write) -> CliResult<u64> {
    let snapshot = load(path)?;
    let meta = &snapshot.meta;
    if let Some(instance) = meta
        .instances
        .iter()
        .find(|i| !i.files.iter().all(is_data_file))
    {
        return Err(CliError::Failed(format!(
            "{} is a {} checkpoint: dump reads canonical data files (savepoints and heap \
             checkpoints). Convert it into a savepoint first with `statectl convert {} --to \
             <savepoint dir>` and dump the savepoint",
            path.display(),
            instance.backend,
            path.display()
        )));
    }
    if !meta
        .instances
        .iter()
        .any(|i| i.states.iter().any(|s| s.name == options.state))
    {
        let mut names: Vec<&str> = meta
            .instances
            .iter()
            .flat_map(|i| i.states.iter().map(|s| s.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        return Err(CliError::Failed(format!(
            "no state named '{}' in {}; its states: {}",
            options.state,
            path.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    if let Some(kg) = options
        .key_group
        .filter(|kg| !meta.instances.iter().any(|i| i.key_groups.contains(*kg)))
    {
        let ranges: Vec<String> = meta
            .instances
            .iter()
            .map(|i| format!("{} of {}", i.key_groups, i.max_parallelism))
            .collect();
        return Err(CliError::Failed(format!(
            "key group {kg} belongs to no instance of {} (key groups {})",
            path.display(),
            ranges.join(", ")
        )));
    }

    let limit = options.limit.unwrap_or(u64::MAX);
    let mut written = 0u64;
    let mut write_error: Option<io::Error> = None;
    for instance in &meta.instances {
        if options
            .key_group
            .is_some_and(|kg| !instance.key_groups.contains(kg))
        {
            continue;
        }
        let range = match options.key_group {
            Some(kg) => KeyGroupRange::new(u32::from(kg), u32::from(kg) + 1)?,
            None => instance.key_groups,
        };
        if let Some(mut chain) = chain_rows(&snapshot, instance, range)? {
            // An incremental chain: the rows a restore would hold, base and deltas merged.
            let Some(index) = chain.states().iter().position(|s| s.name == options.state) else {
                continue;
            };
            let info = chain.states()[index].clone();
            let result = chain.emit_rows(&mut |group, state, row_key, value| {
                if state != index || written >= limit {
                    return Ok(());
                }
                write_row(out, &info, group, row_key, value, &mut write_error)?;
                written += 1;
                Ok(())
            });
            if let Some(e) = write_error.take() {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return Ok(written);
                }
                return Err(stdout_error(e).into());
            }
            result?;
            continue;
        }
        for entry in &instance.files {
            if written >= limit {
                return Ok(written);
            }
            let (file, _) = snapshot.open_file(entry)?;
            let mut reader = DataFileReader::new(file, &snapshot.file_name(entry))?;
            let Some(index) = reader
                .header()
                .states
                .iter()
                .position(|s| s.name == options.state)
            else {
                continue;
            };
            let info = reader.header().states[index].clone();
            let groups: Vec<KeyGroup> = reader
                .index()
                .iter()
                .map(|e| e.key_group)
                .filter(|g| options.key_group.is_none_or(|kg| kg == *g))
                .collect();
            for group in groups {
                if written >= limit {
                    return Ok(written);
                }
                let result = reader.read_key_group(group, &mut |state, row_key, value| {
                    if state as usize != index || written >= limit {
                        return Ok(());
                    }
                    write_row(out, &info, group, row_key, value, &mut write_error)?;
                    written += 1;
                    Ok(())
                });
                if let Some(e) = write_error.take() {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        return Ok(written);
                    }
                    return Err(stdout_error(e).into());
                }
                result?;
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Error::Io {
            path: PathBuf::from("<stdout>"),
            source: e,
        }
        .into()),
        _ => Ok(written),
    }
}

/// Writes one row as a JSON line; a failed write is kept in `write_error` (a closed pipe ends
/// the dump quietly) and returned as an error to stop the reading.
fn write_row(
    out: &mut dyn Write,
    info: &crate::model::state::StateInfo,
    group: KeyGroup,
    row_key: &[u8],
    value: &[u8],
    write_error: &mut Option<io::Error>,
) -> Result<(), Error> {
    let row = decode_row(info, group, row_key, value);
    let mut line = serde_json::to_string(&row).map_err(|e| stdout_error(io::Error::other(e)))?;
    line.push('\n');
    if let Err(e) = out.write_all(line.as_bytes()) {
        let error = stdout_error(io::Error::new(e.kind(), e.to_string()));
        *write_error = Some(e);
        return Err(error);
    }
    Ok(())
}

fn stdout_error(source: io::Error) -> Error {
    Error::Io {
        path: PathBuf::from("<stdout>"),
        source,
    }
}
