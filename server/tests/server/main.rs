//! The server's integration tests: real sockets, real files, real clients.

mod async_nats_client;
mod auth;
mod bad_input;
mod native_client;
mod support;
mod tls;
