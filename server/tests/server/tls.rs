//! TLS with certificates made at run time: async-nats connects over TLS;
//! a client that will not do TLS is refused.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real files and sockets

use kaelix_server::tls::TlsConfig;

use crate::support::{Raw, TestServer, config, temp_dir};

#[test]
fn async_nats_speaks_tls_and_plaintext_clients_are_refused() {
    let dir = temp_dir("tls-certs");
    std::fs::create_dir_all(&dir).unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    let mut c = config();
    c.tls =
        Some(TlsConfig { cert: cert_path.display().to_string(), key: key_path.display().to_string(), client_ca: None });
    let server = TestServer::start_in(temp_dir("tls"), c);
    // INFO (plaintext) says TLS is required.
    let (mut raw, info) = Raw::connect(server.addr);
    assert!(info.contains("\"tls_required\":true"), "{info}");
    // Not a TLS ClientHello: the session fails and the connection closes.
    raw.send(b"CONNECT {}\r\nPING\r\n");
    assert!(raw.closed());
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let client = async_nats::ConnectOptions::new()
            .add_root_certificates(cert_path.clone())
            .require_tls(true)
            .connect(format!("tls://{}", server.addr))
            .await
            .expect("TLS connect");
        let mut sub = client.subscribe("secure.>").await.unwrap();
        client.flush().await.unwrap();
        client.publish("secure.hello", "over tls".into()).await.unwrap();
        let m = futures_util::StreamExt::next(&mut sub).await.unwrap();
        assert_eq!(&m.payload[..], b"over tls");
    });
    let _ = std::fs::remove_dir_all(dir);
}
