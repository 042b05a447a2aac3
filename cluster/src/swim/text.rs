//! A readable text form of packets, events and members, for transcripts,
//! traces and logs. [`parse_packet`] reads what `Display` writes.
//!
//! ```text
//! packet  := message (" | " update)*
//! message := "ping seq=N" | "ping-req seq=N target=nX" [" nack"] | "ack seq=N" | "nack seq=N"
//!          | "join" | "sync" | "gossip"
//! update  := "alive nX inc=N" [" meta=M"] | "suspect nX inc=N by=nY" | "dead nX inc=N" | "left nX inc=N"
//! M       := a token of [A-Za-z0-9._:/-] not starting with "0x", or "0x" and hex digits
//! ```

use std::fmt;

use bytes::Bytes;
use kaelix_core::NodeId;

use super::wire::{MAX_METADATA, Message, Packet, Update, UpdateKind};
use super::{MemberInfo, MemberState, MembershipEvent, MembershipEventKind};

/// Displays metadata as a bare token when it is one, else as `0x…` hex.
pub struct Meta<'a>(pub &'a [u8]);

impl fmt::Display for Meta<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = !self.0.is_empty()
            && !self.0.starts_with(b"0x")
            && self.0.iter().all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(b));
        if bare {
            f.write_str(std::str::from_utf8(self.0).expect("ascii"))
        } else {
            f.write_str("0x")?;
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

fn meta_suffix(f: &mut fmt::Formatter<'_>, metadata: &[u8]) -> fmt::Result {
    if metadata.is_empty() { Ok(()) } else { write!(f, " meta={}", Meta(metadata)) }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Message::Ping { seq } => write!(f, "ping seq={seq}"),
            Message::PingReq { seq, target, nack } => {
                write!(f, "ping-req seq={seq} target={target}{}", if nack { " nack" } else { "" })
            }
            Message::Ack { seq } => write!(f, "ack seq={seq}"),
            Message::Nack { seq } => write!(f, "nack seq={seq}"),
            Message::Join => f.write_str("join"),
            Message::Sync => f.write_str("sync"),
            Message::Gossip => f.write_str("gossip"),
        }
    }
}

impl fmt::Display for Update {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, i) = (self.member, self.incarnation);
        match &self.kind {
            UpdateKind::Alive { metadata } => {
                write!(f, "alive {m} inc={i}")?;
                meta_suffix(f, metadata)
            }
            UpdateKind::Suspect { accuser } => write!(f, "suspect {m} inc={i} by={accuser}"),
            UpdateKind::Dead => write!(f, "dead {m} inc={i}"),
            UpdateKind::Left => write!(f, "left {m} inc={i}"),
        }
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        self.updates.iter().try_for_each(|u| write!(f, " | {u}"))
    }
}

impl fmt::Display for MembershipEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MembershipEventKind::Joined => "joined",
            MembershipEventKind::Suspect => "suspect",
            MembershipEventKind::Alive => "alive",
            MembershipEventKind::Dead => "dead",
            MembershipEventKind::Left => "left",
            MembershipEventKind::Updated => "updated",
        })
    }
}

impl fmt::Display for MembershipEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} inc={}", self.kind, self.member, self.incarnation)?;
        meta_suffix(f, &self.metadata)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        })
    }
}

impl fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} inc={}", self.id, self.state, self.incarnation)?;
        meta_suffix(f, &self.metadata)
    }
}

/// Parses `nX`.
pub fn parse_node(s: &str) -> Result<NodeId, String> {
    s.strip_prefix('n').and_then(|d| d.parse().ok()).map(NodeId).ok_or_else(|| format!("bad node id {s:?}"))
}

/// Parses metadata written by [`Meta`].
pub fn parse_metadata(s: &str) -> Result<Bytes, String> {
    let bytes = if let Some(hex) = s.strip_prefix("0x") {
        if !hex.len().is_multiple_of(2) {
            return Err(format!("odd hex length in {s:?}"));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex in {s:?}")))
            .collect::<Result<Vec<u8>, String>>()?
    } else {
        s.as_bytes().to_vec()
    };
    if bytes.len() > MAX_METADATA {
        return Err(format!("metadata of {} bytes exceeds {MAX_METADATA}", bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

/// The value of `key=value` among `words`.
fn field<'a>(words: &[&'a str], key: &str) -> Result<&'a str, String> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .ok_or_else(|| format!("missing {key}= in {:?}", words.join(" ")))
}

fn number(words: &[&str], key: &str) -> Result<u64, String> {
    let v = field(words, key)?;
    v.parse().map_err(|_| format!("bad number {key}={v}"))
}

fn parse_message(s: &str) -> Result<Message, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let rest = words.get(1..).unwrap_or(&[]);
    Ok(match words.first().copied() {
        Some("ping") => Message::Ping { seq: number(rest, "seq")? },
        Some("ping-req") => Message::PingReq {
            seq: number(rest, "seq")?,
            target: parse_node(field(rest, "target")?)?,
            nack: rest.contains(&"nack"),
        },
        Some("ack") => Message::Ack { seq: number(rest, "seq")? },
        Some("nack") => Message::Nack { seq: number(rest, "seq")? },
        Some("join") => Message::Join,
        Some("sync") => Message::Sync,
        Some("gossip") => Message::Gossip,
        _ => return Err(format!("unknown message {s:?}")),
    })
}

fn parse_update(s: &str) -> Result<Update, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let [kind, member, rest @ ..] = &words[..] else { return Err(format!("bad update {s:?}")) };
    let member = parse_node(member)?;
    let incarnation = number(rest, "inc")?;
    let kind = match *kind {
        "alive" => UpdateKind::Alive {
            metadata: match field(rest, "meta") {
                Ok(m) => parse_metadata(m)?,
                Err(_) => Bytes::new(),
            },
        },
        "suspect" => UpdateKind::Suspect { accuser: parse_node(field(rest, "by")?)? },
        "dead" => UpdateKind::Dead,
        "left" => UpdateKind::Left,
        other => return Err(format!("unknown update kind {other:?}")),
    };
    Ok(Update { member, incarnation, kind })
}

/// Parses the text form of a packet.
pub fn parse_packet(s: &str) -> Result<Packet, String> {
    let mut parts = s.split('|');
    let message = parse_message(parts.next().unwrap_or(""))?;
    let updates = parts.map(parse_update).collect::<Result<Vec<_>, _>>()?;
    Ok(Packet { message, updates })
}

#[cfg(test)]
mod tests {
    use super::super::wire::tests::packet;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_round_trips(p in packet()) {
            prop_assert_eq!(parse_packet(&p.to_string()), Ok(p));
        }
    }

    #[test]
    fn reads_what_people_write() {
        let p = parse_packet("ping-req seq=3 target=n7 nack | alive n2 inc=4 meta=web:8080 | suspect n7 inc=1 by=n2")
            .unwrap();
        assert_eq!(p.message, Message::PingReq { seq: 3, target: NodeId(7), nack: true });
        assert_eq!(
            p.updates[0],
            Update { member: NodeId(2), incarnation: 4, kind: UpdateKind::Alive { metadata: Bytes::from("web:8080") } }
        );
        assert_eq!(
            p.to_string(),
            "ping-req seq=3 target=n7 nack | alive n2 inc=4 meta=web:8080 | suspect n7 inc=1 by=n2"
        );
        assert_eq!(Meta(b"a b").to_string(), "0x612062");
        assert_eq!(Meta(b"0xab").to_string(), "0x30786162");
        assert!(parse_packet("pong seq=1").is_err());
        assert!(parse_packet("ping").is_err());
        assert!(parse_packet("ack seq=1 | dead x3 inc=1").is_err());
    }
}
