use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result};
use cleaner::assets::{self, AssetStore};
use cleaner::sandbox::{Limits, Outcome, Sandbox, SandboxConfig};

#[derive(clap::Subcommand)]
pub enum Which {
    /// Run a Python file (or `-` for stdin) in the sandbox and show the result.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Python source file, or `-` for standard input.
    file: String,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 4.0)]
    timeout: f64,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Seed of the guest's randomness.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Opens the sandbox on the cached interpreter (fetching it on first use).
pub fn open(warm: Option<usize>) -> Result<Sandbox> {
    let wasm =
        AssetStore::default().fetch(assets::find("python-wasm")?, &mut |l| eprintln!("{l}"))?;
    let mut config = SandboxConfig::new(wasm, cleaner::assets::sandbox_cache_dir());
    if let Some(w) = warm {
        config.warm = w;
    }
    Ok(Sandbox::new(config)?)
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Run(a) => {
            let code = if a.file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading stdin")?;
                s
            } else {
                std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file))?
            };
            if !(a.timeout > 0.0 && a.timeout <= 3600.0) {
                anyhow::bail!("--timeout must be in (0, 3600] seconds, got {}", a.timeout);
            }
            let sandbox = open(Some(0))?;
            let limits = Limits {
                timeout: Duration::from_secs_f64(a.timeout),
                memory_bytes: a.memory_mib << 20,
                seed: a.seed,
                ..Limits::default()
            };
            let e = sandbox.run(&code, &limits)?;
            print!("{}", e.stdout);
            eprint!("{}", e.stderr);
            let trunc = if e.stdout_truncated || e.stderr_truncated {
                " (output truncated)"
            } else {
                ""
            };
            eprintln!(
                "--- {} in {:.1} ms, {}{trunc}",
                crate::render::outcome(&e.outcome),
                e.wall.as_secs_f64() * 1e3,
                crate::render::exit_code(e.exit_code)
            );
            if e.outcome != Outcome::Ok {
                std::process::exit(2);
            }
            Ok(())
        }
    }
}
