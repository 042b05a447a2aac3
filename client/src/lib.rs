//! The Kaelix native client.
