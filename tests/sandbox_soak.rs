//! 400 sandbox runs, sequential and parallel: correct outputs and flat memory.
//! Its own test binary, so no other test's interpreters inflate the RSS reading.

use cleaner::assets::{self, AssetStore};
use cleaner::sandbox::{Execution, Limits, Sandbox, SandboxConfig};

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[test]
fn many_runs_correct_and_no_leak() {
    let wasm = AssetStore::default()
        .fetch(assets::find("python-wasm").unwrap(), &mut |l| {
            eprintln!("{l}")
        })
        .expect("fetch python-wasm");
    let sandbox = Sandbox::new(SandboxConfig::new(
        wasm,
        cleaner::assets::sandbox_cache_dir(),
    ))
    .expect("sandbox");
    let sb = &sandbox;
    for i in 0..20 {
        sb.run(&format!("print({i} * {i})"), &Limits::default())
            .unwrap();
    }
    let before = rss_mib();
    for i in 0..200u64 {
        let e = sb
            .run(&format!("print({i} * {i})"), &Limits::default())
            .unwrap();
        assert_eq!(e.stdout, format!("{}\n", i * i));
    }
    let results: Vec<(u64, Execution)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                s.spawn(move || {
                    (0..50u64)
                        .map(|k| {
                            let i = t * 1000 + k;
                            (
                                i,
                                sb.run(&format!("print({i} + 1)"), &Limits::default())
                                    .unwrap(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), 200);
    for (i, e) in results {
        assert_eq!(e.stdout, format!("{}\n", i + 1));
    }
    let growth = rss_mib() - before;
    // Each interpreter maps up to 256 MiB that is returned on drop; what may
    // remain is allocator caching, far below one leaked interpreter per run.
    assert!(growth < 150.0, "RSS grew by {growth:.0} MiB over 400 runs");
}
