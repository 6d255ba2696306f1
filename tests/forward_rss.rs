//! Opening a model maps its file; it must not copy it. Resident memory grows
//! by far less than the file until a forward pass touches the weights. Alone
//! in its test binary so no other test pages the file in meanwhile.

use cleaner::assets::{self, AssetStore};
use cleaner::models::Transformer;

/// Resident bytes of one kind: `RssFile` (pages of mapped files) or
/// `RssAnon` (heap and other private memory).
fn rss(kind: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(kind))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{kind} line"));
    kib * 1024
}

/// Opening reads the header through the map (5.7 MiB for Qwen2.5, mostly the
/// tokenizer), parses its metadata onto the heap, and decodes the norm vectors
/// and biases (about 120 small tensors spread over the file). How many file
/// pages that maps is the kernel's choice: with 4 KiB pages and fault-around
/// it measured +12 MiB of a 469 MiB file; on kernel 6.18, whose page cache
/// holds large folios, one touched byte maps a whole 2 MiB block
/// (`FilePmdMapped` in smaps) and it measured +70.8 MiB. Either is far from
/// paging in the weights (a forward pass maps more than half the file), so the
/// bound is a quarter of the file. The heap stays well under a tenth of the
/// file (measured +14 MiB): nothing is copied.
const OPEN_FILE_MAX: f64 = 0.25;
const OPEN_HEAP_MAX: f64 = 0.1;

#[test]
fn opening_a_model_does_not_copy_its_weights() {
    let path = AssetStore::default()
        .fetch(
            assets::find("qwen2.5-coder-0.5b").expect("catalog"),
            &mut |l| eprintln!("{l}"),
        )
        .expect("fetch model");
    let file_len = std::fs::metadata(&path).unwrap().len();
    let header = cleaner::models::GgufFile::open(&path)
        .unwrap()
        .data_offset();
    let (file0, anon0) = (rss("RssFile:"), rss("RssAnon:"));
    let model = Transformer::open(&path).expect("open");
    let (file1, anon1) = (rss("RssFile:"), rss("RssAnon:"));
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "file {:.0} MiB (header {:.1}); after open: mapped pages +{:.1} MiB, heap +{:.1} MiB",
        mib(file_len),
        mib(header),
        mib(file1.saturating_sub(file0)),
        mib(anon1.saturating_sub(anon0))
    );
    assert!(
        file1.saturating_sub(file0) as f64 <= OPEN_FILE_MAX * file_len as f64,
        "opening paged in weights"
    );
    assert!(
        anon1.saturating_sub(anon0) as f64 <= OPEN_HEAP_MAX * file_len as f64,
        "opening copied data onto the heap"
    );
    // A forward pass pages the weights in, shared and file-backed: it reads
    // them in place.
    model.next_token_logprobs(&[1, 2, 3, 4]).expect("forward");
    let file2 = rss("RssFile:");
    eprintln!(
        "after a forward pass: mapped pages +{:.1} MiB",
        mib(file2.saturating_sub(file0))
    );
    assert!(
        file2.saturating_sub(file0) as f64 > 0.5 * file_len as f64,
        "a forward pass should touch most weights through the map"
    );
}
