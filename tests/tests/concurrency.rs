//! The bus processes events concurrently with a bound: a slow action holds one slot, not the
//! stream. Runs the real consumer loop in-process against a real nats-server, with a `log`
//! instance whose action takes long for one message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use riposte::audit::{AuditSink, RecordKind};
use riposte::bus::{self, Processor};
use riposte::clock::{Clock, SystemClock};
use riposte::config::Config;
use riposte::matcher::Matcher;
use riposte::metrics::Metrics;
use riposte::runner::Runner;
use riposte::script::Sandbox;
use riposte::state::KvState;
use riposte_connectors::{ActionSpec, Args, Connector, ConnectorError, Output, Plan};
use riposte_tests::*;
use tokio_util::sync::CancellationToken;

/// `log` actions that take 20 s when the message says "slow".
#[derive(Debug)]
struct SlowOnRequest;

#[async_trait]
impl Connector for SlowOnRequest {
    fn actions(&self) -> &'static [ActionSpec] {
        riposte_connectors::log::ACTIONS
    }
    fn describe(&self, _: &str, _: &Args) -> Result<Plan, ConnectorError> {
        Ok(Plan {
            description: String::new(),
        })
    }
    async fn run(&self, _: &str, args: &Args) -> Result<Output, ConnectorError> {
        if args.get("message").and_then(|m| m.as_str()) == Some("slow") {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        Ok(Output::default())
    }
}

const PLAYBOOK: &str = "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: echo }\nspec:\n  match: { sources: [falco] }\n  steps:\n    - { id: a, action: log.info, with: { message: '${{ event.title }}' }, timeout: 60s }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_action_does_not_hold_up_unrelated_events() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/echo.yaml"), PLAYBOOK);
    let mut config = Config::default_with_bindings();
    config.engine.concurrency = 8;
    config.engine.shutdown_grace = riposte::duration::HumanDuration(Duration::from_secs(1));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sandbox = Sandbox::new(clock.clone());
    let playbooks =
        riposte::engine::load_playbooks(&work.path().join("pb"), &config, &sandbox).unwrap();

    let client = nats.client().await;
    let js = bus::jetstream(client.clone());
    let stream_id = bus::ensure_streams(&js, &config).await.unwrap();
    let state = Arc::new(KvState::open(&js, "riposte", 1).await.unwrap());
    let consumer = bus::ensure_consumer(&js, &config).await.unwrap();
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("log".into(), Arc::new(SlowOnRequest));
    let metrics = Arc::new(Metrics::new());
    let runner = Runner::new(
        sandbox,
        connectors,
        state,
        clock.clone(),
        metrics.clone(),
        riposte::engine::runner_settings(&config, false),
    );
    let processor = Arc::new(Processor {
        audit: AuditSink::JetStream {
            js: Box::new(js.clone()),
            subject: "riposte.audit".into(),
        },
        matcher: Matcher::new(playbooks),
        runner,
        js: js.clone(),
        metrics,
        clock,
        config,
        stream_id,
    });
    let shutdown = CancellationToken::new();
    let consuming = tokio::spawn(bus::consume(processor, consumer, shutdown.clone()));

    let mut alerts = vec![falco_alert("slow-1", "slow", "Critical", "s", "shop")];
    alerts.extend((0..30).map(|i| {
        falco_alert(
            &format!("fast-{i}"),
            "fast",
            "Critical",
            &format!("f{i}"),
            "shop",
        )
    }));
    let started = Instant::now();
    publish(&client, "falco.critical.x", &alerts).await;

    let url = nats.url.clone();
    let records = tokio::task::spawn_blocking(move || {
        wait_for(&url, Duration::from_secs(15), "30 fast runs", |r| {
            r.iter().filter(|x| x.record == RecordKind::Run).count() >= 30
        })
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    let done: Vec<_> = records
        .iter()
        .filter(|r| r.record == RecordKind::Run)
        .collect();
    assert!(
        done.iter().all(|r| r.event_id.as_deref() != Some("slow-1")),
        "the slow run finished first?"
    );
    assert_eq!(
        done.len(),
        30,
        "every fast event ran while the slow one was still running"
    );
    shutdown.cancel();
    // Shutdown waits up to the grace period, then abandons the slow run (it will be redelivered).
    tokio::time::timeout(Duration::from_secs(40), consuming)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
