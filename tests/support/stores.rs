//! The contract every dead-letter store keeps, as one function each store's test calls, and letters to
//! feed it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
use tower_listener::{DeadLetter, DeadLetterReason, Error, Event};

/// A letter of event `id` for `listener`, dead-lettered at `secs` after the epoch.
pub fn letter(id: &str, listener: &str, reason: DeadLetterReason, secs: u64) -> DeadLetter<Event> {
    let event = Event::new(id, "order.created", json!({"id": id, "total": secs}))
        .with_metadata("tenant", "acme")
        .with_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
    let mut letter = DeadLetter::new(
        event,
        Error::handler(std::io::Error::other(format!("{id} failed"))),
        listener,
        3,
        reason,
    );
    letter.first_failure_at = UNIX_EPOCH + Duration::new(secs, 1);
    letter.dead_lettered_at = UNIX_EPOCH + Duration::new(secs, 123_456_789);
    letter
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Every operation of the store trait, on an empty store.
pub async fn store_contract<S: DeadLetterStore<Value>>(store: &S) {
    assert_eq!(store.count(LetterFilter::all()).await.unwrap(), 0);
    assert_eq!(store.oldest().await.unwrap(), None);
    let empty = store.list(LetterFilter::all(), None, 10).await.unwrap();
    assert!(empty.letters.is_empty() && empty.next.is_none());

    let written = [
        letter("e1", "orders", DeadLetterReason::Exhausted, 1_000),
        letter("e2", "payments", DeadLetterReason::CircuitOpen, 1_010),
        letter("e3", "orders", DeadLetterReason::Permanent, 1_020),
        letter("e4", "orders", DeadLetterReason::Exhausted, 1_030),
        letter("e5", "payments", DeadLetterReason::Exhausted, 1_040),
    ];
    let mut ids = Vec::new();
    for letter in &written {
        ids.push(store.append(letter.clone()).await.unwrap());
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 5, "ids are distinct: {ids:?}");

    // Each reads back exactly as written.
    for (id, letter) in ids.iter().zip(&written) {
        let stored = store.get(id.clone()).await.unwrap().expect("stored");
        assert_eq!(&stored.id, id);
        let back = stored.decoded().expect("decodes");
        assert_eq!(back, letter);
        assert_eq!(back.request.timestamp(), letter.request.timestamp());
        assert_eq!(back.error.chain, letter.error.chain);
    }

    // Pages of two, oldest first, resumed by cursor.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.list(LetterFilter::all(), cursor, 2).await.unwrap();
        pages += 1;
        assert!(page.letters.len() <= 2);
        seen.extend(page.letters.iter().map(|l| l.id.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every letter once, in order");
    assert_eq!(pages, 3);

    // Filters: by listener, by reason, by time range; counts agree with listings.
    let filters = [
        (LetterFilter::all().listener("orders"), vec![0, 2, 3]),
        (
            LetterFilter::all().reason(DeadLetterReason::Exhausted),
            vec![0, 3, 4],
        ),
        (
            LetterFilter::all()
                .listener("payments")
                .reason(DeadLetterReason::Exhausted),
            vec![4],
        ),
        (
            LetterFilter::all().since(at(1_010)).until(at(1_031)),
            vec![1, 2, 3],
        ),
        (LetterFilter::all().listener("nobody"), vec![]),
    ];
    for (filter, expected) in filters {
        let page = store.list(filter.clone(), None, 100).await.unwrap();
        let got: Vec<_> = page.letters.iter().map(|l| l.id.clone()).collect();
        let want: Vec<_> = expected.iter().map(|&i| ids[i].clone()).collect();
        assert_eq!(got, want, "{filter:?}");
        assert_eq!(store.count(filter).await.unwrap(), want.len() as u64);
        assert!(page.next.is_none());
    }
    let first_of_orders = store
        .list(LetterFilter::all().listener("orders"), None, 1)
        .await
        .unwrap();
    let rest = store
        .list(
            LetterFilter::all().listener("orders"),
            first_of_orders.next,
            10,
        )
        .await
        .unwrap();
    let rest: Vec<_> = rest.letters.iter().map(|l| l.id.clone()).collect();
    assert_eq!(
        rest,
        [ids[2].clone(), ids[3].clone()],
        "a filtered listing resumes"
    );

    assert_eq!(
        store.oldest().await.unwrap(),
        Some(written[0].dead_lettered_at)
    );

    // Replace: the letter under that id (or its new id) carries the update.
    let mut updated = written[1].clone();
    updated.attempts += 2;
    updated.error = Error::Timeout { limit: None }.into();
    let new_id = store
        .replace(ids[1].clone(), updated.clone())
        .await
        .unwrap();
    let stored = store.get(new_id.clone()).await.unwrap().unwrap();
    assert_eq!(stored.decoded().unwrap(), &updated);
    if new_id != ids[1] {
        assert!(store.get(ids[1].clone()).await.unwrap().is_none());
    }
    assert_eq!(store.count(LetterFilter::all()).await.unwrap(), 5);

    // Delete: once.
    assert!(store.delete(ids[0].clone()).await.unwrap());
    assert!(!store.delete(ids[0].clone()).await.unwrap());
    assert!(store.get(ids[0].clone()).await.unwrap().is_none());
    assert_eq!(store.count(LetterFilter::all()).await.unwrap(), 4);
    assert_eq!(
        store.oldest().await.unwrap(),
        Some(written[1].dead_lettered_at)
    );

    // Claims: one holder at a time.
    let claim = store.claim(&ids[2]).expect("free");
    assert!(store.claim(&ids[2]).is_none());
    assert!(store.claim(&ids[3]).is_some());
    drop(claim);
    assert!(store.claim(&ids[2]).is_some());

    // A cursor from elsewhere is refused, not misread.
    assert!(store
        .list(
            LetterFilter::all(),
            Some(tower_listener::dead_letter::Cursor::new("not-a-cursor")),
            10
        )
        .await
        .is_err());

    // A store is a sink: a letter sent through the sink is stored.
    let sink: &dyn tower_listener::DeadLetterSink<Event> = store;
    sink.send(letter("e6", "orders", DeadLetterReason::Shutdown, 1_050))
        .await
        .unwrap();
    assert_eq!(
        store
            .count(LetterFilter::all().reason(DeadLetterReason::Shutdown))
            .await
            .unwrap(),
        1
    );
}
