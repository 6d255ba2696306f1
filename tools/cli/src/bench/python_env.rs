//! The Python a bench's baseline runs in. By default a virtual environment in
//! the cache (`~/.cache/cleaner/venv-numpy`, `venv-torch`), made on first use
//! with `python3 -m venv` and pinned versions from PyPI, the way `fetch`
//! makes the assets; `--python PATH` names an interpreter that has the
//! packages, `--python none` leaves the baseline out. A baseline that cannot
//! be had is left out with a plain note: a bench never stops for it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A baseline's environment: its cache folder and pinned packages.
pub struct PythonEnv {
    /// What the baseline is, for messages (`numpy`).
    pub what: &'static str,
    /// Folder under the cache (`venv-numpy`).
    pub dir: &'static str,
    /// `pip install` arguments, pinned.
    pub packages: &'static [&'static str],
    /// Roughly how much pip downloads, for the message before it does.
    pub download: &'static str,
}

/// numpy for the sgemm baseline of `bench kernels` (its wheel brings OpenBLAS).
pub const NUMPY: PythonEnv = PythonEnv {
    what: "numpy",
    dir: "venv-numpy",
    packages: &["numpy==2.3.5"],
    download: "about 20 MB",
};

/// PyTorch + PEFT for `bench train`: PyPI's torch wheel, with the CUDA
/// libraries it depends on (unused here: the baseline runs on the CPU).
pub const TORCH: PythonEnv = PythonEnv {
    what: "PyTorch + PEFT",
    dir: "venv-torch",
    packages: &[
        "torch==2.15.0",
        "transformers==5.23.0",
        "peft==0.21.2",
        "gguf==0.19.0",
        "numpy==2.4.6",
    ],
    download: "several GB, once",
};

/// The interpreter `--python` asks for: `venv` (the default: `env`'s
/// environment in the cache, made if needed), `none`, or a path. `None`
/// after saying on stderr why the baseline is left out.
pub fn interpreter(choice: &str, env: &PythonEnv) -> Option<PathBuf> {
    let result = match choice {
        "none" => Err("--python none".to_string()),
        "venv" => ensure(env),
        path => Ok(PathBuf::from(path)),
    };
    match result {
        Ok(python) => Some(python),
        Err(why) => {
            left_out(env, &why);
            None
        }
    }
}

/// Says that the baseline is left out, and why.
pub fn left_out(env: &PythonEnv, why: &str) {
    eprintln!(
        "{} baseline left out ({why}); the table shows ours only",
        env.what
    );
}

/// `env`'s environment in the cache, made if missing or made with other
/// pins; the reason when it cannot be.
fn ensure(env: &PythonEnv) -> Result<PathBuf, String> {
    let dir = cleaner::assets::home_dir().join(env.dir);
    let python = dir.join("bin").join("python");
    // The pins it was made with; written last, so a half-made one is redone.
    let stamp = dir.join("cleaner-pins.txt");
    let pins = env.packages.join("\n");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return Ok(python);
    }
    eprintln!(
        "making the {} baseline's environment {} (python3 -m venv, pip install {}; {})",
        env.what,
        dir.display(),
        env.packages.join(" "),
        env.download
    );
    let _ = std::fs::remove_dir_all(&dir);
    let made = run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
        .and_then(|()| {
            run(Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(env.packages))
        })
        .and_then(|()| {
            std::fs::write(&stamp, &pins).map_err(|e| format!("{}: {e}", stamp.display()))
        });
    match made {
        Ok(()) => Ok(python),
        Err(why) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(format!("could not make {}: {why}", dir.display()))
        }
    }
}

/// Runs a set-up command; its last lines of error output when it fails.
fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| format!("`{shown}`: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(2)
        .collect();
    Err(format!(
        "`{shown}` failed ({}): {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// Runs a baseline (`cmd`, started with `python`) and reads the JSON object
/// it prints on its last line; the reason, with the end of its stderr, when
/// it fails.
pub fn run_baseline(python: &Path, cmd: &mut Command) -> Result<serde_json::Value, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    let last = out
        .stdout
        .split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or(b"{}");
    serde_json::from_slice(last).map_err(|e| format!("{} printed no result: {e}", python.display()))
}
