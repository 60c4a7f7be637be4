//! What the two footprint binaries share: measuring the process while a store fills up.

/// Resident set size from /proc/self/statm, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux exposes statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

/// Runs `fill`, which fills a store of `capacity` bytes until it refuses with
/// [`StoreFull`](idem_memory::StoreFull) and answers how many `items` it then held, and
/// insists that the process grew by about `capacity`, not by twice as much.
pub async fn assert_fills_about_its_capacity(
    capacity: u64,
    items: &str,
    fill: impl AsyncFnOnce() -> u64,
) {
    let before = resident_bytes();
    let held = fill().await;
    let grown = resident_bytes().saturating_sub(before);
    let ratio = grown as f64 / capacity as f64;
    println!(
        "{held} {items}; resident memory grew {grown} bytes for a capacity of {capacity} \
         ({ratio:.2}×, {:.0} bytes per item)",
        grown as f64 / held as f64
    );
    assert!(
        (0.8..=1.15).contains(&ratio),
        "a store of {capacity} bytes of {items} grew the process by {grown} bytes ({ratio:.2}×)"
    );
}
