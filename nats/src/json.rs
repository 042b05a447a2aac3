//! The JSON arguments of `CONNECT` (client options) and `INFO` (server
//! description).

use serde::{Deserialize, Deserializer, Serialize};

/// The options a client sends in `CONNECT {json}`.
///
/// Deserialization follows nats-server: unknown fields are ignored,
/// `verbose`, `pedantic` and `echo` default to `true`, `headers` and
/// `no_responders` to `false`. A `null` counts as absent (async-nats sends
/// `null` for options it leaves unset).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    /// Acknowledge every operation with `+OK`.
    #[serde(default = "yes", deserialize_with = "null_true")]
    pub verbose: bool,
    /// Strict checks (nats-server validates publish subjects only then; we
    /// always do).
    #[serde(default = "yes", deserialize_with = "null_true")]
    pub pedantic: bool,
    /// The client requires TLS.
    #[serde(default, deserialize_with = "null_default")]
    pub tls_required: bool,
    /// Token authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// User name authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    /// The client's name, for monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The client library's language (`go`, `python3`, `rust`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// The client library's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Protocol level: 0 (original) or 1 (dynamic cluster INFO updates).
    #[serde(default, deserialize_with = "null_default")]
    pub protocol: u32,
    /// Receive the client's own publications on its subscriptions.
    #[serde(default = "yes", deserialize_with = "null_true")]
    pub echo: bool,
    /// The client understands `HMSG` (and may send `HPUB`).
    #[serde(default, deserialize_with = "null_default")]
    pub headers: bool,
    /// The client wants a `503` status message when a request has no
    /// responder (needs `headers`).
    #[serde(default, deserialize_with = "null_default")]
    pub no_responders: bool,
    /// The signed nonce (nkey / JWT authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// The user JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// The public nkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey: Option<String>,
}

impl Default for Connect {
    /// What an empty `CONNECT {}` means.
    fn default() -> Self {
        Self {
            verbose: true,
            pedantic: true,
            tls_required: false,
            auth_token: None,
            user: None,
            pass: None,
            name: None,
            lang: None,
            version: None,
            protocol: 0,
            echo: true,
            headers: false,
            no_responders: false,
            sig: None,
            jwt: None,
            nkey: None,
        }
    }
}

/// The server description sent in `INFO {json}`, first thing on a
/// connection.
///
/// Field names and omissions follow nats-server (`omitempty` fields are
/// left out when empty), which is what clients parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Info {
    /// Unique id of the server.
    pub server_id: String,
    /// The server's name.
    pub server_name: String,
    /// Server version (clients check it for features, e.g. headers need
    /// 2.2 or later).
    pub version: String,
    /// Protocol level; 1 for any current server.
    pub proto: u32,
    /// Go version in nats-server; ours says what it is, or leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go: Option<String>,
    /// The host the server listens on.
    pub host: String,
    /// The port the server listens on.
    pub port: u16,
    /// The server supports headers (`HPUB`/`HMSG`).
    pub headers: bool,
    /// The largest payload (headers included) the server accepts.
    pub max_payload: u64,
    /// Clients must authenticate.
    #[serde(skip_serializing_if = "is_false")]
    pub auth_required: bool,
    /// Clients must use TLS.
    #[serde(skip_serializing_if = "is_false")]
    pub tls_required: bool,
    /// Clients may upgrade to TLS.
    #[serde(skip_serializing_if = "is_false")]
    pub tls_available: bool,
    /// The id the server gave this client connection.
    #[serde(skip_serializing_if = "is_zero")]
    pub client_id: u64,
    /// The client's address as the server sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// The nonce a client signs for nkey / JWT authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Other URLs clients may connect to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connect_urls: Vec<String>,
    /// The server is in lame duck mode (clients should move elsewhere).
    #[serde(skip_serializing_if = "is_false")]
    pub ldm: bool,
    /// JetStream is enabled.
    #[serde(skip_serializing_if = "is_false")]
    pub jetstream: bool,
}

impl Default for Info {
    /// Empty strings, no flags, protocol 1, the default maximum payload
    /// (also what fields absent from a received `INFO` mean).
    fn default() -> Self {
        Self {
            server_id: String::new(),
            server_name: String::new(),
            version: String::new(),
            proto: 1,
            go: None,
            host: String::new(),
            port: 0,
            headers: false,
            max_payload: crate::DEFAULT_MAX_PAYLOAD as u64,
            auth_required: false,
            tls_required: false,
            tls_available: false,
            client_id: 0,
            client_ip: None,
            nonce: None,
            connect_urls: Vec::new(),
            ldm: false,
            jetstream: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `null` as `true` (the field's default when absent).
fn null_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

/// `null` as the type's default (the field's default when absent).
fn null_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_defaults() {
        let c: Connect = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Connect::default());
        assert!(c.verbose && c.pedantic && c.echo && !c.headers && !c.no_responders);
    }

    #[test]
    fn connect_nulls_are_absent() {
        // The shape async-nats sends.
        let json = r#"{"verbose":false,"pedantic":false,"jwt":null,"nkey":null,"signature":null,"name":null,
            "echo":null,"lang":"rust","version":"0.38.0","protocol":1,"tls_required":false,"user":null,
            "pass":null,"auth_token":null,"headers":true,"no_responders":true}"#;
        let c: Connect = serde_json::from_str(json).unwrap();
        assert!(!c.verbose && !c.pedantic && c.echo && c.headers && c.no_responders);
        assert_eq!((c.lang.as_deref(), c.protocol, c.name), (Some("rust"), 1, None));
        let c: Connect = serde_json::from_str(r#"{"verbose":null,"headers":null,"protocol":null}"#).unwrap();
        assert_eq!(c, Connect::default());
    }

    #[test]
    fn connect_client_shapes() {
        // nats-py
        let json = r#"{"echo": true, "headers": true, "lang": "python3", "no_responders": true,
            "pedantic": false, "protocol": 1, "verbose": false, "version": "2.9.0", "user": "u", "pass": "p"}"#;
        let c: Connect = serde_json::from_str(json).unwrap();
        assert_eq!((c.user.as_deref(), c.pass.as_deref()), (Some("u"), Some("p")));
        // nats.go (unknown fields ignored)
        let json = r#"{"verbose":false,"pedantic":false,"tls_required":false,"name":"n","lang":"go",
            "version":"1.31.0","protocol":1,"echo":true,"headers":true,"no_responders":true,"auth_token":"t"}"#;
        let c: Connect = serde_json::from_str(json).unwrap();
        assert_eq!((c.name.as_deref(), c.auth_token.as_deref()), (Some("n"), Some("t")));
        assert!(serde_json::from_str::<Connect>(r#"{"verbose":"yes"}"#).is_err());
        assert!(serde_json::from_str::<Connect>(r#"{"protocol":-1}"#).is_err());
        assert!(serde_json::from_str::<Connect>(r#"{"user":5}"#).is_err());
    }

    #[test]
    fn info_shape() {
        let info = Info {
            server_id: "S1".into(),
            server_name: "kaelix".into(),
            version: "2.10.0".into(),
            host: "0.0.0.0".into(),
            port: 4222,
            headers: true,
            client_id: 7,
            ..Info::default()
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(
            json,
            r#"{"server_id":"S1","server_name":"kaelix","version":"2.10.0","proto":1,"host":"0.0.0.0","port":4222,"headers":true,"max_payload":1048576,"client_id":7}"#
        );
        assert_eq!(serde_json::from_str::<Info>(&json).unwrap(), info);
        let info: Info =
            serde_json::from_str(r#"{"server_id":"x","go":"go1.22","auth_required":true,"extra":[1]}"#).unwrap();
        assert_eq!((info.go.as_deref(), info.auth_required, info.proto), (Some("go1.22"), true, 1));
    }
}
