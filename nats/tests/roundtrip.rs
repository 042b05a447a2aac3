//! Property tests: encoded operations, concatenated and cut into chunks at
//! random points, parse back to exactly the same operations; arbitrary or
//! damaged bytes never panic a parser, and whatever parses re-encodes to
//! itself.

use bytes::{Bytes, BytesMut};
use kaelix_nats::{
    ClientOp, Connect, Headers, Info, Limits, Msg, Parser, ProtoError, Pub, ServerOp, ServerOpParser, Sub, Unsub,
};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_\\-é$]{1,6}"
}

fn publish_subject() -> impl Strategy<Value = Bytes> {
    vec(token(), 1..4).prop_map(|t| Bytes::from(t.join(".")))
}

fn subscribe_subject() -> impl Strategy<Value = Bytes> {
    (vec(prop_oneof![3 => token(), 1 => Just("*".to_owned())], 1..4), any::<bool>()).prop_map(|(mut t, fwc)| {
        if fwc {
            t.push(">".to_owned());
        }
        Bytes::from(t.join("."))
    })
}

fn sid() -> impl Strategy<Value = Bytes> {
    prop_oneof!["[0-9]{1,5}", "[a-zA-Z0-9]{1,8}"].prop_map(Bytes::from)
}

/// Bytes with line ends over-represented (they must not confuse framing).
fn payload() -> impl Strategy<Value = Bytes> {
    vec(prop_oneof![4 => any::<u8>(), 1 => Just(b'\r'), 1 => Just(b'\n')], 0..48).prop_map(Bytes::from)
}

fn headers() -> impl Strategy<Value = Headers> {
    let status = of((0u16..1000, of("[A-Za-z0-9][ A-Za-z0-9]{0,10}")));
    let entries = vec(("[A-Za-z][A-Za-z0-9\\-]{0,8}", "[ -~\t]{0,12}"), 0..4);
    (status, entries).prop_map(|(status, entries)| {
        let mut h = Headers::new();
        h.set_status(status.as_ref().map(|(c, d)| (*c, d.as_deref()))).unwrap();
        for (n, v) in entries {
            h.append(&n, &v).unwrap();
        }
        h
    })
}

fn text() -> impl Strategy<Value = Option<String>> {
    of(".{0,10}")
}

fn connect() -> impl Strategy<Value = Connect> {
    (any::<[bool; 7]>(), (text(), text(), text(), text()), (text(), text(), text(), text(), text()), 0u32..3).prop_map(
        |(f, (auth_token, user, pass, name), (lang, version, sig, jwt, nkey), protocol)| Connect {
            verbose: f[0],
            pedantic: f[1],
            tls_required: f[2],
            auth_token,
            user,
            pass,
            name,
            lang,
            version,
            protocol,
            echo: f[3],
            headers: f[4],
            no_responders: f[5],
            sig,
            jwt,
            nkey,
        },
    )
}

fn info() -> impl Strategy<Value = Info> {
    (
        (".{0,10}", ".{0,10}", ".{0,10}", text()),
        (any::<u16>(), any::<u64>(), any::<u64>(), any::<[bool; 6]>()),
        (text(), text(), vec(".{0,10}", 0..3)),
    )
        .prop_map(
            |((server_id, server_name, version, go), (port, max_payload, client_id, f), (client_ip, nonce, urls))| {
                Info {
                    server_id,
                    server_name,
                    version,
                    proto: 1,
                    go,
                    host: "127.0.0.1".into(),
                    port,
                    headers: f[0],
                    max_payload,
                    auth_required: f[1],
                    tls_required: f[2],
                    tls_available: f[3],
                    client_id,
                    client_ip,
                    nonce,
                    connect_urls: urls,
                    ldm: f[4],
                    jetstream: f[5],
                }
            },
        )
}

fn client_op() -> impl Strategy<Value = ClientOp> {
    prop_oneof![
        1 => connect().prop_map(|c| ClientOp::Connect(Box::new(c))),
        6 => (publish_subject(), of(publish_subject()), of(headers()), payload()).prop_map(|(subject, reply, headers, payload)| {
            ClientOp::Pub(Pub { subject, reply, headers: headers.map(|h| h.to_bytes()), payload })
        }),
        3 => (subscribe_subject(), of(token().prop_map(Bytes::from)), sid())
            .prop_map(|(subject, queue, sid)| ClientOp::Sub(Sub { subject, queue, sid })),
        2 => (sid(), of(any::<u64>())).prop_map(|(sid, max_msgs)| ClientOp::Unsub(Unsub { sid, max_msgs })),
        1 => Just(ClientOp::Ping),
        1 => Just(ClientOp::Pong),
    ]
}

fn server_op() -> impl Strategy<Value = ServerOp> {
    prop_oneof![
        1 => info().prop_map(|i| ServerOp::Info(Box::new(i))),
        6 => (publish_subject(), sid(), of(publish_subject()), of(headers()), payload()).prop_map(
            |(subject, sid, reply, headers, payload)| {
                ServerOp::Msg(Msg { subject, sid, reply, headers: headers.map(|h| h.to_bytes()), payload })
            }
        ),
        1 => Just(ServerOp::Ping),
        1 => Just(ServerOp::Pong),
        1 => Just(ServerOp::Ok),
        1 => "[^\r\n]{0,20}".prop_map(ServerOp::Err),
    ]
}

/// Feeds `input` in chunks of the given sizes (cycled) and collects
/// everything the parser returns.
fn feed<P, T>(mut parser: P, input: &[u8], sizes: &[usize]) -> Vec<Result<T, ProtoError>>
where
    P: Iterator<Item = Result<T, ProtoError>> + Push,
{
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).min(rest.len());
        parser.push_chunk(&rest[..n]);
        rest = &rest[n..];
        out.extend(parser.by_ref());
    }
    out.extend(parser.by_ref());
    out
}

trait Push {
    fn push_chunk(&mut self, chunk: &[u8]);
}

impl Push for Parser {
    fn push_chunk(&mut self, chunk: &[u8]) {
        self.push(chunk);
    }
}

impl Push for ServerOpParser {
    fn push_chunk(&mut self, chunk: &[u8]) {
        self.push(chunk);
    }
}

/// Whatever parsed re-encodes and parses back to the same operation;
/// nothing follows a fatal error.
fn check_outputs_client(out: &[Result<ClientOp, ProtoError>]) {
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(op) => {
                let mut buf = BytesMut::new();
                op.encode(&mut buf);
                let mut p = Parser::with_limits(Limits { max_control_line: usize::MAX, max_payload: usize::MAX });
                p.push(&buf);
                assert_eq!(p.next(), Some(Ok(op.clone())));
                assert_eq!(p.next(), None);
                assert_eq!(p.buffered(), 0);
            }
            Err(e) if e.is_fatal() => assert_eq!(i, out.len() - 1, "output after a fatal error"),
            Err(_) => {}
        }
    }
}

fn check_outputs_server(out: &[Result<ServerOp, ProtoError>]) {
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(op) => {
                let mut buf = BytesMut::new();
                op.encode(&mut buf);
                let mut p =
                    ServerOpParser::with_limits(Limits { max_control_line: usize::MAX, max_payload: usize::MAX });
                p.push(&buf);
                assert_eq!(p.next(), Some(Ok(op.clone())));
                assert_eq!(p.next(), None);
            }
            Err(e) if e.is_fatal() => assert_eq!(i, out.len() - 1, "output after a fatal error"),
            Err(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_ops_roundtrip(ops in vec(client_op(), 0..24), sizes in vec(1usize..64, 1..16)) {
        let mut buf = BytesMut::new();
        for op in &ops {
            op.encode(&mut buf);
        }
        let out = feed(Parser::new(), &buf, &sizes);
        let expected: Vec<_> = ops.into_iter().map(Ok).collect();
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn server_ops_roundtrip(ops in vec(server_op(), 0..24), sizes in vec(1usize..64, 1..16)) {
        let mut buf = BytesMut::new();
        for op in &ops {
            op.encode(&mut buf);
        }
        let out = feed(ServerOpParser::new(), &buf, &sizes);
        let expected: Vec<_> = ops.into_iter().map(Ok).collect();
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn headers_roundtrip(h in headers()) {
        let bytes = h.to_bytes();
        prop_assert_eq!(bytes.len(), h.encoded_len());
        prop_assert_eq!(Headers::decode(&bytes), Ok(h));
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..512), sizes in vec(1usize..64, 1..8)) {
        let limits = Limits { max_control_line: 128, max_payload: 64 };
        let out = feed(Parser::with_limits(limits), &input, &sizes);
        check_outputs_client(&out);
        let out = feed(ServerOpParser::with_limits(limits), &input, &sizes);
        check_outputs_server(&out);
    }

    /// Valid streams with a few bytes overwritten: close to valid, so the
    /// parsers get deep into every state.
    #[test]
    fn damaged_streams_never_panic(
        client in vec(client_op(), 1..8),
        server in vec(server_op(), 1..8),
        damage in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        sizes in vec(1usize..64, 1..8),
    ) {
        let mut buf = BytesMut::new();
        for op in &client {
            op.encode(&mut buf);
        }
        for (at, byte) in &damage {
            let i = at.index(buf.len());
            buf[i] = *byte;
        }
        check_outputs_client(&feed(Parser::new(), &buf, &sizes));
        let mut buf = BytesMut::new();
        for op in &server {
            op.encode(&mut buf);
        }
        for (at, byte) in &damage {
            let i = at.index(buf.len());
            buf[i] = *byte;
        }
        check_outputs_server(&feed(ServerOpParser::new(), &buf, &sizes));
    }
}
