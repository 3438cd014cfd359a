//! Dead-letter stores: the in-memory queue and the embedded redb file keep the same contract; the file
//! survives restarts and SIGKILL, refuses what is not its own with an error naming the path, and keeps
//! letters that no longer decode.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::stores::{letter, store_contract};
use tower_listener::dead_letter::{DeadLetterStore, LetterFilter, LetterId};
use tower_listener::{DeadLetterQueue, DeadLetterReason, Error, Event};

#[tokio::test]
async fn the_in_memory_queue_keeps_the_store_contract() {
    store_contract(&DeadLetterQueue::<Event>::new(100)).await;
}

#[cfg(feature = "redb")]
mod redb_store {
    use super::*;
    use tower_listener::{RedbConfig, RedbStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redb_store_keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("letters.redb"))
            .await
            .unwrap();
        store_contract(&store).await;
        // One letter per transaction (no group commit) keeps it too.
        let single = RedbStore::open_with(
            dir.path().join("single.redb"),
            RedbConfig {
                max_batch: 1,
                ..RedbConfig::default()
            },
        )
        .await
        .unwrap();
        store_contract(&single).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn letters_survive_a_restart_and_ids_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("letters.redb");
        let store = RedbStore::open(&path).await.unwrap();
        let first = DeadLetterStore::<Value>::append(
            &store,
            letter("a", "orders", DeadLetterReason::Exhausted, 10),
        )
        .await
        .unwrap();
        // The file is locked while open: a second opening says so, naming the path.
        let again = RedbStore::open(&path).await.unwrap_err();
        assert!(matches!(again, Error::Backend { .. }), "{again:?}");
        assert!(again.to_string().contains("letters.redb"), "{again}");
        drop(store);

        let store = RedbStore::open(&path).await.unwrap();
        let stored = DeadLetterStore::<Value>::get(&store, first.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.decoded().unwrap().request.id(), "a");
        let second = DeadLetterStore::<Value>::append(
            &store,
            letter("b", "orders", DeadLetterReason::Exhausted, 20),
        )
        .await
        .unwrap();
        let n = |id: &LetterId| id.as_str().parse::<u64>().unwrap();
        assert!(n(&second) > n(&first), "{first} then {second}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits_and_each_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("letters.redb"))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for i in 0..20 {
                        let id = DeadLetterStore::<Value>::append(
                            &store,
                            letter(
                                &format!("t{t}-{i}"),
                                "orders",
                                DeadLetterReason::Exhausted,
                                5,
                            ),
                        )
                        .await
                        .unwrap();
                        ids.push((id, format!("t{t}-{i}")));
                    }
                    ids
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        assert_eq!(
            DeadLetterStore::<Value>::count(&store, LetterFilter::all())
                .await
                .unwrap(),
            1280
        );
        for (id, event) in all.iter().step_by(37) {
            let stored = DeadLetterStore::<Value>::get(&store, id.clone())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored.decoded().unwrap().request.id(), event);
        }
    }

    /// Bytes that are not a store of ours: each gives an error naming the path when opened, and nothing
    /// panics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_or_foreign_file_is_refused_naming_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(20261201);

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "dead letters, by hand\n".repeat(200)).unwrap();
        let mut files = vec![text];
        for size in [17, 512, 4096, 70_000] {
            let path = dir.path().join(format!("random-{size}.redb"));
            let bytes: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
            std::fs::write(&path, bytes).unwrap();
            files.push(path);
        }
        // A redb database of another program.
        let foreign = dir.path().join("foreign.redb");
        {
            let db = redb::Database::create(&foreign).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let table: redb::TableDefinition<&str, u64> =
                    redb::TableDefinition::new("sessions");
                let mut table = txn.open_table(table).unwrap();
                table.insert("alice", 1).unwrap();
            }
            txn.commit().unwrap();
        }
        files.push(foreign.clone());
        for path in &files {
            match RedbStore::open(path).await {
                Err(error @ Error::Backend { .. }) => {
                    let name = path.file_name().unwrap().to_str().unwrap();
                    assert!(error.to_string().contains(name), "{error}");
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let error = RedbStore::open(&foreign).await.unwrap_err().to_string();
        assert!(
            error.contains("not a tower-listener dead-letter store"),
            "{error}"
        );
        assert!(error.contains("sessions"), "{error}");

        // A store of ours, damaged in places: it opens (repaired) or is refused, never a panic, and
        // what it still lists reads back.
        let ours = dir.path().join("damaged.redb");
        {
            let store = RedbStore::open(&ours).await.unwrap();
            for i in 0..200 {
                DeadLetterStore::<Value>::append(
                    &store,
                    letter(&format!("d{i}"), "orders", DeadLetterReason::Exhausted, i),
                )
                .await
                .unwrap();
            }
        }
        let clean = std::fs::read(&ours).unwrap();
        for trial in 0..8 {
            let mut bytes = clean.clone();
            for _ in 0..16 {
                let at = rng.usize(..bytes.len());
                bytes[at] ^= rng.u8(1..);
            }
            if trial % 2 == 1 {
                bytes.truncate(rng.usize(1..bytes.len()));
            }
            std::fs::write(&ours, &bytes).unwrap();
            if let Ok(store) = RedbStore::open(&ours).await {
                // Reading a damaged page is an error, not a panic.
                let _ =
                    DeadLetterStore::<Value>::list(&store, LetterFilter::all(), None, 1000).await;
                let _ = DeadLetterStore::<Value>::count(&store, LetterFilter::all()).await;
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: String,
        total: u64,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_letter_that_no_longer_decodes_is_listed_with_its_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("letters.redb");
        let store = RedbStore::open(&path).await.unwrap();
        // Two letters that are Orders, one whose payload is not (it was written by an older version).
        for (id, data) in [
            ("good-1", serde_json::json!({"id": "good-1", "total": 3})),
            ("old-1", serde_json::json!({"id": "old-1", "sum": "3.00"})),
            ("good-2", serde_json::json!({"id": "good-2", "total": 4})),
        ] {
            let mut l = letter(id, "orders", DeadLetterReason::Exhausted, 100);
            l.request = Event::new(id, "order.created", data);
            DeadLetterStore::<Value>::append(&store, l).await.unwrap();
        }
        drop(store);
        // Bytes that are not JSON at all, written behind the store's back.
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let table: redb::TableDefinition<u64, &[u8]> =
                    redb::TableDefinition::new("tower_listener_letters");
                let mut table = txn.open_table(table).unwrap();
                table.insert(99, b"\x00\x01 not json".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }

        let store = RedbStore::open(&path).await.unwrap();
        let page = DeadLetterStore::<Order>::list(&store, LetterFilter::all(), None, 10)
            .await
            .unwrap();
        assert_eq!(page.letters.len(), 4, "nothing dropped");
        assert_eq!(page.letters[0].decoded().unwrap().request.data().total, 3);
        let old = page.letters[1].letter.as_ref().unwrap_err();
        assert!(String::from_utf8_lossy(&old.raw).contains("\"sum\":\"3.00\""));
        assert!(old.error.contains("total"), "{}", old.error);
        assert_eq!(
            (old.listener.as_deref(), old.reason),
            (Some("orders"), Some(DeadLetterReason::Exhausted))
        );
        let garbage = page.letters[3].letter.as_ref().unwrap_err();
        assert_eq!(garbage.raw, b"\x00\x01 not json");
        assert_eq!(garbage.listener, None);
        // A filter sees the undecodable letter by what could be read of it; the garbage only unfiltered.
        let orders =
            DeadLetterStore::<Order>::count(&store, LetterFilter::all().listener("orders"))
                .await
                .unwrap();
        assert_eq!(orders, 3);
        // It can still be deleted by id.
        assert!(
            DeadLetterStore::<Order>::delete(&store, page.letters[3].id.clone())
                .await
                .unwrap()
        );
    }

    /// The child side of the crash test: appends letters from 8 tasks, printing each id once its append
    /// has returned, until it is killed. Does nothing unless the parent set the variable.
    #[test]
    fn crash_child() {
        let Ok(path) = std::env::var("TOWER_LISTENER_CRASH_CHILD") else {
            return;
        };
        support::child_runtime().block_on(async move {
            let store = RedbStore::open(&path).await.unwrap();
            let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let (store, out) = (store.clone(), out.clone());
                    tokio::spawn(async move {
                        for i in 0u64.. {
                            let event = format!("c{}-{t}-{i}", std::process::id());
                            let id = DeadLetterStore::<Value>::append(
                                &store,
                                letter(&event, "orders", DeadLetterReason::Exhausted, i),
                            )
                            .await
                            .unwrap();
                            let mut out = out.lock().unwrap();
                            writeln!(out, "ok {id} {event}").unwrap();
                            out.flush().unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_append_that_returned_survives_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20261201u64);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut acked_total = 0;
        for trial in 0..24 {
            let kill_after = rng.usize(1..300);
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "redb_store::crash_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("TOWER_LISTENER_CRASH_CHILD", &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut acked = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut parts = line.split_whitespace();
                    if parts.next() == Some("ok") {
                        let id = parts.next().unwrap().to_owned();
                        let event = parts.next().unwrap().to_owned();
                        acked.push((id, event));
                    }
                }
                acked
            });
            // Kill it after a random number of acknowledged appends (or a random time, whichever
            // first), so the kill lands mid-commit as often as between commits.
            let deadline = std::time::Instant::now() + Duration::from_millis(rng.u64(20..400));
            loop {
                tokio::time::sleep(Duration::from_millis(rng.u64(1..5))).await;
                if std::time::Instant::now() >= deadline || rng.usize(..kill_after) == 0 {
                    break;
                }
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let acked = reader.join().unwrap();
            acked_total += acked.len();

            let store = RedbStore::open(&path)
                .await
                .unwrap_or_else(|e| panic!("trial {trial} (seed {seed}): {e}"));
            for (id, event) in &acked {
                let stored = DeadLetterStore::<Value>::get(&store, LetterId::new(id.as_str()))
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("trial {trial} (seed {seed}): letter {id} lost"));
                let letter = stored.decoded().expect("intact");
                assert_eq!(letter.request.id(), event);
                assert_eq!(letter.request.data()["id"], event.as_str());
            }
        }
        eprintln!("{acked_total} acknowledged appends over 24 kills, all found intact");
        assert!(
            acked_total > 24,
            "the children acknowledged appends: {acked_total}"
        );
    }
}
