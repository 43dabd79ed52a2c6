//! Decompression bombs are refused before their pixel buffer is allocated. This binary counts
//! every allocation through its global allocator, so it holds a single test: nothing else may
//! allocate while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use fer_data::decode::read_rgb;
use fer_data::manifest::SkipReason;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, SeqCst) + n;
    PEAK.fetch_max(now, SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), SeqCst);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), SeqCst);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most memory held at once while `f` runs, above what was held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(SeqCst);
    PEAK.store(base, SeqCst);
    let out = f();
    (out, PEAK.load(SeqCst) - base)
}

#[test]
fn bombs_are_refused_without_allocating_their_pixels() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
    // The counter sees a real decode: the 24x16 picture's 1152 RGB bytes at least.
    let (img, used) = peak_during(|| read_rgb(&dir.join("face.png")));
    assert_eq!(img.unwrap().dimensions(), (24, 16));
    assert!(used >= 24 * 16 * 3, "{used}");
    // Each bomb would need 0.9 to 30 GB; the headers and the file itself take a few KiB.
    for file in ["bomb-side.png", "bomb-alloc.png", "bomb-side.jpg"] {
        let (r, used) = peak_during(|| read_rgb(&dir.join(file)));
        let (reason, detail) = r.unwrap_err();
        assert_eq!(reason, SkipReason::ImageTooLarge, "{file}: {detail}");
        assert!(
            used < 1 << 20,
            "{file}: {used} bytes held while refusing it"
        );
        println!("{file}: refused holding at most {used} bytes: {detail}");
    }
}
