use anyhow::Result;
use cleaner::assets::{self, AssetStore};

#[derive(clap::Args)]
pub struct Args {
    /// Asset names (default: every known asset). `--list` shows them.
    names: Vec<String>,
    /// List known assets and whether they are cached.
    #[arg(long)]
    list: bool,
}

pub fn run(args: Args) -> Result<()> {
    let store = AssetStore::default();
    if args.list {
        for a in assets::CATALOG {
            let cached = if store.path_of(a).is_file() {
                "cached"
            } else {
                "not cached"
            };
            println!(
                "{:<20} {:>6.1} MB  {:<10} {}",
                a.name,
                a.size as f64 / 1e6,
                cached,
                a.description
            );
        }
        println!("cache: {}", store.dir().display());
        return Ok(());
    }
    let names: Vec<String> = if args.names.is_empty() {
        assets::CATALOG.iter().map(|a| a.name.to_string()).collect()
    } else {
        args.names
    };
    for name in names {
        let asset = assets::find(&name)?;
        let path = store.fetch(asset, &mut |line| eprintln!("{line}"))?;
        println!("{}\t{}", asset.name, path.display());
    }
    Ok(())
}
