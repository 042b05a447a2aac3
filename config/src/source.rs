//! Where a value came from, and the positions of every key in a TOML file.
//!
//! A file is parsed twice: once into the configuration type (serde; its
//! syntax and type errors carry byte spans) and once into toml's spanned
//! document tree, walked here into a map from key path (`limits.max_payload`,
//! `topics[1].name`) to the position of the key and of its value. That map
//! is what turns a validation finding about a key path back into
//! `file:line:column`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// The layer an effective value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The type's default.
    Default,
    /// A configuration file, at the value's position.
    File {
        /// The file as it was named (path shown to the user).
        path: String,
        /// 1-based line of the value.
        line: usize,
        /// 1-based column (characters) of the value.
        column: usize,
    },
    /// An environment variable.
    Env {
        /// Its name, e.g. `KAELIX_LIMITS__MAX_PAYLOAD`.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// The flag as typed, e.g. `--nats-listen`.
        flag: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            // Line 0: about the file as a whole (unreadable, no position).
            Origin::File { path, line: 0, .. } => write!(f, "{path}"),
            Origin::File { path, line, column } => write!(f, "{path}:{line}:{column}"),
            Origin::Env { var } => write!(f, "environment {var}"),
            Origin::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// What a diagnostic points at: an origin, or a file position that holds
/// no key (a syntax error).
pub type Location = Origin;

/// Byte offset → 1-based (line, column in characters).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Positions of one key in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpan {
    /// The key itself (for a table: its header).
    pub key: Range<usize>,
    /// The value (for a table: the whole table).
    pub value: Range<usize>,
}

/// Every key path of a parsed file with its positions.
#[derive(Clone, Debug, Default)]
pub struct SpanMap {
    spans: BTreeMap<String, KeySpan>,
}

impl SpanMap {
    /// Walks a parsed document.
    pub fn of(document: &DeTable<'_>) -> SpanMap {
        let mut map = SpanMap::default();
        map.walk_table("", document);
        map
    }

    fn walk_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = join(prefix, key.get_ref());
            self.spans.insert(path.clone(), KeySpan { key: key.span(), value: value.span() });
            self.walk_value(&path, value.get_ref());
        }
    }

    fn walk_value(&mut self, path: &str, value: &DeValue<'_>) {
        match value {
            DeValue::Table(t) => self.walk_table(path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    self.spans.insert(item_path.clone(), KeySpan { key: item.span(), value: item.span() });
                    self.walk_value(&item_path, item.get_ref());
                }
            }
            _ => {}
        }
    }

    /// The positions of `path`, if the file names it.
    pub fn get(&self, path: &str) -> Option<&KeySpan> {
        self.spans.get(path)
    }

    /// The key path whose key or value span most narrowly holds `offset`
    /// (what a serde error at that offset is about).
    pub fn path_at(&self, offset: usize) -> Option<&str> {
        self.spans
            .iter()
            .filter(|(_, s)| s.key.contains(&offset) || s.value.contains(&offset))
            // Narrowest span; on a tie (an array and its only item) the
            // deeper path.
            .min_by_key(|(p, s)| {
                let width = if s.key.contains(&offset) { s.key.end - s.key.start } else { s.value.end - s.value.start };
                (width, std::cmp::Reverse(p.len()))
            })
            .map(|(p, _)| p.as_str())
    }
}

/// `prefix.key`, or `key` at the top.
pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters: the value is column 6.
        assert_eq!(line_column(text, 12), (2, 6));
        assert_eq!(line_column(text, 999), (3, 1), "past the end clamps");
    }

    #[test]
    fn spans_cover_nested_tables_and_arrays_of_tables() {
        let text = "[limits]\nmax_payload = 5\n[[topics]]\nname = \"a\"\n[[topics]]\nname = \"b\"\n";
        let doc = DeTable::parse(text).unwrap();
        let map = SpanMap::of(doc.get_ref());
        let v = map.get("limits.max_payload").unwrap();
        assert_eq!(line_column(text, v.value.start), (2, 15));
        let n = map.get("topics[1].name").unwrap();
        assert_eq!(line_column(text, n.value.start), (6, 8));
        assert_eq!(map.path_at(v.value.start), Some("limits.max_payload"));
        assert_eq!(map.path_at(n.key.start), Some("topics[1].name"));
    }
}
