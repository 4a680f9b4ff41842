//! `statectl`'s commands on an S3 root given as a URL, configured from the environment as the
//! AWS tools are: list, inspect, verify (clean and with a damaged object; of the prefix above
//! the root), dump, convert into a savepoint on the store, gc (refusing what is not a root,
//! keeping the newest checkpoint that verifies, deleting nothing of a checkpoint a listing
//! omits), discard, the savepoint rewrites (rename and drop a state or an operator, rescale)
//! and diff. One test in its own binary: it sets the process's
//! environment.

use std::sync::Arc;

use statebackend::checkpoint::CheckpointCoordinator;
use statebackend::cli::diff::diff_snapshots;
use statebackend::cli::discard::{DiscardOptions, discard};
use statebackend::cli::dump::{DumpOptions, dump};
use statebackend::cli::gc::{GcOptions, gc};
use statebackend::cli::inspect::inspect;
use statebackend::cli::list::list;
use statebackend::cli::location::Location;
use statebackend::cli::rewrite::{Edit, rewrite};
use statebackend::cli::verify::{VerifyOptions, verify};
use statebackend::savepoint::complete_savepoint;
use statebackend::storage::CheckpointStorage;
use statebackend::{
    AnyBackend, BackendConfig, KeyGroupRange, KeyedStateBackend, Result, ValueState,
    ValueStateDescriptor,
};
use statebackend_s3_loopback::{
    ACCESS_KEY, BUCKET, Fault, FaultRule, LoopbackS3, RequestKind, SECRET_KEY,
};

#[test]
fn every_command_works_on_an_s3_url() -> Result<()> {
    let server = LoopbackS3::start().expect("start the loopback S3 server");
    // SAFETY: the only test of this binary, and nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT_URL", server.endpoint());
        std::env::set_var("AWS_ALLOW_HTTP", "true");
    }
    let root_url = format!("s3://{BUCKET}/jobs/clicks");
    let root = Location::parse(&root_url);

    // A job of one heap instance: three checkpoints, then a savepoint of the same state.
    let storage: Arc<dyn CheckpointStorage> = Arc::new(server.storage("jobs/clicks")?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    let all = KeyGroupRange::all(128)?;
    let mut b = AnyBackend::open(&BackendConfig::heap(128, all))?;
    let counts: ValueState<String, (), u64> =
        b.value_state(&ValueStateDescriptor::new("counts"))?;
    for id in 1..=3u64 {
        for k in 0..50 * id {
            counts.put(&mut b, &format!("user-{k}"), &(), k * id)?;
        }
        coordinator.begin(id)?;
        let part = b.snapshot(id)?.upload(storage.as_ref())?.0;
        coordinator.complete(id, vec![part])?;
    }
    // The job stops: its coordinator lets go of the root (gc and discard refuse a live one).
    drop(coordinator);
    let savepoint_storage = server.storage("jobs/clicks/savepoints/sp-1")?;
    let part = b.savepoint()?.write(&savepoint_storage)?;
    complete_savepoint(&savepoint_storage, vec![part])?;

    let listed = list(&root).map_err(to_error)?;
    let kinds: Vec<(&str, &str)> = listed.entries.iter().map(|e| (e.kind, e.state)).collect();
    assert_eq!(
        kinds,
        [
            ("checkpoint", "completed"),
            ("checkpoint", "completed"),
            ("checkpoint", "completed"),
            ("savepoint", "completed")
        ],
        "{listed:?}"
    );
    assert_eq!(
        listed.entries[3].path,
        format!("{root_url}/savepoints/sp-1")
    );

    let checkpoint_3 = root.join("chk-0000000003");
    let inspected = inspect(&checkpoint_3, None).map_err(to_error)?;
    assert_eq!((inspected.kind.as_str(), inspected.id), ("checkpoint", 3));
    assert_eq!(inspected.instances.len(), 1);

    let verified = verify(&root, VerifyOptions { all: true }).map_err(to_error)?;
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.snapshots.len(), 4);
    assert_eq!(verified.files_checked, 4);

    // Convert checkpoint 3 into a savepoint on the store: it dumps as the savepoint taken of
    // the same state does.
    let converted = root.join("converted/sp-3");
    statebackend::cli::convert::convert(&checkpoint_3, &converted).map_err(to_error)?;
    let options = DumpOptions {
        state: "counts".into(),
        key_group: None,
        limit: None,
    };
    let (mut from_checkpoint, mut from_savepoint) = (Vec::new(), Vec::new());
    let n = dump(&converted, &options, &mut from_checkpoint).map_err(to_error)?;
    let m = dump(&root.join("savepoints/sp-1"), &options, &mut from_savepoint).map_err(to_error)?;
    assert_eq!((n, m), (150, 150));
    assert!(from_checkpoint == from_savepoint);
    // Converting into the checkpoint area is refused.
    assert!(
        statebackend::cli::convert::convert(&checkpoint_3, &root.join("chk-0000000009")).is_err()
    );

    // A damaged object is found and named by its URL.
    let data_file = inspected.instances[0].files[0].path.clone();
    let damaged = statebackend::storage::StoragePath::parse(&data_file)?;
    let mut bytes = storage.get(&damaged)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    storage.put(&damaged, &bytes)?;
    let verified = verify(&checkpoint_3, VerifyOptions { all: true }).map_err(to_error)?;
    assert!(!verified.ok);
    assert_eq!(verified.failures[0].file, format!("{root_url}/{data_file}"));

    // `list` and `verify` of the prefix above the root cover the root and its savepoints, and
    // say which checkpoint a restore would pick (3 is damaged: 2).
    let parent = Location::parse(&format!("s3://{BUCKET}/jobs"));
    let listed = list(&parent).map_err(to_error)?;
    assert_eq!(listed.roots.len(), 1, "{listed:?}");
    assert_eq!(listed.roots[0].path, root_url);
    assert_eq!(listed.roots[0].restore.checkpoint, Some(2), "{listed:?}");
    let picked: Vec<(u64, Option<&str>)> = listed
        .entries
        .iter()
        .filter(|e| e.kind == "checkpoint")
        .map(|e| (e.id, e.restore.as_deref().filter(|r| *r == "picked")))
        .collect();
    assert_eq!(picked, [(1, None), (2, Some("picked")), (3, None)]);
    let verified = verify(&parent, VerifyOptions { all: false }).map_err(to_error)?;
    assert!(!verified.ok);
    assert_eq!(
        verified.snapshots.len(),
        1,
        "stops at checkpoint 3: {verified:?}"
    );
    assert_eq!(
        verified.skipped.len(),
        4,
        "2, 1 and two savepoints: {verified:?}"
    );
    assert!(
        verified
            .skipped
            .iter()
            .all(|s| s.reason == statebackend::cli::verify::STOPPED_EARLY)
    );

    // gc refuses what is not a checkpoint root, naming what it is.
    let options = GcOptions {
        dry_run: true,
        retained: 1,
        ignore_lease: false,
    };
    for (location, needle) in [
        (parent.clone(), "did you mean it?".to_owned()),
        (root.join("savepoints/sp-1"), "is a savepoint".to_owned()),
        (
            checkpoint_3.clone(),
            "is the directory of checkpoint 3".to_owned(),
        ),
    ] {
        let refused = gc(&location, options).expect_err("not a root");
        assert!(refused.to_string().contains(&needle), "{refused}");
    }
    let refused = gc(&parent, options).expect_err("not a root");
    assert!(refused.to_string().contains(&root_url), "{refused}");

    // gc keeps the newest checkpoint that verifies (2) beyond the retention of 1; the
    // savepoints below the root stay.
    let planned = gc(&root, options).map_err(to_error)?;
    assert_eq!(planned.dropped_checkpoints, [1]);
    assert_eq!(
        planned.kept_beyond_retention.as_ref().map(|k| k.id),
        Some(2)
    );
    let done = gc(
        &root,
        GcOptions {
            dry_run: false,
            ..options
        },
    )
    .map_err(to_error)?;
    assert_eq!(done.deleted, planned.deleted);
    let listed = list(&root).map_err(to_error)?;
    let ids: Vec<(&str, u64, &str)> = listed
        .entries
        .iter()
        .map(|e| (e.kind, e.id, e.state))
        .collect();
    assert_eq!(
        ids,
        [
            ("checkpoint", 2, "completed"),
            ("checkpoint", 3, "completed"),
            ("savepoint", 3, "completed"),
            ("savepoint", 0, "completed")
        ],
        "{listed:?}"
    );

    // discard on the store: a checkpoint that verifies only with force; the damaged one moves
    // aside (GET, PUT, DELETE), and the next gc collects it.
    let refused = discard(&root, 2, DiscardOptions::default()).expect_err("2 verifies");
    assert!(refused.to_string().contains("--force"), "{refused}");
    let discarded = discard(&root, 3, DiscardOptions::default()).map_err(to_error)?;
    assert_eq!(discarded.was, "damaged");
    assert_eq!(discarded.moved_to, "chk-0000000003/_metadata.discarded");
    let metadata_3 = statebackend::storage::StoragePath::parse("chk-0000000003/_metadata")?;
    assert!(!storage.exists(&metadata_3)?);
    let listed = list(&root).map_err(to_error)?;
    assert_eq!(
        (listed.entries[1].id, listed.entries[1].state),
        (3, "discarded"),
        "{listed:?}"
    );
    gc(
        &root,
        GcOptions {
            dry_run: false,
            ..options
        },
    )
    .map_err(to_error)?;
    let chk_3 = statebackend::storage::StoragePath::parse("chk-0000000003")?;
    assert_eq!(storage.list(Some(&chk_3))?, []);
    let verified = verify(&root, VerifyOptions { all: true }).map_err(to_error)?;
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.roots[0].restore.checkpoint, Some(2));

    // A store whose listings omit checkpoint 2's `_metadata`: gc reads it directly before it
    // deletes anything, and deletes nothing of checkpoint 2.
    server.inject(
        FaultRule::new(Fault::OmitFromListing)
            .key_contains("chk-0000000002/_metadata")
            .always(),
    );
    let swept = gc(
        &root,
        GcOptions {
            dry_run: false,
            ..options
        },
    )
    .map_err(to_error)?;
    assert!(server.counts().faulted > 0, "the listing omitted it");
    server.clear_faults();
    assert_eq!(swept.deleted, [], "{swept:?}");
    let verified = verify(&root, VerifyOptions { all: true }).map_err(to_error)?;
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.roots[0].restore.checkpoint, Some(2));

    // The rewrite commands and diff, from and to the store.
    let sp = root.join("savepoints/sp-1");
    let counts = DumpOptions {
        state: "counts".into(),
        key_group: None,
        limit: None,
    };
    let dump_of = |location: &Location, options: &DumpOptions| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        dump(location, options, &mut out).map_err(to_error)?;
        Ok(out)
    };
    let original = dump_of(&sp, &counts)?;
    let renamed = root.join("rewritten/renamed");
    let report = rewrite(
        &sp,
        &renamed,
        &Edit::RenameState {
            operator: String::new(),
            from: "counts".into(),
            to: "visits".into(),
        },
    )
    .map_err(to_error)?;
    assert_eq!(report.changes.len(), 1, "{report:?}");
    let visits = DumpOptions {
        state: "visits".into(),
        ..counts.clone()
    };
    assert!(dump_of(&renamed, &visits)? == original);
    let rescaled = root.join("rewritten/rescaled");
    let report = rewrite(
        &sp,
        &rescaled,
        &Edit::Rescale {
            operator: String::new(),
            parallelism: 3,
        },
    )
    .map_err(to_error)?;
    assert_eq!(report.instances, 3);
    assert!(
        verify(&rescaled, VerifyOptions { all: true })
            .map_err(to_error)?
            .ok
    );
    let rows = |location: &Location| -> Result<Vec<String>> {
        let text = String::from_utf8(dump_of(location, &counts)?).expect("JSON lines");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        Ok(lines)
    };
    assert_eq!(rows(&rescaled)?, rows(&sp)?);
    let dropped = root.join("rewritten/dropped");
    rewrite(
        &sp,
        &dropped,
        &Edit::DropState {
            operator: String::new(),
            state: "counts".into(),
        },
    )
    .map_err(to_error)?;
    assert!(dump(&dropped, &counts, &mut Vec::new()).is_err());
    let named = root.join("rewritten/named");
    rewrite(
        &sp,
        &named,
        &Edit::RenameOperator {
            from: String::new(),
            to: "clicks".into(),
        },
    )
    .map_err(to_error)?;
    let inspected = inspect(&named, None).map_err(to_error)?;
    assert!(inspected.instances.iter().all(|i| i.operator == "clicks"));
    // A savepoint of two operators on the store loses one.
    let two_storage = server.storage("jobs/clicks/rewritten/two")?;
    let mut parts = Vec::new();
    for operator in ["clicks", "views"] {
        let mut job = AnyBackend::open(&BackendConfig::heap(128, all))?;
        let counts_state: ValueState<String, (), u64> =
            job.value_state(&ValueStateDescriptor::new("counts"))?;
        counts_state.put(&mut job, &"user-1".to_owned(), &(), 1)?;
        let mut part = job.savepoint()?.write(&two_storage)?;
        part.operator = operator.to_owned();
        parts.push(part);
    }
    complete_savepoint(&two_storage, parts)?;
    let one = root.join("rewritten/one");
    rewrite(
        &root.join("rewritten/two"),
        &one,
        &Edit::DropOperator {
            operator: "views".into(),
        },
    )
    .map_err(to_error)?;
    let inspected = inspect(&one, None).map_err(to_error)?;
    assert_eq!(inspected.instances.len(), 1);
    assert_eq!(inspected.instances[0].operator, "clicks");
    // diff across the store.
    let compared = diff_snapshots(&sp, &renamed).map_err(to_error)?;
    let by_state: Vec<(&str, u64, u64)> = compared
        .states
        .iter()
        .map(|s| (s.state.as_str(), s.added, s.removed))
        .collect();
    assert_eq!(by_state, [("counts", 0, 150), ("visits", 150, 0)]);
    // A failed rewrite leaves no object at the target, and the source is intact.
    let failed = root.join("rewritten/failed");
    assert!(
        rewrite(
            &sp,
            &failed,
            &Edit::DropState {
                operator: String::new(),
                state: "nope".into(),
            },
        )
        .is_err()
    );
    let failed_prefix = statebackend::storage::StoragePath::parse("rewritten/failed")?;
    assert_eq!(storage.list(Some(&failed_prefix))?, []);
    // A rewrite failing after it wrote data files (a row function refusing the 120th of the
    // 150 rows, in the last of 3 instances) removes them from the store again.
    let midway = server.storage("jobs/clicks/rewritten/midway")?;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let puts_before = server.counts().of(RequestKind::Put);
    let refused = statebackend::savepoint::processor::SavepointRewrite::new()
        .rescale("", 3)
        .change_rows(
            "",
            "counts",
            Arc::new(move |_: &[u8], value: &[u8]| {
                if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 119 {
                    Err(statebackend::Error::Decode {
                        state: "counts".into(),
                        message: "refused".into(),
                    })
                } else {
                    Ok(Some(value.to_vec()))
                }
            }),
            None,
        )
        .write(&server.storage("jobs/clicks/savepoints/sp-1")?, &midway);
    assert!(refused.is_err());
    assert!(
        server.counts().of(RequestKind::Put) > puts_before,
        "data files were written before the failure"
    );
    let midway_prefix = statebackend::storage::StoragePath::parse("rewritten/midway")?;
    assert_eq!(storage.list(Some(&midway_prefix))?, []);
    assert!(dump_of(&sp, &counts)? == original);
    Ok(())
}

fn to_error(e: statebackend::cli::CliError) -> statebackend::Error {
    match e {
        statebackend::cli::CliError::Library(e) => e,
        statebackend::cli::CliError::Failed(message) => {
            statebackend::Error::InvalidOptions { reason: message }
        }
    }
}
