//! Protocol code that reads the OS clock and uses a randomly seeded map:
//! exactly what `core` must never do.

/// Reads the OS clock.
pub fn elapsed_nanos() -> u128 {
    let start = std::time::Instant::now();
    start.elapsed().as_nanos()
}

/// Iterates a randomly seeded hash map.
pub fn first_key() -> Option<u32> {
    let mut m = std::collections::HashMap::new();
    m.insert(1u32, 2u32);
    m.keys().next().copied()
}
