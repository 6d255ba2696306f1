//! The compiled-interpreter cache: reused when valid, rebuilt (never loaded)
//! when corrupt or truncated.

use cleaner::assets::{self, AssetStore};
use cleaner::sandbox::{Limits, ModuleSource, Outcome, Sandbox, SandboxConfig};

fn open(cache: &std::path::Path) -> Sandbox {
    let wasm = AssetStore::default()
        .fetch(assets::find("python-wasm").unwrap(), &mut |l| {
            eprintln!("{l}")
        })
        .expect("fetch python-wasm");
    Sandbox::new(SandboxConfig {
        cache_dir: cache.to_path_buf(),
        warm: 0,
        ..SandboxConfig::new(wasm, cleaner::assets::sandbox_cache_dir())
    })
    .expect("sandbox")
}

fn works(sb: &Sandbox) {
    let e = sb.run("print(sum(range(5)))", &Limits::default()).unwrap();
    assert_eq!((e.outcome, e.stdout.as_str()), (Outcome::Ok, "10\n"));
}

fn cache_file(dir: &std::path::Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn cache_is_reused_and_corruption_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let sb = open(dir.path());
    assert_eq!(sb.module_load().0, ModuleSource::Compiled);
    works(&sb);
    drop(sb);

    let sb = open(dir.path());
    assert_eq!(sb.module_load().0, ModuleSource::Cache);
    works(&sb);
    drop(sb);

    // Flip one byte in the middle of the payload.
    let path = cache_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let sb = open(dir.path());
    assert_eq!(
        sb.module_load().0,
        ModuleSource::Compiled,
        "a corrupt cache entry was loaded"
    );
    works(&sb);
    drop(sb);

    // Truncate it.
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let sb = open(dir.path());
    assert_eq!(
        sb.module_load().0,
        ModuleSource::Compiled,
        "a truncated cache entry was loaded"
    );
    works(&sb);
    drop(sb);
    assert_eq!(
        open(dir.path()).module_load().0,
        ModuleSource::Cache,
        "the rebuilt entry is reused"
    );
}

#[test]
fn bad_limits_and_missing_interpreter_are_clear_errors() {
    let e = Sandbox::new(SandboxConfig::new(
        "/nonexistent/python.wasm",
        cleaner::assets::sandbox_cache_dir(),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("/nonexistent/python.wasm"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let e = Sandbox::new(SandboxConfig {
        cache_dir: dir.path().into(),
        ..SandboxConfig::new(&junk, cleaner::assets::sandbox_cache_dir())
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("compiling"), "{e}");

    let sb = open(tempfile::tempdir().unwrap().path());
    let bad = Limits {
        timeout: std::time::Duration::ZERO,
        ..Limits::default()
    };
    assert!(sb
        .run("print(1)", &bad)
        .err()
        .unwrap()
        .to_string()
        .contains("timeout"));
    let bad = Limits {
        memory_bytes: 1 << 20,
        ..Limits::default()
    };
    assert!(sb
        .run("print(1)", &bad)
        .err()
        .unwrap()
        .to_string()
        .contains("memory_bytes"));
}
