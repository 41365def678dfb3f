//! `riposte bench table` end to end, shrunk: the real binary starts its own nats-server and its
//! engines as `riposte run` processes, and every row of the table is filled. Figures are the
//! benchmark's to report; this checks only that each one was measured.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use riposte_tests::*;
use serde_json::Value;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} is {x}");
    x
}

#[test]
fn bench_table_measures_every_row() {
    let out = cli(&[
        "bench",
        "table",
        "--events",
        "400",
        "--soak-events",
        "1000",
        "--seconds",
        "1",
        "--rates",
        "200",
        "--replicas",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "bench table failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    positive(&f["raw_consumer_per_sec"], "raw consumer rate");
    positive(&f["io_ceiling_per_sec"], "I/O ceiling");

    let engine = f["engine"].as_array().unwrap();
    let counts: Vec<u64> = engine
        .iter()
        .map(|r| r["playbooks"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 100, 1000]);
    for r in engine {
        positive(&r["per_sec"], "engine rate");
        positive(&r["rss_mib"], "engine memory");
    }

    let replicas = f["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2);
    assert_eq!(replicas[1]["replicas"], 2);
    positive(&replicas[1]["per_sec"], "two replicas' rate");
    assert_eq!(replicas[1]["rss_mib"].as_array().unwrap().len(), 2);

    let latency = f["latency"].as_array().unwrap();
    assert_eq!(latency.len(), 1);
    assert_eq!(latency[0]["offered_per_sec"], 200);
    assert_eq!(
        latency[0]["samples"], latency[0]["published"],
        "every event published at the offered rate got its run record"
    );
    positive(&latency[0]["p99_ms"], "p99");
    positive(&latency[0]["p999_ms"], "p99.9");

    let soak = &f["soak"];
    assert_eq!(soak["events"], 1000);
    let samples = soak["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "before the soak and after its one chunk");
    positive(&soak["max_mib"], "soak memory");

    let goals = &f["goals"];
    positive(&goals["engine_100_over_raw"], "engine / raw");
    positive(&goals["engine_1000_over_100"], "1,000 / 100 playbooks");
    positive(&goals["replicas_gain"], "replica gain");
    positive(
        &goals["rss_1000_playbooks_mib"],
        "memory with 1,000 playbooks",
    );
}
