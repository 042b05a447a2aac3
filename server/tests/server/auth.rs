//! Tokens, users with bcrypt passwords, and per-user permissions.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real sockets

use kaelix_server::auth::{AuthConfig, SubjectRules, UserConfig};

use crate::support::{Raw, TestServer, config, temp_dir};

fn connect_line(fields: &str) -> Vec<u8> {
    format!("CONNECT {{\"verbose\":false,{fields}}}\r\nPING\r\n").into_bytes()
}

#[test]
fn a_token_is_required_once_configured() {
    let mut c = config();
    c.auth = AuthConfig { token: Some("s3cret".into()), users: vec![] };
    let server = TestServer::start_in(temp_dir("auth-token"), c);
    let (mut raw, info) = Raw::connect(server.addr);
    assert!(info.contains("\"auth_required\":true"), "{info}");
    raw.send(&connect_line("\"auth_token\":\"s3cret\""));
    assert_eq!(raw.line(), "PONG");
    let (mut bad, _) = Raw::connect(server.addr);
    bad.send(&connect_line("\"auth_token\":\"guess\""));
    assert_eq!(bad.line(), "-ERR 'Authorization Violation'");
    assert!(bad.closed());
    let (mut none, _) = Raw::connect(server.addr);
    none.send(&connect_line("\"name\":\"anonymous\""));
    assert_eq!(none.line(), "-ERR 'Authorization Violation'");
    // async-nats with the token works end to end.
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let client = async_nats::ConnectOptions::with_token("s3cret".into()).connect(server.url()).await.unwrap();
        client.publish("x", "1".into()).await.unwrap();
        client.flush().await.unwrap();
    });
}

#[test]
fn users_log_in_with_passwords_and_are_held_to_their_permissions() {
    let mut c = config();
    c.auth = AuthConfig {
        token: None,
        users: vec![
            UserConfig {
                user: "alice".into(),
                password: bcrypt::hash("wonderland", 4).unwrap(),
                publish: Some(SubjectRules { allow: Some(vec!["orders.>".into()]), deny: vec![] }),
                subscribe: Some(SubjectRules { allow: Some(vec![">".into()]), deny: vec!["secret.>".into()] }),
            },
            UserConfig {
                user: "root".into(),
                password: bcrypt::hash("toor", 4).unwrap(),
                publish: None,
                subscribe: None,
            },
        ],
    };
    let server = TestServer::start_in(temp_dir("auth-users"), c);
    let (mut wrong, _) = Raw::connect(server.addr);
    wrong.send(&connect_line("\"user\":\"alice\",\"pass\":\"rabbit\""));
    assert_eq!(wrong.line(), "-ERR 'Authorization Violation'");
    assert!(wrong.closed());

    let (mut alice, _) = Raw::connect(server.addr);
    alice.send(&connect_line("\"user\":\"alice\",\"pass\":\"wonderland\""));
    assert_eq!(alice.line(), "PONG");
    alice.send(b"PUB payments 1\r\nx\r\nPING\r\n");
    assert_eq!(alice.line(), "-ERR 'Permissions Violation for Publish to \"payments\"'");
    assert_eq!(alice.line(), "PONG", "the connection stays up");
    alice.send(b"SUB secret.* 1\r\nPING\r\n");
    assert_eq!(alice.line(), "-ERR 'Permissions Violation for Subscription to \"secret.*\"'");
    assert_eq!(alice.line(), "PONG");
    // A wide subscription is allowed, but denied subjects never arrive.
    alice.send(b"SUB > 2\r\nPING\r\n");
    assert_eq!(alice.line(), "PONG");
    let (mut root, _) = Raw::connect(server.addr);
    root.send(&connect_line("\"user\":\"root\",\"pass\":\"toor\""));
    assert_eq!(root.line(), "PONG");
    root.send(b"PUB secret.plans 1\r\ns\r\nPUB public.news 1\r\np\r\nPING\r\n");
    assert_eq!(root.line(), "PONG");
    assert_eq!(alice.line(), "MSG public.news 2 1", "secret.plans was filtered out");
    assert_eq!(alice.payload(1), b"p");
}
