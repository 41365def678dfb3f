//! Shared state under contention, against a real nats-server: every replica's concurrent runs
//! take slots of the same global limit.

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
