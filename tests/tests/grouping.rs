//! Notification groups in a real KV bucket: a burst makes one page, later events update it at
//! most every interval, and a run whose remediation completed resolves it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use riposte::audit::AuditSink;
use riposte::clock::{Clock, SystemClock};
use riposte::grouping::{Flusher, GroupSettings, Groups};
use riposte_connectors::{
    ActionSpec, Args, Connector, ConnectorError, Output, ParamSpec, ParamType, Plan,
};
use riposte_tests::NatsServer;
use serde_json::json;

const NOTICE: ParamSpec = ParamSpec {
    name: "notice",
    ty: ParamType::Any,
    required: false,
    description: "the notice",
};
const DEDUP: ParamSpec = ParamSpec {
    name: "dedup_key",
    ty: ParamType::String,
    required: false,
    description: "page identity",
};
static ACTIONS: [ActionSpec; 2] = [
    ActionSpec {
        name: "trigger",
        description: "page",
        params: &[NOTICE, DEDUP],
        destructive: false,
        reversible: false,
        message_param: Some("notice"),
    },
    ActionSpec {
        name: "resolve",
        description: "resolve",
        params: &[DEDUP],
        destructive: false,
        reversible: false,
        message_param: None,
    },
];

/// Records every call; fails the first `busy` ones as a busy service would.
#[derive(Debug, Default)]
struct Pager {
    calls: Mutex<Vec<(String, Args)>>,
    busy: Mutex<u32>,
}

#[async_trait]
impl Connector for Pager {
    fn actions(&self) -> &'static [ActionSpec] {
        &ACTIONS
    }
    fn describe(&self, _: &str, _: &Args) -> Result<Plan, ConnectorError> {
        Ok(Plan {
            description: "page".into(),
        })
    }
    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        self.calls
            .lock()
            .unwrap()
            .push((action.to_owned(), args.clone()));
        let mut busy = self.busy.lock().unwrap();
        if *busy > 0 {
            *busy -= 1;
            return Err(ConnectorError::Transient("answered 503".into()));
        }
        Ok(Output {
            output: json!({ "status": "success" }),
            undo: None,
        })
    }
}

fn notice(run: usize) -> Args {
    json!({ "notice": { "title": "Terminal shell in container", "run_id": format!("r-{run}") } })
        .as_object()
        .cloned()
        .unwrap()
}

async fn tick_until(f: &Flusher, pager: &Pager, calls: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while pager.calls.lock().unwrap().len() < calls {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {calls} call(s), got {:?}",
            pager.calls.lock().unwrap()
        );
        f.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A groups bucket, a pager refusing its first `busy` calls, and a flusher sending to it.
async fn scene(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    settings: GroupSettings,
    busy: u32,
) -> (Groups, Arc<Pager>, Flusher, AuditSink) {
    let groups = Groups::open(js, prefix, 1, settings).await.unwrap();
    let pager = Arc::new(Pager::default());
    *pager.busy.lock().unwrap() = busy;
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("pd".into(), pager.clone());
    let audit = AuditSink::memory();
    let flusher = Flusher {
        groups: groups.clone(),
        connectors: Arc::new(connectors),
        audit: audit.clone(),
        replica: "test".into(),
        clock: Arc::new(SystemClock) as Arc<dyn Clock>,
        timeout: Duration::from_secs(5),
        every: Duration::from_millis(50),
    };
    (groups, pager, flusher, audit)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_pages_once_updates_that_page_and_a_completed_remediation_resolves_it() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let settings = GroupSettings {
        by: vec!["playbook".into(), "workload".into()],
        wait: Duration::from_millis(800),
        interval: Duration::from_millis(1500),
        repeat: Duration::from_secs(3600),
    };
    let (groups, pager, flusher, audit) = scene(&js, "grouping-test", settings, 0).await;
    let clock = flusher.clock.clone();

    // 50 runs at once, as 50 events about one workload would make.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let g = groups.clone();
        let now = clock.now();
        tasks.push(tokio::spawn(async move {
            g.defer(
                "g-web",
                "shell",
                "pd",
                "trigger",
                notice(i),
                &format!("r-{i}"),
                "e",
                false,
                now,
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        flusher.tick().await.unwrap(),
        0,
        "nothing before group_wait"
    );
    tick_until(&flusher, &pager, 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    flusher.tick().await.unwrap();
    {
        let calls = pager.calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "one page for the burst: {calls:?}");
        let (action, args) = &calls[0];
        assert_eq!(action, "trigger");
        assert_eq!(args["dedup_key"], "riposte:g-web");
        assert_eq!(args["notice"]["group"]["events"], 50);
        assert_eq!(args["notice"]["group"]["new_events"], 50);
        assert_eq!(
            args["notice"]["group"]["runs"].as_array().unwrap().len(),
            10
        );
    }

    // Five more: one update of the same page, not before group_interval.
    for i in 50..55 {
        groups
            .defer(
                "g-web",
                "shell",
                "pd",
                "trigger",
                notice(i),
                &format!("r-{i}"),
                "e",
                false,
                clock.now(),
            )
            .await
            .unwrap();
    }
    flusher.tick().await.unwrap();
    assert_eq!(
        pager.calls.lock().unwrap().len(),
        1,
        "no update before the interval"
    );
    tick_until(&flusher, &pager, 2, Duration::from_secs(5)).await;
    {
        let calls = pager.calls.lock().unwrap();
        let (action, args) = &calls[1];
        assert_eq!(action, "trigger");
        assert_eq!(args["dedup_key"], "riposte:g-web");
        assert_eq!(args["notice"]["group"]["events"], 55);
        assert_eq!(args["notice"]["group"]["new_events"], 5);
        assert_eq!(args["notice"]["group"]["sent_before"], 1);
    }

    // A run whose remediation completed resolves the page, after its own update.
    groups
        .defer(
            "g-web",
            "shell",
            "pd",
            "trigger",
            notice(55),
            "r-55",
            "e",
            true,
            clock.now(),
        )
        .await
        .unwrap();
    tick_until(&flusher, &pager, 4, Duration::from_secs(5)).await;
    let calls = pager.calls.lock().unwrap().clone();
    assert_eq!(calls[2].0, "trigger");
    assert_eq!(calls[3].0, "resolve");
    assert_eq!(
        calls[3].1,
        json!({ "dedup_key": "riposte:g-web" })
            .as_object()
            .cloned()
            .unwrap()
    );
    let records = audit.recorded();
    assert_eq!(records.len(), 4, "every notice is audited");
    assert!(records.iter().all(|r| r.outcome == "ok"));
    assert_eq!(records[3].step.as_deref(), Some("group:resolve"));

    // The group is closed: the next event opens a new page, after group_wait.
    groups
        .defer(
            "g-web",
            "shell",
            "pd",
            "trigger",
            notice(56),
            "r-56",
            "e",
            false,
            clock.now(),
        )
        .await
        .unwrap();
    tick_until(&flusher, &pager, 5, Duration::from_secs(5)).await;
    let calls = pager.calls.lock().unwrap();
    assert_eq!(calls[4].1["notice"]["group"]["events"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_the_service_refuses_for_a_while_is_sent_again_and_every_try_is_audited() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let settings = GroupSettings {
        by: vec!["playbook".into()],
        wait: Duration::from_millis(100),
        interval: Duration::from_secs(60),
        repeat: Duration::from_secs(3600),
    };
    let (groups, pager, flusher, audit) = scene(&js, "grouping-retry", settings, 1).await;
    let clock = flusher.clock.clone();
    groups
        .defer(
            "g-busy",
            "shell",
            "pd",
            "trigger",
            notice(0),
            "r-0",
            "e",
            false,
            clock.now(),
        )
        .await
        .unwrap();
    tick_until(&flusher, &pager, 2, Duration::from_secs(10)).await;
    let records = audit.recorded();
    let outcomes: Vec<(&str, Option<u32>)> = records
        .iter()
        .map(|r| (r.outcome.as_str(), r.attempts))
        .collect();
    assert_eq!(outcomes, vec![("retrying", Some(1)), ("ok", Some(2))]);
    assert_eq!(records[0].reason.as_deref(), Some("answered 503"));
}
