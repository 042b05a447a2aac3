//! The client's integration tests: the client and the server (the very code
//! `kaelix serve` runs) on two simulated nodes, talking over the simulator's
//! TCP streams, which cut every write at random points. Each seed runs the
//! whole client API; every seed must pass and replay to the same trace.

mod simulated;
