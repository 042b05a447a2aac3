//! Native protocol frames (filled in by the native protocol work).
