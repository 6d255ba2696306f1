//! The sandbox against adversarial code: every case asserts the outcome and
//! that the host process and the next call are unaffected.

mod common;
use common::sandbox;

use std::time::{Duration, Instant};

use cleaner::sandbox::{ErrorClass, Execution, Limits, Outcome};

fn limits(timeout_s: f64) -> Limits {
    Limits {
        timeout: Duration::from_secs_f64(timeout_s),
        ..Limits::default()
    }
}

fn run(code: &str) -> Execution {
    run_with(code, &Limits::default())
}

fn run_with(code: &str, l: &Limits) -> Execution {
    let e = sandbox().run(code, l).expect("sandbox run");
    // The next call is unaffected.
    let after = sandbox()
        .run("print(6 * 7)", &Limits::default())
        .expect("follow-up run");
    assert_eq!(
        after.outcome,
        Outcome::Ok,
        "follow-up after {code:?}: {after:?}"
    );
    assert_eq!(after.stdout, "42\n");
    e
}

fn assert_error(e: &Execution, class: ErrorClass, exception: &str) {
    match &e.outcome {
        Outcome::Error {
            class: c,
            exception: x,
        } => {
            assert_eq!((*c, x.as_str()), (class, exception), "{e:?}");
        }
        other => panic!("expected {exception}, got {other:?}\nstderr: {}", e.stderr),
    }
}

#[test]
fn prints_and_exits_cleanly() {
    let e = run("x = sum(range(10))\nprint('sum', x)");
    assert_eq!(e.outcome, Outcome::Ok);
    assert_eq!(e.stdout, "sum 45\n");
    assert_eq!(e.exit_code, Some(0));
}

#[test]
fn infinite_loop_times_out() {
    let t0 = Instant::now();
    let e = run_with("while True:\n    pass", &limits(1.0));
    assert_eq!(e.outcome, Outcome::Timeout, "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn loops_inside_c_code_time_out() {
    // Seconds without a bytecode boundary: the stop check has to sit in the
    // interpreter's compiled C loops (big-int power, regex backtracking).
    for code in [
        "x = 10 ** (10 ** 8)",
        "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')",
    ] {
        let e = run_with(code, &limits(1.0));
        assert_eq!(e.outcome, Outcome::Timeout, "{code}: {e:?}");
        assert!(
            e.wall < Duration::from_secs(2),
            "{code}: stopped only after {:?}",
            e.wall
        );
    }
}

#[test]
fn many_stops_leave_the_host_process_healthy() {
    // Each stop ends a guest in the middle of its work (writing output,
    // growing memory). None may leave a lock of the host process held: a
    // thread started afterwards registers its thread-local destructors
    // under glibc's loader lock and would block forever, as it did when
    // stops were signals (see engine/src/sandbox/stop.rs).
    let l = Limits {
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    for i in 0..30 {
        let code = if i % 2 == 0 {
            "while True:\n    print('spam')"
        } else {
            "d = {}\nwhile True:\n    d[len(d)] = str(len(d)) * 10"
        };
        let e = run_with(code, &l);
        assert!(
            matches!(
                e.outcome,
                Outcome::Timeout | Outcome::OutputLimit | Outcome::MemoryLimit
            ),
            "stop {i}: {e:?}"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            thread_local!(static SLOT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
            SLOT.with(|s| s.borrow_mut().push(1));
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no new thread could start after stop {i}"));
    }
}

#[test]
fn sleep_times_out() {
    let t0 = Instant::now();
    let e = run_with(
        "import time\nprint('before', flush=True)\ntime.sleep(10**6)",
        &limits(1.0),
    );
    assert_eq!(e.outcome, Outcome::Timeout, "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(e.stdout, "before\n");
}

#[test]
fn huge_allocation_hits_the_memory_cap() {
    let e = run("b = bytearray(10**9)");
    assert_eq!(e.outcome, Outcome::MemoryLimit, "{e:?}");
}

#[test]
fn slow_memory_growth_hits_the_memory_cap() {
    let e = run_with(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(4 * 10**6))",
        &limits(20.0),
    );
    assert_eq!(e.outcome, Outcome::MemoryLimit, "{e:?}");
}

#[test]
fn deep_recursion_is_a_recursion_error() {
    let e = run_with("def f(n):\n    return f(n + 1)\nf(0)", &limits(20.0));
    assert_error(&e, ErrorClass::Other, "RecursionError");
}

#[test]
fn huge_output_is_cut() {
    let e = run("print('x' * 10**7)");
    assert_eq!(e.outcome, Outcome::OutputLimit, "{e:?}");
    assert!(e.stdout_truncated && e.stdout.len() <= Limits::default().output_bytes);
    let e = run_with("while True:\n    print('spam')", &limits(10.0));
    assert_eq!(e.outcome, Outcome::OutputLimit, "{e:?}");
}

#[test]
fn no_processes() {
    let e = run("import os\nos.system('ls')");
    assert!(!e.outcome.is_ok() && e.outcome != Outcome::Timeout, "{e:?}");
    let e = run("import os\nos.fork()");
    assert!(!e.outcome.is_ok() && e.outcome != Outcome::Timeout, "{e:?}");
    let e = run_with("import subprocess\nsubprocess.run(['ls'])", &limits(4.0));
    assert!(!e.outcome.is_ok() && e.outcome != Outcome::Timeout, "{e:?}");
}

#[test]
fn no_threads() {
    let e = run("import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()");
    assert_error(&e, ErrorClass::Other, "RuntimeError");
}

#[test]
fn network_modules_import_without_hanging() {
    for m in ["socket", "selectors", "asyncio"] {
        let e = run_with(&format!("import {m}\nprint('ok')"), &limits(4.0));
        assert_eq!(e.outcome, Outcome::Ok, "import {m}: {e:?}");
        assert_eq!(e.stdout, "ok\n");
    }
}

#[test]
fn no_network() {
    let e = run("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 80))");
    assert!(matches!(e.outcome, Outcome::Error { .. }), "{e:?}");
    let e = run("import socket\nsocket.create_connection(('example.com', 80), timeout=1)");
    assert!(matches!(e.outcome, Outcome::Error { .. }), "{e:?}");
}

#[test]
fn no_host_files() {
    for path in [
        "/etc/passwd",
        "../../../etc/passwd",
        "/proc/self/environ",
        "/root/.bashrc",
    ] {
        let e = run(&format!("print(open({path:?}).read())"));
        assert!(matches!(e.outcome, Outcome::Error { .. }), "{path}: {e:?}");
        assert!(!e.stdout.contains("root:"), "{path} leaked");
    }
    let e = run("import os\nos.symlink('/etc/passwd', 'link')\nprint(open('link').read())");
    assert!(matches!(e.outcome, Outcome::Error { .. }), "{e:?}");
    assert!(!e.stdout.contains("root:"));
}

#[test]
fn scratch_is_the_only_writable_place() {
    let e = run("open('notes.txt', 'w').write('hello')\nprint(open('/tmp/notes.txt').read())");
    assert_eq!(e.outcome, Outcome::Ok, "{e:?}");
    assert_eq!(e.stdout, "hello\n");
    for path in ["/x.txt", "/etc/x.txt", "/usr/local/lib/x.txt"] {
        let e = run(&format!("open({path:?}, 'w').write('x')"));
        assert!(matches!(e.outcome, Outcome::Error { .. }), "{path}: {e:?}");
    }
    // Stateless: the file is gone in the next call.
    let e = run("import os\nprint(os.path.exists('/tmp/notes.txt'))");
    assert_eq!(e.stdout, "False\n");
}

#[test]
fn scratch_quota_holds() {
    let e = run("f = open('big', 'wb')\nfor _ in range(40):\n    f.write(b'x' * 10**6)\nf.close()");
    assert!(matches!(e.outcome, Outcome::Error { .. }), "{e:?}");
}

#[test]
fn a_full_scratch_dir_is_no_space_left_on_device() {
    // Past the quota a write fails the way a full disk fails (ENOSPC, not EIO),
    // so code that handles a full disk works here too.
    let fill = "f = open('big', 'wb')\nfor _ in range(40):\n    f.write(b'x' * 10**6)";
    let e = run(fill);
    assert_error(&e, ErrorClass::Other, "OSError");
    assert!(
        e.stderr.contains("No space left on device") && !e.stderr.contains("I/O error"),
        "{}",
        e.stderr
    );
    // Handled like ENOSPC anywhere: the errno matches, and deleting the file
    // frees its space for the next write.
    let e = run(r#"import errno, os
f = open('big', 'wb')
try:
    for _ in range(40):
        f.write(b'x' * 10**6)
except OSError as err:
    print(err.errno == errno.ENOSPC, err.strerror)
try:
    f.close()
except OSError:
    pass
os.remove('big')
open('small', 'wb').write(b'y' * 10**6)
print('written')"#);
    assert_eq!(e.outcome, Outcome::Ok, "{e:?}");
    assert_eq!(e.stdout, "True No space left on device\nwritten\n");
}

#[test]
fn deleting_the_scratch_dir_is_harmless() {
    let e = run("import os, shutil\nos.chdir('/')\nshutil.rmtree('/tmp')\nprint('gone')");
    assert!(e.outcome != Outcome::Timeout, "{e:?}");
}

#[test]
fn exits() {
    let e = run("import sys\nprint('a')\nsys.exit(3)");
    assert_error(&e, ErrorClass::Other, "exit status 3");
    assert_eq!(e.exit_code, Some(3));
    assert_eq!(run("import sys\nsys.exit(0)").outcome, Outcome::Ok);
    let e = run("import os\nos._exit(5)");
    assert_eq!(e.exit_code, Some(5));
}

#[test]
fn error_classes() {
    assert_error(
        &run("x = (1,\nprint(x"),
        ErrorClass::SyntaxError,
        "SyntaxError",
    );
    assert_error(
        &run("print(undefined_name)"),
        ErrorClass::NameError,
        "NameError",
    );
    assert_error(
        &run("import numpy"),
        ErrorClass::ImportError,
        "ModuleNotFoundError",
    );
    assert_error(
        &run("print(1 / 0)"),
        ErrorClass::ZeroDivisionError,
        "ZeroDivisionError",
    );
    assert_error(
        &run("if True:\nprint(1)"),
        ErrorClass::IndentationError,
        "IndentationError",
    );
    assert_error(&run("[][3]"), ErrorClass::IndexError, "IndexError");
    assert_error(&run("int('x')"), ErrorClass::ValueError, "ValueError");
    assert_error(&run("1 + 'a'"), ErrorClass::TypeError, "TypeError");
    assert_error(
        &run("raise NotImplementedError"),
        ErrorClass::NotImplementedError,
        "NotImplementedError",
    );
    let e = run("print(1 / 0)");
    assert!(
        e.stderr.starts_with(
            "Traceback (most recent call last):\n  File \"<code>\", line 1, in <module>\n"
        ),
        "{}",
        e.stderr
    );
    // As `python script.py` reports it: no traceback header, no bootstrap frames.
    let e = run("x = (1,\nprint(x");
    assert!(
        e.stderr.starts_with("  File \"<code>\", line "),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("<string>"), "{}", e.stderr);
}

#[test]
fn non_utf8_output() {
    let e = run("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok\\n')");
    assert_eq!(e.outcome, Outcome::Ok, "{e:?}");
    assert!(
        e.stdout.ends_with(" ok\n") && e.stdout.contains('\u{fffd}'),
        "{:?}",
        e.stdout
    );
}

#[test]
fn clean_environment_and_seeded_randomness() {
    let e = run("import os\nprint(sorted(os.environ))");
    assert_eq!(
        e.stdout, "['HOME', 'PYTHONDONTWRITEBYTECODE', 'PYTHONHASHSEED', 'PYTHONIOENCODING']\n",
        "{e:?}"
    );
    let code = "import random, os\nprint(random.random(), os.urandom(4).hex())";
    let a = run_with(
        code,
        &Limits {
            seed: 1,
            ..Limits::default()
        },
    );
    let b = run_with(
        code,
        &Limits {
            seed: 1,
            ..Limits::default()
        },
    );
    let c = run_with(
        code,
        &Limits {
            seed: 2,
            ..Limits::default()
        },
    );
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
}

#[test]
fn stdlib_math_works() {
    let e = run("from fractions import Fraction\nimport math, statistics, itertools, json, decimal\nprint(Fraction(1, 3) + Fraction(1, 6), math.comb(10, 3), statistics.mean([1, 2, 3]))");
    assert_eq!(e.outcome, Outcome::Ok, "{e:?}");
    assert_eq!(e.stdout, "1/2 120 2\n");
}

#[test]
fn per_call_memory_limit() {
    let code = "b = bytearray(100 * 10**6)\nprint(len(b))";
    let small = run_with(
        code,
        &Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
    );
    assert_eq!(small.outcome, Outcome::MemoryLimit, "{small:?}");
    let default = run(code);
    assert_eq!(default.outcome, Outcome::Ok, "{default:?}");
    assert_eq!(default.stdout, "100000000\n");
}
