//! What the fuzz targets share: a counting global allocator that measures the peak heap growth
//! of one call, the bound that growth must stay under, and the split of one input into two.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

/// Bytes currently allocated through [`Counting`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest [`LIVE`] seen since the last [`peak_during`] started.
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their peak.
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrink(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            grow(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grow(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A moving realloc holds both blocks for a moment: count the new one before the old one
        // goes, so the peak is an upper bound.
        grow(new_size);
        let new = System.realloc(ptr, layout, new_size);
        if new.is_null() {
            shrink(new_size);
        } else {
            shrink(layout.size());
        }
        new
    }
}

/// Runs `f` and returns its result with the peak heap growth during the call, in bytes (what
/// the result itself holds included).
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (result, peak)
}

/// Heap growth allowed per input byte.
///
/// The decoders build `serde_json::Value`s or typed structs from JSON. Their densest shape is an
/// array of one-entry objects, `[{"":0},{"":0},…]`: 7 input bytes become one 32-byte `Value` in
/// the array and one B-tree leaf node of about 630 bytes (room for 11 `String` keys and 11
/// `Value`s), so about 95 bytes per input byte. Measured with `FUZZ_ALLOC_REPORT` (below), that
/// shape peaks at 91 to 105 bytes per input byte across the targets, and the corpora the runs
/// built at 37 at most.
/// 256 leaves headroom for vector doubling and re-encoding while still catching anything that
/// grows faster than the input: at inputs of a few KiB a quadratic allocation exceeds it by
/// orders of magnitude.
pub const BYTES_PER_INPUT_BYTE: usize = 256;

/// Heap growth allowed whatever the input: fixed-size tables, error messages, hash state.
pub const FIXED_ALLOWANCE: usize = 1 << 20;

/// The most a call on `input_len` bytes may allocate: linear in the input.
pub fn allocation_bound(input_len: usize) -> usize {
    BYTES_PER_INPUT_BYTE.saturating_mul(input_len).saturating_add(FIXED_ALLOWANCE)
}

/// Runs `f` on an input of `input_len` bytes and panics (a fuzzer finding) if its peak heap
/// growth exceeds [`allocation_bound`].
///
/// With `FUZZ_ALLOC_REPORT` set in the environment it also prints every new highest ratio of
/// peak growth to input length, which is how [`BYTES_PER_INPUT_BYTE`] was checked against a
/// corpus (`cargo fuzz run <target> -- -runs=0`).
pub fn bounded<R>(what: &str, input_len: usize, f: impl FnOnce() -> R) -> R {
    let (result, peak) = peak_during(f);
    let bound = allocation_bound(input_len);
    if std::env::var_os("FUZZ_ALLOC_REPORT").is_some() {
        report(what, input_len, peak);
    }
    assert!(
        peak <= bound,
        "{what}: allocated {peak} bytes at peak for {input_len} input bytes (bound {bound})"
    );
    result
}

fn report(what: &str, input_len: usize, peak: usize) {
    static HIGHEST: AtomicUsize = AtomicUsize::new(0);
    // Inputs under 1 KiB are left out: the fixed allowance covers them whatever the ratio.
    if input_len < 1024 {
        return;
    }
    let ratio = peak / input_len;
    if ratio > HIGHEST.fetch_max(ratio, Ordering::Relaxed) {
        eprintln!("{what}: {peak} bytes at peak for {input_len} input bytes ({ratio} per byte)");
    }
}

/// The byte that splits an input into two documents. It never occurs in UTF-8, so no JSON
/// document loses anything to it.
pub const SEPARATOR: u8 = 0xff;

/// The input split at its first [`SEPARATOR`]; without one, the whole input twice (a single seed
/// fixture then stands for both sides).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&byte| byte == SEPARATOR) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    }
}
