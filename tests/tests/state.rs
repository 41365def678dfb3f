//! Shared state against a real nats-server: every replica's concurrent runs take slots of the
//! same global limit, and the background workers' one-pass scan of a bucket sees exactly its
//! live keys.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use riposte::state::{KvState, StateStore};
use riposte_tests::NatsServer;

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_takers_of_one_limit_all_get_an_answer_and_the_limit_holds() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let state = Arc::new(KvState::open(&js, "contention", 1).await.unwrap());
    let now = chrono::Utc::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let s = state.clone();
        tasks.push(tokio::spawn(async move {
            s.take_slot("global.destructive", 60, Duration::from_secs(3600), now)
                .await
        }));
    }
    let mut granted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(true) => granted += 1,
            Ok(false) => {}
            Err(e) => panic!("a taker got no answer: {e}"),
        }
    }
    assert_eq!(granted, 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_of_a_bucket_gives_the_latest_value_of_each_live_key_in_key_order() {
    use async_nats::jetstream::kv;
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let store = js
        .create_key_value(kv::Config {
            bucket: "scan".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let scan = || riposte_connectors::kvscan::latest(&store);
    assert!(scan().await.unwrap().is_empty(), "an empty bucket");

    for i in (0..600).rev() {
        store
            .put(format!("k{i:04}"), format!("{{\"v\":{i}}}").into())
            .await
            .unwrap();
    }
    let updated = store.put("k0007", "{\"v\":\"new\"}".into()).await.unwrap();
    store.delete("k0001").await.unwrap();
    store.purge("k0002").await.unwrap();
    let all = scan().await.unwrap();
    assert_eq!(all.len(), 598);
    let keys: Vec<&String> = all.keys().collect();
    assert_eq!(keys[0], "k0000");
    assert_eq!(keys[1], "k0003", "deleted and purged keys are left out");
    assert_eq!(
        all["k0007"],
        (bytes::Bytes::from("{\"v\":\"new\"}"), updated)
    );
    assert_eq!(all["k0599"].0, bytes::Bytes::from("{\"v\":599}"));

    // Typed, as the reverts, approvals and notification groups read their buckets.
    store.put("k0008", "not json".into()).await.unwrap();
    let typed: Vec<(serde_json::Value, u64)> = riposte::state::json_entries(&store).await.unwrap();
    assert_eq!(typed.len(), 597, "a value that does not decode is left out");
    assert_eq!(typed[0].0, serde_json::json!({"v": 0}));

    for key in all.keys() {
        store.delete(key).await.unwrap();
    }
    store.delete("k0008").await.unwrap();
    assert!(scan().await.unwrap().is_empty(), "every key deleted");
}
