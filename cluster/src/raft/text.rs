//! A readable text form of Raft messages, entries and outputs, for
//! transcripts, traces and logs. [`parse_message`] reads what `Display`
//! writes for a [`Message`]; [`parse_entries`] reads entry lists.
//!
//! ```text
//! message := "pre-vote term=T last=I/T"                | "pre-vote-resp term=T " verdict
//!          | "vote term=T last=I/T" [" transfer"]      | "vote-resp term=T " verdict
//!          | "append term=T prev=I/T commit=C" [" entries=[" entry ("; " entry)* "]"]
//!          | "append-resp term=T ok index=I" [" hint=H"] | "append-resp term=T reject index=I hint=H"
//!          | "heartbeat term=T commit=C" [" round=R"]  | "heartbeat-resp term=T" [" round=R"]
//!          | "snapshot term=T at=I/T " config " offset=O data=D" [" done"]
//!          | "snapshot-resp term=T index=I offset=O" [" done"]
//!          | "timeout-now term=T"
//! verdict := "granted" | "refused"
//! entry   := I/T " noop" | I/T " data=D" | I/T " config " config
//! config  := "voters=" nodes [" outgoing=" nodes] [" learners=" nodes]
//! nodes   := "-" (none) | nX ("," nX)*
//! D       := a token of [A-Za-z0-9._:/-] not starting with "0x", or "0x" and hex digits ("0x" alone: empty)
//! ```
//!
//! Outputs print as `send nX <message>`, `persist wN [hard state] [entries=[…]]
//! [snapshot=(…)]`, `apply <entry>`, `apply-snapshot I/T <config> data=D`,
//! `read-ready ctx=C index=I`, `read-failed ctx=C`,
//! `role <role> term=T leader=nX|-`.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use kaelix_core::NodeId;

use super::{Body, Configuration, Entry, EntryPayload, HardState, Message, Output, Role, Snapshot, Write};

/// Displays bytes as a bare token when they are one, else as `0x…` hex.
pub struct Data<'a>(pub &'a [u8]);

impl fmt::Display for Data<'_> {
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

/// Displays a node set as `n1,n2` (`-` when empty).
pub struct Nodes<'a>(pub &'a BTreeSet<NodeId>);

impl fmt::Display for Nodes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (k, n) in self.0.iter().enumerate() {
            if k > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Configuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters={}", Nodes(&self.voters))?;
        if !self.outgoing.is_empty() {
            write!(f, " outgoing={}", Nodes(&self.outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners={}", Nodes(&self.learners))?;
        }
        Ok(())
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ", self.index, self.term)?;
        match &self.payload {
            EntryPayload::Noop => f.write_str("noop"),
            EntryPayload::Normal(data) => write!(f, "data={}", Data(data)),
            EntryPayload::Config(c) => write!(f, "config {c}"),
        }
    }
}

/// Displays entries as `[1/1 noop; 2/1 data=x]`.
pub struct Entries<'a>(pub &'a [Entry]);

impl fmt::Display for Entries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (k, e) in self.0.iter().enumerate() {
            if k > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        f.write_str("]")
    }
}

fn verdict(granted: bool) -> &'static str {
    if granted { "granted" } else { "refused" }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let term = self.term;
        match &self.body {
            Body::PreVote { last_index, last_term } => write!(f, "pre-vote term={term} last={last_index}/{last_term}"),
            Body::PreVoteResponse { granted } => write!(f, "pre-vote-resp term={term} {}", verdict(*granted)),
            Body::Vote { last_index, last_term, transfer } => {
                write!(f, "vote term={term} last={last_index}/{last_term}")?;
                if *transfer { f.write_str(" transfer") } else { Ok(()) }
            }
            Body::VoteResponse { granted } => write!(f, "vote-resp term={term} {}", verdict(*granted)),
            Body::Append { prev_index, prev_term, entries, commit } => {
                write!(f, "append term={term} prev={prev_index}/{prev_term} commit={commit}")?;
                if entries.is_empty() { Ok(()) } else { write!(f, " entries={}", Entries(entries)) }
            }
            Body::AppendResponse { success: true, index, hint } => {
                write!(f, "append-resp term={term} ok index={index}")?;
                if *hint != 0 { write!(f, " hint={hint}") } else { Ok(()) }
            }
            Body::AppendResponse { success: false, index, hint } => {
                write!(f, "append-resp term={term} reject index={index} hint={hint}")
            }
            Body::Heartbeat { commit, round } => {
                write!(f, "heartbeat term={term} commit={commit}")?;
                if *round != 0 { write!(f, " round={round}") } else { Ok(()) }
            }
            Body::HeartbeatResponse { round } => {
                write!(f, "heartbeat-resp term={term}")?;
                if *round != 0 { write!(f, " round={round}") } else { Ok(()) }
            }
            Body::Snapshot { index, snapshot_term, config, offset, data, done } => {
                write!(
                    f,
                    "snapshot term={term} at={index}/{snapshot_term} {config} offset={offset} data={}",
                    Data(data)
                )?;
                if *done { f.write_str(" done") } else { Ok(()) }
            }
            Body::SnapshotResponse { index, offset, done } => {
                write!(f, "snapshot-resp term={term} index={index} offset={offset}")?;
                if *done { f.write_str(" done") } else { Ok(()) }
            }
            Body::TimeoutNow => write!(f, "timeout-now term={term}"),
        }
    }
}

impl fmt::Display for HardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "term={} vote=", self.term)?;
        match self.vote {
            Some(v) => write!(f, "{v}")?,
            None => f.write_str("-")?,
        }
        write!(f, " commit={}", self.commit)?;
        if self.recovering { f.write_str(" recovering") } else { Ok(()) }
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {} data={}", self.index, self.term, self.config, Data(&self.data))
    }
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.id.0)?;
        if let Some(hs) = &self.hard_state {
            write!(f, " {hs}")?;
        }
        if !self.entries.is_empty() {
            write!(f, " entries={}", Entries(&self.entries))?;
        }
        if let Some(s) = &self.snapshot {
            write!(f, " snapshot=({s})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Send { to, message } => write!(f, "send {to} {message}"),
            Output::Persist(w) => write!(f, "persist {w}"),
            Output::Apply(e) => write!(f, "apply {e}"),
            Output::ApplySnapshot(s) => write!(f, "apply-snapshot {s}"),
            Output::ReadReady { ctx, index } => write!(f, "read-ready ctx={ctx} index={index}"),
            Output::ReadFailed { ctx } => write!(f, "read-failed ctx={ctx}"),
            Output::RoleChanged { role, term, leader } => {
                write!(f, "role {role} term={term} leader=")?;
                match leader {
                    Some(l) => write!(f, "{l}"),
                    None => f.write_str("-"),
                }
            }
        }
    }
}

// ----- parsing ---------------------------------------------------------------

/// Parses `nX`.
pub fn parse_node(s: &str) -> Result<NodeId, String> {
    s.strip_prefix('n').and_then(|d| d.parse().ok()).map(NodeId).ok_or_else(|| format!("bad node id {s:?}"))
}

/// Parses `n1,n2` (or `-` for none).
pub fn parse_nodes(s: &str) -> Result<BTreeSet<NodeId>, String> {
    if s == "-" {
        return Ok(BTreeSet::new());
    }
    s.split(',').map(parse_node).collect()
}

/// Parses bytes written by [`Data`].
pub fn parse_data(s: &str) -> Result<Bytes, String> {
    let Some(hex) = s.strip_prefix("0x") else {
        if s.is_empty() {
            return Err("empty data: write 0x".into());
        }
        return Ok(Bytes::copy_from_slice(s.as_bytes()));
    };
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd hex length in {s:?}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex in {s:?}")))
        .collect::<Result<Vec<u8>, String>>()
        .map(Bytes::from)
}

/// The value of `key=value` among `words`.
fn field<'a>(words: &[&'a str], key: &str) -> Result<&'a str, String> {
    optional(words, key).ok_or_else(|| format!("missing {key}= in {:?}", words.join(" ")))
}

fn optional<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn number(words: &[&str], key: &str) -> Result<u64, String> {
    let v = field(words, key)?;
    v.parse().map_err(|_| format!("bad number {key}={v}"))
}

fn optional_number(words: &[&str], key: &str) -> Result<u64, String> {
    match optional(words, key) {
        Some(v) => v.parse().map_err(|_| format!("bad number {key}={v}")),
        None => Ok(0),
    }
}

/// Parses `I/T`.
fn position(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("bad log position {s:?} (want index/term)");
    let (i, t) = s.split_once('/').ok_or_else(bad)?;
    Ok((i.parse().map_err(|_| bad())?, t.parse().map_err(|_| bad())?))
}

fn flag(words: &[&str], yes: &str, no: &str) -> Result<bool, String> {
    match (words.contains(&yes), words.contains(&no)) {
        (true, false) => Ok(true),
        (false, true) => Ok(false),
        _ => Err(format!("want exactly one of {yes} or {no} in {:?}", words.join(" "))),
    }
}

/// Parses a configuration from `voters=… [outgoing=…] [learners=…]` words.
pub fn parse_config(words: &[&str]) -> Result<Configuration, String> {
    let set = |key| optional(words, key).map_or(Ok(BTreeSet::new()), parse_nodes);
    Ok(Configuration {
        voters: parse_nodes(field(words, "voters")?)?,
        outgoing: set("outgoing")?,
        learners: set("learners")?,
    })
}

/// Parses one entry: `I/T noop`, `I/T data=D` or `I/T config voters=…`.
pub fn parse_entry(s: &str) -> Result<Entry, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let [at, kind, rest @ ..] = &words[..] else { return Err(format!("bad entry {s:?}")) };
    let (index, term) = position(at)?;
    let payload = match (*kind, rest) {
        ("noop", []) => EntryPayload::Noop,
        ("config", words) => EntryPayload::Config(parse_config(words)?),
        (data, []) if data.starts_with("data=") => EntryPayload::Normal(parse_data(&data["data=".len()..])?),
        _ => return Err(format!("bad entry {s:?}")),
    };
    Ok(Entry { index, term, payload })
}

/// Parses `[E; E; …]` (as [`Entries`] writes it).
pub fn parse_entries(s: &str) -> Result<Vec<Entry>, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("entries go in brackets: {s:?}"))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner.split(';').map(|e| parse_entry(e.trim())).collect()
}

/// Parses the text form of a message.
pub fn parse_message(s: &str) -> Result<Message, String> {
    // Entries hold spaces: cut them off before splitting into words.
    let (head, entries) = match s.find(" entries=") {
        Some(at) => (&s[..at], Some(parse_entries(s[at + " entries=".len()..].trim())?)),
        None => (s, None),
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    let [kind, rest @ ..] = &words[..] else { return Err("empty message".into()) };
    if entries.is_some() && *kind != "append" {
        return Err(format!("only an append carries entries: {s:?}"));
    }
    let term = number(rest, "term")?;
    let body = match *kind {
        "pre-vote" => {
            let (last_index, last_term) = position(field(rest, "last")?)?;
            Body::PreVote { last_index, last_term }
        }
        "pre-vote-resp" => Body::PreVoteResponse { granted: flag(rest, "granted", "refused")? },
        "vote" => {
            let (last_index, last_term) = position(field(rest, "last")?)?;
            Body::Vote { last_index, last_term, transfer: rest.contains(&"transfer") }
        }
        "vote-resp" => Body::VoteResponse { granted: flag(rest, "granted", "refused")? },
        "append" => {
            let (prev_index, prev_term) = position(field(rest, "prev")?)?;
            Body::Append {
                prev_index,
                prev_term,
                entries: entries.unwrap_or_default(),
                commit: number(rest, "commit")?,
            }
        }
        "append-resp" => Body::AppendResponse {
            success: flag(rest, "ok", "reject")?,
            index: number(rest, "index")?,
            hint: optional_number(rest, "hint")?,
        },
        "heartbeat" => Body::Heartbeat { commit: number(rest, "commit")?, round: optional_number(rest, "round")? },
        "heartbeat-resp" => Body::HeartbeatResponse { round: optional_number(rest, "round")? },
        "snapshot" => {
            let (index, snapshot_term) = position(field(rest, "at")?)?;
            Body::Snapshot {
                index,
                snapshot_term,
                config: parse_config(rest)?,
                offset: number(rest, "offset")?,
                data: parse_data(field(rest, "data")?)?,
                done: rest.contains(&"done"),
            }
        }
        "snapshot-resp" => Body::SnapshotResponse {
            index: number(rest, "index")?,
            offset: number(rest, "offset")?,
            done: rest.contains(&"done"),
        },
        "timeout-now" => Body::TimeoutNow,
        other => return Err(format!("unknown message kind {other:?}")),
    };
    Ok(Message { term, body })
}

#[cfg(test)]
mod tests {
    use super::super::wire::tests::message;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_round_trips(m in message()) {
            prop_assert_eq!(parse_message(&m.to_string()), Ok(m));
        }
    }

    #[test]
    fn reads_what_people_write() {
        let m = parse_message(
            "append term=3 prev=2/1 commit=2 entries=[3/3 noop; 4/3 data=x; 5/3 config voters=n1,n2 learners=n3]",
        )
        .unwrap();
        let Body::Append { prev_index: 2, prev_term: 1, commit: 2, entries } = &m.body else { panic!("{m:?}") };
        assert_eq!(entries[1].payload, EntryPayload::Normal(Bytes::from_static(b"x")));
        let EntryPayload::Config(c) = &entries[2].payload else { panic!("a config entry") };
        assert_eq!((c.voters.len(), c.outgoing.len(), c.learners.len()), (2, 0, 1));
        assert_eq!(
            m.to_string(),
            "append term=3 prev=2/1 commit=2 entries=[3/3 noop; 4/3 data=x; 5/3 config voters=n1,n2 learners=n3]"
        );
        assert_eq!(
            parse_message("append-resp term=2 reject index=7 hint=4").unwrap().body,
            Body::AppendResponse { success: false, index: 7, hint: 4 }
        );
        assert_eq!(Data(b"").to_string(), "0x");
        assert_eq!(Data(b"a b").to_string(), "0x612062");
        assert_eq!(parse_data("0x").unwrap(), Bytes::new());
        assert!(parse_message("vote term=1").is_err(), "missing last=");
        assert!(parse_message("vote-resp term=1 granted refused").is_err());
        assert!(parse_message("heartbeat term=1 commit=0 entries=[1/1 noop]").is_err());
        assert!(parse_message("gossip term=1").is_err());
        assert!(parse_entry("1/1 data=").is_err());
    }

    #[test]
    fn outputs_read_well() {
        let w = Write {
            id: kaelix_core::sansio::WriteId(3),
            snapshot: None,
            entries: vec![Entry { index: 1, term: 2, payload: EntryPayload::Noop }],
            hard_state: Some(HardState { term: 2, vote: Some(NodeId(1)), commit: 0, recovering: false }),
        };
        assert_eq!(Output::Persist(w).to_string(), "persist w3 term=2 vote=n1 commit=0 entries=[1/2 noop]");
        let r = Output::RoleChanged { role: Role::PreCandidate, term: 1, leader: None };
        assert_eq!(r.to_string(), "role pre-candidate term=1 leader=-");
    }
}
