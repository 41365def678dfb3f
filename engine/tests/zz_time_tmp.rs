#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
use riposte::event::Source;
use riposte::formats::normalize;
#[test]
fn t() {
    let received = chrono::Utc::now();
    for n in [1000usize, 5_000, 20_000] {
    let inputs = vec![
        ("deep_yaml", format!("a: {}1{}", "[".repeat(n), "]".repeat(n))),
        ("dash", format!("{}1", "- ".repeat(n))),
        ("qm", format!("{}1", "? ".repeat(n))),
        ("brace", format!("{}", "{a: ".repeat(n))),
    ];
    for (name, input) in inputs {
        for f in [Source::Trivy] {
            let t = std::time::Instant::now();
            let r = normalize(f, input.as_bytes(), received);
            println!("{n} {name} {f} {:?} {:?}", t.elapsed(), r.err().map(|e| e.to_string().chars().take(100).collect::<String>()));
        }
    }
    }
    let t = std::time::Instant::now();
    let n=20000; let s = format!("a: {}1{}", "[".repeat(n), "]".repeat(n));
    let mut p = serde_yaml::Deserializer::from_str(&s);
    let _ = p.next().map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).err().map(|e| e.to_string()));
    println!("raw serde_yaml::Value {:?}", t.elapsed());
}
