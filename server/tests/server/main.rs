//! The server's integration tests: real sockets, real files, real clients.

mod async_nats_client;
mod auth;
mod bad_input;
mod config_catalog;
mod limits;
mod native_client;
mod reconfigure;
mod slow_consumer;
mod subscriptions;
mod support;
mod tls;
