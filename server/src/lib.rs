//! The Kaelix server.
