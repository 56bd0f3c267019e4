use super::*;
use std::sync::Barrier;

fn entry(i: u64) -> (u64, Vec<u8>) {
    (i, format!("entry-{i}").into_bytes())
}

/// Appends and blocks until durable.
fn append_sync(store: &LogStore, entries: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
    let (tx, rx) = mpsc::sync_channel(1);
    store.append(
        entries,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv().expect("callback called")
}

fn indexes(store: &LogStore) -> Vec<u64> {
    store.range(..).into_iter().map(|(i, _)| i).collect()
}

#[test]
fn append_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("raft.redb");
    {
        let store = LogStore::open(&path).unwrap();
        assert!(store.is_empty());
        assert_eq!(store.first_index(), None);
        assert_eq!(store.last(), None);

        let (tx, rx) = mpsc::sync_channel(1);
        store.append(
            (1..=5).map(entry).collect(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        // Readable before durable.
        assert_eq!(store.len(), 5);
        rx.recv().unwrap().unwrap();

        assert_eq!(store.first_index(), Some(1));
        let (last, bytes) = store.last().unwrap();
        assert_eq!(last, 5);
        assert_eq!(&bytes[..], b"entry-5");
        let mid = store.range(2..4);
        assert_eq!(mid.len(), 2);
        assert_eq!(mid[0].0, 2);
        assert_eq!(&mid[1].1[..], b"entry-3");
        let (from, to) = (4, 2);
        assert!(store.range(from..to).is_empty());
        assert!(store.range(3..3).is_empty());
        assert_eq!(store.range(5..).len(), 1);
        assert_eq!(store.get(4).as_deref(), Some(&b"entry-4"[..]));

        store.put_meta_sync("vote", Some(b"v1".to_vec())).unwrap();
        store.put_meta_sync("gone", Some(b"x".to_vec())).unwrap();
        store.put_meta_sync("gone", None).unwrap();
        assert_eq!(store.get_meta("vote"), Some(b"v1".to_vec()));
        assert_eq!(store.get_meta("gone"), None);
    }
    let store = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&store), vec![1, 2, 3, 4, 5]);
    assert_eq!(&store.get(3).unwrap()[..], b"entry-3");
    assert_eq!(store.get_meta("vote"), Some(b"v1".to_vec()));
    assert_eq!(store.get_meta("gone"), None);
}

#[test]
fn truncate_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let store = LogStore::open(&path).unwrap();
        append_sync(&store, (1..=10).map(entry).collect()).unwrap();
        store.truncate_from(8).unwrap();
        store.purge_to(3).unwrap();
        // The mirror changes at once.
        assert_eq!(indexes(&store), vec![4, 5, 6, 7]);
        store.flush().unwrap();
    }
    {
        let store = LogStore::open(&path).unwrap();
        assert_eq!(indexes(&store), vec![4, 5, 6, 7]);
        assert_eq!(store.first_index(), Some(4));
        assert_eq!(store.last().unwrap().0, 7);
        // Purging everything and truncating at 0 leave an empty log.
        store.purge_to(u64::MAX).unwrap();
        assert!(store.is_empty());
        append_sync(&store, vec![entry(20)]).unwrap();
        store.truncate_from(0).unwrap();
        store.close();
        assert!(store.is_empty());
        assert!(matches!(store.truncate_from(1), Err(StoreError::Closed)));
    }
    let store = LogStore::open(&path).unwrap();
    assert!(store.is_empty());
}

#[test]
fn truncate_after_append_is_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let store = LogStore::open(&path).unwrap();
        // No waiting in between: all of these may share one commit, and must
        // still be applied in queue order.
        for round in 0..20u64 {
            store.append(
                (1..=5)
                    .map(|i| (i, format!("r{round}-{i}").into_bytes()))
                    .collect(),
                Box::new(|r| r.unwrap()),
            );
            store.truncate_from(3).unwrap();
        }
        store.append(vec![(3, b"final".to_vec())], Box::new(|r| r.unwrap()));
        store.put_meta("k", Some(b"a".to_vec()), Box::new(|r| r.unwrap()));
        store.put_meta("k", None, Box::new(|r| r.unwrap()));
        store.put_meta("k", Some(b"b".to_vec()), Box::new(|r| r.unwrap()));
        assert_eq!(indexes(&store), vec![1, 2, 3]);
        // Dropping the last handle commits what is queued.
    }
    let store = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&store), vec![1, 2, 3]);
    assert_eq!(&store.get(1).unwrap()[..], b"r19-1");
    assert_eq!(&store.get(3).unwrap()[..], b"final");
    assert_eq!(store.get_meta("k"), Some(b"b".to_vec()));
}

#[test]
fn concurrent_appends_are_group_committed() {
    const THREADS: u64 = 16;
    const PER_THREAD: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let store = LogStore::open(&path).unwrap();
    let before = store.commits();
    let start = Arc::new(Barrier::new(THREADS as usize));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            let start = Arc::clone(&start);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                start.wait();
                for n in 0..PER_THREAD {
                    let i = t * PER_THREAD + n + 1;
                    append_sync(&store, vec![entry(i)]).unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let appends = THREADS * PER_THREAD;
    assert_eq!(done.load(Ordering::SeqCst), appends);
    let commits = store.commits() - before;
    eprintln!("{appends} appends in {commits} commits");
    assert!(commits >= 1);
    assert!(
        commits < appends,
        "group commit expected: {commits} commits for {appends} appends"
    );
    drop(store);

    let store = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&store), (1..=appends).collect::<Vec<_>>());
}

#[test]
fn callbacks_run_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(&dir.path().join("raft.redb")).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 1..=100 {
        let observer = store.clone();
        let tx = tx.clone();
        store.append(
            vec![entry(i)],
            Box::new(move |r| {
                // The commit that made this durable was counted before the callback.
                let _ = tx.send((i, r, observer.commits()));
            }),
        );
    }
    drop(tx);
    let mut seen: Vec<u64> = Vec::new();
    for (i, r, commits) in rx {
        r.unwrap();
        assert!(commits >= 1);
        seen.push(i);
    }
    // Callbacks arrive in queue order.
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());
}

#[test]
fn second_open_of_same_file_fails_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let store = LogStore::open(&path).unwrap();
    let err = LogStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    drop(store);
    LogStore::open(&path).unwrap();
}

#[test]
fn poisoned_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(&dir.path().join("raft.redb")).unwrap();
    // Poisoning is driven by real commit failures; simulate the flag directly
    // to check the refusal path.
    store.shared().lock_queue().poisoned = Some("disk on fire".into());
    assert!(store.is_poisoned());
    let (tx, rx) = mpsc::sync_channel(1);
    store.append(
        vec![entry(1)],
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    assert!(matches!(rx.recv().unwrap(), Err(StoreError::Poisoned(_))));
    assert!(store.is_empty(), "refused append must not reach the mirror");
    assert!(matches!(store.flush(), Err(StoreError::Poisoned(_))));
    assert!(matches!(
        store.put_meta_sync("k", Some(vec![1])),
        Err(StoreError::Poisoned(_))
    ));
    assert_eq!(store.get_meta("k"), None);
}

#[test]
fn panicking_callback_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(&dir.path().join("raft.redb")).unwrap();
    store.append(vec![entry(1)], Box::new(|_| panic!("callback bug")));
    append_sync(&store, vec![entry(2)]).unwrap();
    store.flush().unwrap();
    assert_eq!(indexes(&store), vec![1, 2]);
}

#[test]
fn lazy_meta_rides_along_with_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let store = LogStore::open(&path).unwrap();
        append_sync(&store, vec![entry(1)]).unwrap();
        let before = store.commits();
        store.put_meta_lazy("hint", Some(b"1".to_vec())).unwrap();
        // Visible at once, but no commit of its own.
        assert_eq!(store.get_meta("hint"), Some(b"1".to_vec()));
        thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            store.commits(),
            before,
            "a lazy write alone must not commit"
        );
        // The next append carries it: one commit for both.
        append_sync(&store, vec![entry(2)]).unwrap();
        assert_eq!(store.commits(), before + 1);
        store.put_meta_lazy("hint", Some(b"2".to_vec())).unwrap();
        store.put_meta_lazy("gone", None).unwrap();
        // Dropping the last handle (close) commits the lazy tail.
    }
    let store = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&store), vec![1, 2]);
    assert_eq!(store.get_meta("hint"), Some(b"2".to_vec()));
    store.close();
    assert!(matches!(
        store.put_meta_lazy("hint", Some(b"3".to_vec())),
        Err(StoreError::Closed)
    ));
    assert_eq!(store.get_meta("hint"), Some(b"2".to_vec()));
}

#[test]
fn lazy_meta_is_ordered_with_strict_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let store = LogStore::open(&path).unwrap();
        store.put_meta_lazy("k", Some(b"lazy".to_vec())).unwrap();
        store.put_meta_sync("k", Some(b"strict".to_vec())).unwrap();
        store.put_meta_lazy("k2", Some(b"a".to_vec())).unwrap();
        store.put_meta_sync("k2", None).unwrap();
    }
    let store = LogStore::open(&path).unwrap();
    assert_eq!(store.get_meta("k"), Some(b"strict".to_vec()));
    assert_eq!(store.get_meta("k2"), None);
}
