//! Kaelix benchmarks. The criterion benchmarks live in `benches/`; run them
//! with `cargo bench -p kaelix-benches`. Each benchmark that has a natural
//! peer measures it side by side in the same run.
