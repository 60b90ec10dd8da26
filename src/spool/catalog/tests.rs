use proptest::prelude::*;

use super::*;

fn vp(s: &str) -> VPath {
    VPath::resolve(s).expect("path")
}

/// Applies what a new file's life begins with: user `u` opens `path` as `id`, then seals it
/// at `size` bytes (no SHA-256, at time 0).
fn open_and_seal(c: &mut Catalog, id: FileId, path: &str, size: u64) {
    fits(
        c,
        &Record::Opened {
            id,
            user: "u".into(),
            path: vp(path),
            at_unix: 0,
        },
    );
    fits(
        c,
        &Record::Sealed {
            id,
            size,
            sha256: None,
            at_unix: 0,
        },
    );
}

/// Applies the creation of upload `x` of file `id` under key `k` (parts of 5 bytes).
fn start_upload(c: &mut Catalog, id: FileId) {
    let started = Record::UploadStarted {
        id,
        key: "k".into(),
        upload_id: "x".into(),
        part_size: 5,
        token: "t".into(),
    };
    fits(c, &started);
}

/// Applies `record`, which must fit: a test of a valid history fails on an invalid record.
fn fits(c: &mut Catalog, record: &Record) -> Effects {
    c.apply(record).expect("the record fits its file's state")
}

fn arb_record() -> impl Strategy<Value = Record> {
    let user = prop_oneof![Just("u".to_owned()), Just("v".to_owned())];
    let path = prop_oneof![
        Just("a"),
        Just("b"),
        Just("d"),
        Just("d/x"),
        Just("d/y"),
        Just("d.txt"),
        Just("d-x/y"),
        // Names around a subtree: the paged listing jumps over d/x/... to d/x0.
        Just("d/x/z"),
        Just("d/x/z/w"),
        Just("d/x0"),
        Just("d/x-1")
    ]
    .prop_map(vp);
    let id = 1u64..6;
    prop_oneof![
        (user.clone(), path.clone()).prop_map(|(user, path)| Record::Mkdir { user, path }),
        (user.clone(), path.clone()).prop_map(|(user, path)| Record::Rmdir { user, path }),
        (id.clone(), user, path.clone()).prop_map(|(id, user, path)| Record::Opened {
            id,
            user,
            path,
            at_unix: 1
        }),
        (id.clone(), 0u64..100, any::<bool>()).prop_map(|(id, size, hashed)| Record::Sealed {
            id,
            size,
            sha256: hashed.then_some([7; 32]),
            at_unix: 2
        }),
        (id.clone(), 0u64..100).prop_map(|(id, size)| Record::SealedAppended {
            id,
            size,
            at_unix: 2
        }),
        (id.clone(), path).prop_map(|(id, path)| Record::Renamed { id, path }),
        id.clone().prop_map(|id| Record::Removed { id }),
        id.clone().prop_map(|id| Record::UploadStarted {
            id,
            key: format!("k{id}"),
            upload_id: format!("up{id}"),
            part_size: 5,
            token: "t".into()
        }),
        (id.clone(), 1u32..4).prop_map(|(id, number)| Record::PartDone {
            id,
            number,
            etag: "e".into(),
            crc32c: 7
        }),
        id.clone().prop_map(|id| Record::UploadReset { id }),
        id.clone()
            .prop_map(|id| Record::Delivered { id, at_unix: 3 }),
        id.clone().prop_map(|id| Record::Failed {
            id,
            error: "AccessDenied".into()
        }),
        id.clone().prop_map(|id| Record::Retried { id }),
        id.clone().prop_map(|id| Record::Conflict {
            id,
            error: "exists".into()
        }),
        (id, 0u8..3).prop_map(|(id, k)| Record::UploadIntent {
            id,
            key: format!("k{id}-{k}"),
            at_unix: 4
        }),
    ]
}

proptest! {
    /// Compaction writes `snapshot_records`; replaying them must rebuild the same namespace
    /// and the same file states, whatever history led there.
    #[test]
    fn snapshot_replays_to_the_same_catalog(records in proptest::collection::vec(arb_record(), 0..60)) {
        let mut live = Catalog::default();
        for r in &records {
            // Random histories hold records that do not fit: refused, never a panic.
            let _ = live.apply(r);
        }
        live.end_replay();
        let mut rebuilt = Catalog::default();
        for r in &live.snapshot_records() {
            rebuilt.apply(r).map_err(|e| TestCaseError::fail(format!("snapshot record {r:?}: {e}")))?;
        }
        rebuilt.end_replay();
        prop_assert_eq!(&live.names, &rebuilt.names);
        prop_assert_eq!(&live.files, &rebuilt.files);
    }

    /// The indexes (by state, hidden versions by name, upload intents, upload ids, deliveries)
    /// and the per-state counts agree with a full scan after every record, whatever the
    /// history, and delivered files never outnumber the retention.
    #[test]
    fn indexes_agree_with_a_full_scan(
        records in proptest::collection::vec(arb_record(), 0..80),
        kept in 0usize..4,
    ) {
        let mut c = Catalog::with_retention(DeliveredRetention {
            files_count_max: kept,
            age_secs_max: u64::MAX,
        });
        for r in &records {
            let _ = c.apply(r);
            if let Err(e) = c.index.check(&c.files) {
                return Err(TestCaseError::fail(format!("after {r:?}: {e}")));
            }
            let delivered = c.files.values().filter(|f| f.state == FileState::Delivered).count();
            prop_assert!(delivered <= kept, "{} delivered kept, retention {}", delivered, kept);
            let counts = c.counts();
            for state in STATES {
                let scan: Vec<&FileRecord> = c.files.values().filter(|f| f.state == state).collect();
                prop_assert_eq!(counts.files(state), scan.len());
                prop_assert_eq!(counts.bytes(state), scan.iter().map(|f| f.size).sum::<u64>());
            }
        }
        c.end_replay();
        prop_assert!(c.index.check(&c.files).is_ok());
        prop_assert_eq!(c.ids_in(FileState::Receiving).count(), 0);
    }

    /// Every name points at a file that exists (no dangling names), whatever the history.
    #[test]
    fn names_never_dangle(records in proptest::collection::vec(arb_record(), 0..60)) {
        let mut c = Catalog::default();
        for r in &records {
            let _ = c.apply(r);
            for node in c.names.values() {
                if let Node::File(id) = node {
                    prop_assert!(c.files.contains_key(id), "dangling name after {:?}", r);
                }
            }
            // children() agrees with a plain filter over all names.
            for dir in ["", "d", "d-x", "d/x"] {
                let dir = if dir.is_empty() { VPath::root() } else { vp(dir) };
                let model: Vec<String> = c
                    .names
                    .keys()
                    .filter(|(u, p)| u == "u" && p.parent().as_ref() == Some(&dir))
                    .map(|(_, p)| p.name().to_owned())
                    .collect();
                let got: Vec<String> = c.children("u", &dir).into_iter().map(|(n, _)| n).collect();
                prop_assert_eq!(&model, &got);
                // Paged: pages of 2 after the last name of the page before.
                let mut paged: Vec<String> = Vec::new();
                loop {
                    let page = c.children_page("u", &dir, paged.last().map(String::as_str), 2);
                    if page.is_empty() {
                        break;
                    }
                    paged.extend(page.into_iter().map(|(n, _)| n));
                }
                prop_assert_eq!(&model, &paged);
            }
        }
    }
}

#[test]
fn superseding_a_pending_file_keeps_it_uploading_until_the_new_version_seals() {
    let mut c = Catalog::default();
    let (user, path) = ("u".to_owned(), vp("f"));
    fits(
        &mut c,
        &Record::Opened {
            id: 1,
            user: user.clone(),
            path: path.clone(),
            at_unix: 0,
        },
    );
    fits(
        &mut c,
        &Record::Sealed {
            id: 1,
            size: 10,
            sha256: None,
            at_unix: 0,
        },
    );
    fits(
        &mut c,
        &Record::Opened {
            id: 2,
            user: user.clone(),
            path: path.clone(),
            at_unix: 0,
        },
    );
    assert!(
        c.file(1).expect("old").hidden,
        "old version still pending, hidden"
    );
    assert_eq!(c.lookup(&user, &path), Some(Node::File(2)));
    let effects = fits(
        &mut c,
        &Record::Sealed {
            id: 2,
            size: 5,
            sha256: None,
            at_unix: 0,
        },
    );
    assert!(c.file(1).is_none(), "superseded at the new version's seal");
    assert_eq!(effects.free_spool, vec![1]);
}

#[test]
fn rename_voids_the_upload_under_the_old_key() {
    let mut c = Catalog::default();
    open_and_seal(&mut c, 1, "a", 10);
    start_upload(&mut c, 1);
    let effects = fits(
        &mut c,
        &Record::Renamed {
            id: 1,
            path: vp("b"),
        },
    );
    assert_eq!(
        effects.abort_uploads,
        vec![("k".to_owned(), "x".to_owned())]
    );
    let f = c.file(1).expect("file");
    assert_eq!((f.state, f.upload.is_none()), (FileState::Sealed, true));
    assert_eq!(c.lookup("u", &vp("a")), None);
}

#[test]
fn an_early_upload_survives_the_seal_compaction_and_replay_and_is_aborted_with_its_file() {
    let mut c = Catalog::default();
    fits(
        &mut c,
        &Record::Opened {
            id: 1,
            user: "u".into(),
            path: vp("a"),
            at_unix: 0,
        },
    );
    start_upload(&mut c, 1);
    fits(
        &mut c,
        &Record::PartDone {
            id: 1,
            number: 1,
            etag: "e".into(),
            crc32c: 7,
        },
    );
    let f = c.file(1).expect("file");
    assert_eq!(
        f.state,
        FileState::Receiving,
        "an early upload keeps the state"
    );
    assert!(f.upload.as_ref().is_some_and(|u| u.early));

    // Compaction before the seal (the file then replays as partial, upload kept).
    let mut replayed = Catalog::default();
    for r in c.snapshot_records() {
        fits(&mut replayed, &r);
    }
    replayed.end_replay();
    let f = replayed.file(1).expect("file");
    assert_eq!(f.state, FileState::Partial);
    assert_eq!(f.upload, c.file(1).expect("file").upload);

    fits(
        &mut c,
        &Record::Sealed {
            id: 1,
            size: 8,
            sha256: None,
            at_unix: 0,
        },
    );
    let f = c.file(1).expect("file");
    assert_eq!(
        f.state,
        FileState::Uploading,
        "the seal carries on with the upload"
    );
    let mut replayed = Catalog::default();
    for r in c.snapshot_records() {
        fits(&mut replayed, &r);
    }
    assert_eq!(replayed.file(1), c.file(1), "still early after compaction");

    let effects = fits(&mut c, &Record::Removed { id: 1 });
    assert_eq!(
        effects.abort_uploads,
        vec![("k".to_owned(), "x".to_owned())]
    );
}

#[test]
fn delivered_files_leave_the_catalog_beyond_the_retention_count_and_age() {
    let mut c = Catalog::with_retention(DeliveredRetention {
        files_count_max: 2,
        age_secs_max: 100,
    });
    for id in 1..=4u64 {
        open_and_seal(&mut c, id, &format!("f{id}"), 1);
        fits(
            &mut c,
            &Record::Delivered {
                id,
                at_unix: 1000 + id,
            },
        );
    }
    // The two oldest deliveries are gone, with their names; the newest two are listed.
    assert_eq!(
        c.ids_in(FileState::Delivered).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(c.file(1).is_none() && c.lookup("u", &vp("f1")).is_none());
    assert_eq!(c.lookup("u", &vp("f4")), Some(Node::File(4)));
    let newest: Vec<FileId> = c.recently_delivered().map(|f| f.id).collect();
    assert_eq!(newest, vec![4, 3]);
    // By age: delivered at 1003 and 1004, 100 s kept.
    assert_eq!(c.prune_delivered(1103), 0);
    assert_eq!(c.prune_delivered(1104), 1);
    assert_eq!(c.ids_in(FileState::Delivered).collect::<Vec<_>>(), vec![4]);
    // The snapshot holds only what is kept.
    let delivered_in_snapshot = c
        .snapshot_records()
        .iter()
        .filter(|r| matches!(r, Record::Delivered { .. }))
        .count();
    assert_eq!(delivered_in_snapshot, 1);
    assert!(c.index.check(&c.files).is_ok());
}

#[test]
fn a_file_removed_with_an_unresolved_upload_intent_asks_for_a_stray_search() {
    let mut c = Catalog::default();
    open_and_seal(&mut c, 1, "a", 8);
    // CreateMultipartUpload was sent; its answer never came (or the box crashed first).
    fits(
        &mut c,
        &Record::UploadIntent {
            id: 1,
            key: "k".into(),
            at_unix: 1,
        },
    );
    let effects = fits(&mut c, &Record::Removed { id: 1 });
    assert_eq!(effects.stray_searches, vec!["k".to_owned()]);
    assert!(
        effects.abort_uploads.is_empty(),
        "no upload id was ever known"
    );
}

#[test]
fn state_names_are_the_ones_json_uses() {
    let mut states = crate::spool::PENDING_STATES_LISTED.to_vec();
    states.push(FileState::Delivered);
    for state in states {
        assert_eq!(
            serde_json::to_value(state).expect("json"),
            serde_json::Value::from(state.name())
        );
    }
}

#[test]
fn a_record_that_does_not_fit_is_refused_counted_and_changes_nothing() {
    let mut c = Catalog::default();
    open_and_seal(&mut c, 1, "a", 8);
    fits(&mut c, &Record::Delivered { id: 1, at_unix: 5 });
    let delivered = c.file(1).cloned();
    let late_failure = Record::failed(1, "late");
    assert_eq!(
        c.apply(&late_failure),
        Err(InvalidTransition {
            record: "Failed",
            id: 1,
            met: Met::State(FileState::Delivered),
        })
    );
    assert_eq!(c.file(1).cloned(), delivered, "nothing changed");
    assert_eq!(c.invalid_transitions(), 1);

    open_and_seal(&mut c, 2, "b", 3);
    let sealed_again = Record::SealedAppended {
        id: 2,
        size: 4,
        at_unix: 1,
    };
    let refused = c.apply(&sealed_again).expect_err("sealed twice");
    assert_eq!(refused.met, Met::State(FileState::Sealed));
    assert_eq!(c.file(2).map(|f| f.size), Some(3));
    let part = Record::PartDone {
        id: 2,
        number: 1,
        etag: "e".into(),
        crc32c: 7,
    };
    assert_eq!(c.apply(&part).map_err(|e| e.met), Err(Met::NoUpload));
    assert_eq!(c.invalid_transitions(), 3);

    // Not errors: a record about a file no longer known (removed, forgotten by retention),
    // a retry of a file that is not failed (it raced the drain's own), an intent noted twice.
    assert_eq!(
        c.apply(&Record::Delivered { id: 9, at_unix: 1 }),
        Ok(Effects::default())
    );
    fits(&mut c, &Record::Retried { id: 2 });
    let intent = Record::UploadIntent {
        id: 2,
        key: "k".into(),
        at_unix: 1,
    };
    fits(&mut c, &intent);
    fits(&mut c, &intent);
    assert_eq!(c.invalid_transitions(), 3);
}
