//! The layered loader.
//!
//! Layers, each over the one before: the type's defaults → one TOML file
//! (the explicit path, else the first of the search paths that exists) →
//! environment variables → command-line overrides → validation.
//!
//! The layers are merged as TOML value trees (tables merge key by key; an
//! array replaces the array below it whole), then the tree is deserialized
//! into the configuration type, whose `deny_unknown_fields` makes unknown
//! keys errors. Where an error is blamed:
//!
//! * the file is first deserialized on its own, so syntax, type and
//!   unknown-key errors carry the file's byte span (`file:line:column`, and
//!   the key path found at that position);
//! * each environment variable and each flag is applied and deserialized
//!   one at a time, so a bad one is named by its variable or flag, and the
//!   others are still checked (every bad one is reported, not just the
//!   first);
//! * validation findings name a key path, which the loader maps back to the
//!   layer that set it: the value's position in the file, the variable, the
//!   flag, or `default`.
//!
//! Variables: `PREFIX_` + key path in upper case with `__` between levels
//! (`KAELIX_LIMITS__MAX_PAYLOAD=2048`, `KAELIX_SERVER_NAME=n1`; a number
//! segment indexes an array: `KAELIX_TOPICS__0__PARTITIONS=4`). A value is
//! read as a TOML value when it is one (`2048`, `true`, `["a", "b"]`) and as
//! a string otherwise (`0.0.0.0:4222`). A variable with the prefix that names
//! no key is an error, like an unknown key in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::Origin;
use crate::source::{SpanMap, join, line_column};
use crate::validate::{ConfigValidator, Diagnostic, OsProbe, Phase, Severity, SystemProbe, Validate};

/// Builds and runs one load. Cheap to clone; a [`crate::HotReloadManager`]
/// keeps one to load the file again with the same environment and flags.
#[derive(Clone)]
pub struct ConfigLoader {
    explicit: Option<PathBuf>,
    search_paths: Vec<PathBuf>,
    env_prefix: Option<String>,
    env: Vec<(String, String)>,
    overrides: Vec<(String, Value, String)>,
    probe: Arc<dyn SystemProbe>,
}

impl fmt::Debug for ConfigLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigLoader")
            .field("explicit", &self.explicit)
            .field("search_paths", &self.search_paths)
            .field("env_prefix", &self.env_prefix)
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

impl Default for ConfigLoader {
    fn default() -> Self {
        ConfigLoader::new()
    }
}

/// What a successful load produced.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    /// The effective configuration.
    pub config: T,
    /// Where each effective value (leaf key path) came from.
    pub origins: BTreeMap<String, Origin>,
    /// Findings that did not stop the load.
    pub warnings: Vec<Diagnostic>,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// Its text as read (what a reload compares and backs up).
    pub file_text: Option<String>,
    /// The merged tree, as deserialized.
    pub effective: Table,
}

/// A load that failed: every error found (and the warnings beside them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// Errors first, in the order found, then warnings.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    fn one(origin: Origin, key: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError {
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                origin,
                key: key.into(),
                category: None,
                message: message.into(),
            }],
        }
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for LoadError {
    /// One diagnostic per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

impl ConfigLoader {
    /// Defaults only, validated against the real machine ([`OsProbe`]).
    pub fn new() -> Self {
        ConfigLoader {
            explicit: None,
            search_paths: Vec::new(),
            env_prefix: None,
            env: Vec::new(),
            overrides: Vec::new(),
            probe: Arc::new(OsProbe),
        }
    }

    /// Reads exactly this file (it must exist).
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.explicit = Some(path.into());
        self
    }

    /// Without an explicit path, the first of these that exists is read
    /// (none: defaults only).
    pub fn with_search_paths(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.search_paths = paths.into_iter().collect();
        self
    }

    /// Reads `PREFIX_…` variables from this process's environment (a
    /// snapshot taken now; reloads reuse it).
    #[allow(clippy::disallowed_methods, reason = "the loader's job: the environment layer")]
    pub fn with_env_prefix(self, prefix: &str) -> Self {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        self.with_env_vars(prefix, vars)
    }

    /// The same from given variables (tests; embeddings with their own
    /// environment).
    pub fn with_env_vars(mut self, prefix: &str, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let lead = format!("{prefix}_");
        let mut env: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with(&lead)).collect();
        env.sort();
        self.env_prefix = Some(prefix.to_owned());
        self.env = env;
        self
    }

    /// A command-line value: `key` (a key path) set to `value`, blamed on
    /// `flag` when wrong.
    pub fn with_override(mut self, key: &str, value: impl Into<Value>, flag: &str) -> Self {
        self.overrides.push((key.to_owned(), value.into(), flag.to_owned()));
        self
    }

    /// Validates against this machine instead of the real one.
    pub fn with_probe(mut self, probe: Arc<dyn SystemProbe>) -> Self {
        self.probe = probe;
        self
    }

    /// The probe validations use.
    pub fn probe(&self) -> &Arc<dyn SystemProbe> {
        &self.probe
    }

    /// The file a load would read (explicit, or the first existing search
    /// path).
    #[allow(clippy::disallowed_methods, reason = "the loader's job: find the file")]
    pub fn file(&self) -> Option<PathBuf> {
        self.explicit.clone().or_else(|| self.search_paths.iter().find(|p| p.is_file()).cloned())
    }

    /// Loads and validates for a start.
    pub fn load<T>(&self) -> Result<Loaded<T>, LoadError>
    where
        T: DeserializeOwned + Serialize + Default + Validate,
    {
        let file = self.file();
        let text = match &file {
            Some(path) => Some(read(path)?),
            None => None,
        };
        self.load_text(file.as_deref(), text.as_deref(), Phase::Start)
    }

    /// Loads with the file's text already read (a reload has read it to
    /// compare it; `kaelix config check` names it). `file` names the text
    /// in diagnostics.
    pub fn load_text<T>(&self, file: Option<&Path>, text: Option<&str>, phase: Phase) -> Result<Loaded<T>, LoadError>
    where
        T: DeserializeOwned + Serialize + Default + Validate,
    {
        let mut origins = BTreeMap::new();
        let mut tree = Table::try_from(T::default()).expect("a configuration's defaults serialize to a TOML table");
        for_each_leaf("", &Value::Table(tree.clone()), &mut |path| {
            origins.insert(path, Origin::Default);
        });

        let mut spans = SpanMap::default();
        let shown = file.map(|p| p.display().to_string()).unwrap_or_default();
        if let Some(text) = text {
            let at = |offset: usize| {
                let (line, column) = line_column(text, offset);
                Origin::File { path: shown.clone(), line, column }
            };
            let document = toml::de::DeTable::parse(text).map_err(|e| {
                let origin = e.span().map_or(Origin::File { path: shown.clone(), line: 0, column: 0 }, |s| at(s.start));
                LoadError::one(origin, "", e.message())
            })?;
            spans = SpanMap::of(document.get_ref());
            if let Err(e) = toml::from_str::<T>(text) {
                let (origin, key) = match e.span() {
                    Some(s) => (at(s.start), spans.path_at(s.start).unwrap_or("").to_owned()),
                    None => (Origin::File { path: shown.clone(), line: 0, column: 0 }, String::new()),
                };
                return Err(LoadError::one(origin, key, e.message()));
            }
            let file_tree: Table = toml::from_str(text).expect("parsed above");
            for (key, value) in file_tree {
                let mut set_paths = Vec::new();
                for_each_leaf(&key, &value, &mut |p| set_paths.push(p));
                // Tables merge, so only the leaves set are replaced; an
                // array is replaced whole, so nothing under it survives.
                for p in &set_paths {
                    let root = p.split_once('[').map_or(p.as_str(), |(r, _)| r);
                    forget_under(&mut origins, root);
                }
                merge_into(&mut tree, key, value);
                for p in set_paths {
                    let origin = spans
                        .get(&p)
                        .map_or(Origin::File { path: shown.clone(), line: 0, column: 0 }, |s| at(s.value.start));
                    origins.insert(p, origin);
                }
            }
        }

        // Environment, then flags: each applied alone and checked, so the
        // culprit is named; a bad one is undone and the rest still checked.
        let mut errors = Vec::new();
        let prefix = self.env_prefix.clone().unwrap_or_default();
        let mut layered: Vec<(Vec<Segment>, Value, Origin)> = Vec::new();
        for (var, raw) in &self.env {
            let origin = Origin::Env { var: var.clone() };
            match env_path(&var[prefix.len() + 1..]) {
                Ok(path) => layered.push((path, env_value(raw), origin)),
                Err(why) => errors.push(error(origin, "", why)),
            }
        }
        for (key, value, flag) in &self.overrides {
            let origin = Origin::Flag { flag: flag.clone() };
            match key_path(key) {
                Ok(path) => layered.push((path, value.clone(), origin)),
                Err(why) => errors.push(error(origin, key.as_str(), why)),
            }
        }
        for (path, value, origin) in layered {
            let shown_path = show_path(&path);
            let mut candidate = tree.clone();
            if let Err(why) = set_path(&mut candidate, &path, value.clone()) {
                errors.push(error(origin, shown_path, why));
                continue;
            }
            if let Err(e) = Value::Table(candidate.clone()).try_into::<T>() {
                errors.push(error(origin, shown_path, e.message().to_owned()));
                continue;
            }
            tree = candidate;
            forget_under(&mut origins, &shown_path);
            for_each_leaf(&shown_path, &value, &mut |p| {
                origins.insert(p, origin.clone());
            });
        }
        if !errors.is_empty() {
            return Err(LoadError { diagnostics: errors });
        }

        let config: T = Value::Table(tree.clone())
            .try_into()
            .map_err(|e| LoadError::one(Origin::Default, "", format!("the merged configuration: {}", e.message())))?;

        let findings = ConfigValidator::new(self.probe.as_ref()).for_phase(phase).validate(&config);
        let mut diagnostics: Vec<Diagnostic> = findings
            .iter()
            .map(|f| Diagnostic {
                severity: f.severity,
                origin: locate(&f.key, &origins, &spans, text, &shown),
                key: f.key.clone(),
                category: Some(f.category),
                message: f.message.clone(),
            })
            .collect();
        diagnostics.sort_by_key(|d| d.severity);
        if findings.has_errors() {
            return Err(LoadError { diagnostics });
        }
        Ok(Loaded {
            config,
            origins,
            warnings: diagnostics,
            file: file.map(Path::to_owned),
            file_text: text.map(str::to_owned),
            effective: tree,
        })
    }
}

impl<T: Serialize> Loaded<T> {
    /// The effective configuration as TOML.
    pub fn effective_toml(&self) -> String {
        toml::to_string(&self.effective).expect("a TOML tree prints")
    }

    /// Only the values a file, variable or flag set, as TOML.
    pub fn overrides_toml(&self) -> String {
        let mut tree = Table::new();
        for (path, origin) in &self.origins {
            if *origin != Origin::Default
                && let (Ok(segments), Some(value)) = (key_path(path), lookup(&self.effective, path))
            {
                let _ = set_path_creating(&mut tree, &segments, value.clone());
            }
        }
        toml::to_string(&tree).expect("a TOML tree prints")
    }

    /// `key = value  # origin`, one line per effective leaf (only the
    /// non-default ones unless `all`).
    pub fn origin_lines(&self, all: bool) -> Vec<String> {
        self.origins
            .iter()
            .filter(|(_, o)| all || **o != Origin::Default)
            .map(|(path, origin)| {
                let value = lookup(&self.effective, path).map_or_else(String::new, show_value);
                format!("{path} = {value}  # {origin}")
            })
            .collect()
    }
}

#[allow(clippy::disallowed_methods, reason = "the loader's job: read the file")]
fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| {
        LoadError::one(
            Origin::File { path: path.display().to_string(), line: 0, column: 0 },
            "",
            format!("cannot read: {e}"),
        )
    })
}

fn error(origin: Origin, key: impl Into<String>, message: impl Into<String>) -> Diagnostic {
    Diagnostic { severity: Severity::Error, origin, key: key.into(), category: None, message: message.into() }
}

/// Where a finding about `key` is blamed: the layer that set it, the
/// file's table of that name, a non-default value under it; failing all
/// three, the same for the key around it (a default left in a table the
/// file wrote, an element of an array the file set: `cluster.peers[1]`
/// is blamed on `cluster.peers`); else `default`.
fn locate(key: &str, origins: &BTreeMap<String, Origin>, spans: &SpanMap, text: Option<&str>, shown: &str) -> Origin {
    let mut at = key;
    loop {
        let origin = locate_exactly(at, origins, spans, text, shown);
        if origin != Origin::Default {
            return origin;
        }
        match at.rfind(['.', '[']) {
            Some(cut) if cut > 0 => at = &at[..cut],
            _ => return Origin::Default,
        }
    }
}

fn locate_exactly(
    key: &str,
    origins: &BTreeMap<String, Origin>,
    spans: &SpanMap,
    text: Option<&str>,
    shown: &str,
) -> Origin {
    if let Some(origin) = origins.get(key)
        && *origin != Origin::Default
    {
        return origin.clone();
    }
    let under: Vec<&Origin> =
        origins.iter().filter(|(p, _)| is_under(p, key)).map(|(_, o)| o).filter(|o| **o != Origin::Default).collect();
    if let (Some(span), Some(text)) = (spans.get(key), text)
        && under.iter().any(|o| matches!(o, Origin::File { .. }))
    {
        let (line, column) = line_column(text, span.key.start);
        return Origin::File { path: shown.to_owned(), line, column };
    }
    under.first().map_or(Origin::Default, |o| (*o).clone())
}

/// `path` is `key` or inside it.
fn is_under(path: &str, key: &str) -> bool {
    path == key || (path.starts_with(key) && matches!(path.as_bytes().get(key.len()), Some(b'.' | b'[')))
}

fn forget_under(origins: &mut BTreeMap<String, Origin>, key: &str) {
    origins.retain(|p, _| !is_under(p, key));
}

/// Every leaf key path of `value` (tables and arrays of tables are walked;
/// other arrays are leaves).
fn for_each_leaf(prefix: &str, value: &Value, f: &mut dyn FnMut(String)) {
    match value {
        Value::Table(t) if !t.is_empty() => {
            for (k, v) in t {
                for_each_leaf(&join(prefix, k), v, f);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
            for (i, v) in items.iter().enumerate() {
                for_each_leaf(&format!("{prefix}[{i}]"), v, f);
            }
        }
        _ => f(prefix.to_owned()),
    }
}

/// Tables merge key by key; anything else replaces.
fn merge_into(tree: &mut Table, key: String, value: Value) {
    match (tree.get_mut(&key), value) {
        (Some(Value::Table(below)), Value::Table(above)) => {
            for (k, v) in above {
                merge_into(below, k, v);
            }
        }
        (_, value) => {
            tree.insert(key, value);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn show_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// `LIMITS__MAX_PAYLOAD` → `limits.max_payload`; `TOPICS__0__NAME` →
/// `topics[0].name`.
fn env_path(rest: &str) -> Result<Vec<Segment>, String> {
    let mut path = Vec::new();
    for part in rest.split("__") {
        if part.is_empty() || part.starts_with('_') || part.ends_with('_') {
            return Err(format!("malformed variable name (levels are separated by exactly `__`): {rest:?}"));
        }
        match part.parse::<usize>() {
            Ok(i) if !path.is_empty() => path.push(Segment::Index(i)),
            _ => path.push(Segment::Key(part.to_ascii_lowercase())),
        }
    }
    Ok(path)
}

/// `limits.max_payload`, `topics[0].name` → segments.
fn key_path(key: &str) -> Result<Vec<Segment>, String> {
    let mut path = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() {
            return Err(format!("malformed key path {key:?}"));
        }
        path.push(Segment::Key(name.to_owned()));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']').ok_or_else(|| format!("malformed key path {key:?}"))?;
            path.push(Segment::Index(index.parse().map_err(|_| format!("malformed key path {key:?}"))?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Ok(path)
}

/// A variable's text as a TOML value, else as a string.
fn env_value(raw: &str) -> Value {
    if raw.contains(['\n', '\r']) {
        return Value::String(raw.to_owned());
    }
    match toml::from_str::<Table>(&format!("v = {raw}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").expect("one key v"),
        _ => Value::String(raw.to_owned()),
    }
}

/// Sets an existing or new key (tables are created on the way only where
/// the key is new: deserialization then says whether it is known).
fn set_path(tree: &mut Table, path: &[Segment], value: Value) -> Result<(), String> {
    set_path_creating(tree, path, value)
}

fn set_path_creating(tree: &mut Table, path: &[Segment], value: Value) -> Result<(), String> {
    let (Segment::Key(first), rest) = path.split_first().expect("a key path has a segment") else {
        return Err("a key path starts with a name".to_owned());
    };
    if rest.is_empty() {
        tree.insert(first.clone(), value);
        return Ok(());
    }
    let slot = tree.entry(first.clone()).or_insert_with(|| match rest[0] {
        Segment::Key(_) => Value::Table(Table::new()),
        Segment::Index(_) => Value::Array(Vec::new()),
    });
    set_in_value(slot, first, rest, value)
}

fn set_in_value(slot: &mut Value, at: &str, path: &[Segment], value: Value) -> Result<(), String> {
    match (&path[0], slot) {
        (Segment::Key(_), Value::Table(t)) => set_path_creating(t, path, value),
        (Segment::Index(i), Value::Array(items)) => {
            let len = items.len();
            let item = items.get_mut(*i).ok_or_else(|| format!("{at} has {len} entries: there is no [{i}] to set"))?;
            if path.len() == 1 {
                *item = value;
                Ok(())
            } else {
                set_in_value(item, &format!("{at}[{i}]"), &path[1..], value)
            }
        }
        (Segment::Key(k), _) => Err(format!("{at} is not a table, so it has no key {k:?}")),
        (Segment::Index(i), _) => Err(format!("{at} is not an array, so it has no [{i}]")),
    }
}

/// The value at a key path.
pub fn lookup<'t>(tree: &'t Table, key: &str) -> Option<&'t Value> {
    let path = key_path(key).ok()?;
    let mut at: Option<&Value> = None;
    for s in &path {
        at = match (s, at) {
            (Segment::Key(k), None) => tree.get(k),
            (Segment::Key(k), Some(Value::Table(t))) => t.get(k),
            (Segment::Index(i), Some(Value::Array(a))) => a.get(*i),
            _ => None,
        };
        at?;
    }
    at
}

/// A value on one line, TOML syntax.
pub fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(show_value).collect::<Vec<_>>().join(", ")),
        Value::Table(t) => {
            format!(
                "{{ {} }}",
                t.iter().map(|(k, v)| format!("{k} = {}", show_value(v))).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// Every leaf whose value differs between two trees (present in one only
/// counts), sorted.
pub fn changed_keys(old: &Table, new: &Table) -> Vec<String> {
    let mut old_leaves = BTreeMap::new();
    for_each_leaf("", &Value::Table(old.clone()), &mut |p| {
        old_leaves.insert(p, ());
    });
    let mut keys = std::collections::BTreeSet::new();
    let mut new_leaves = BTreeMap::new();
    for_each_leaf("", &Value::Table(new.clone()), &mut |p| {
        new_leaves.insert(p, ());
    });
    for p in old_leaves.keys().chain(new_leaves.keys()) {
        if lookup(old, p) != lookup(new, p) {
            keys.insert(p.clone());
        }
    }
    keys.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::validate::{Category, Findings, FixedProbe, ValidationContext};

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        name: String,
        net: Net,
        items: Vec<Item>,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Net {
        port: u16,
        max_connections: u32,
    }

    impl Default for Net {
        fn default() -> Self {
            Net { port: 4222, max_connections: 100 }
        }
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: String,
    }

    impl Validate for Demo {
        fn validate(&self, _ctx: &ValidationContext<'_>, f: &mut Findings) {
            if self.net.max_connections == 0 {
                f.error(Category::Network, "net.max_connections", "must be at least 1");
            }
            if self.net.max_connections > 1000 {
                f.warn(Category::Performance, "net.max_connections", "more than 1000");
            }
            if self.name == "bad" {
                f.error(Category::Integration, "net", "bad name with this net");
            }
        }
    }

    fn loader() -> ConfigLoader {
        ConfigLoader::new().with_probe(Arc::new(FixedProbe::default()))
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Loaded<Demo>, LoadError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        loader().with_env_vars("K", env).load_text(Some(Path::new("d.toml")), Some(text), Phase::Start)
    }

    #[test]
    fn layers_apply_in_order_and_record_origins() {
        let l = load("name = \"f\"\n[net]\nport = 1\n", &[("K_NET__PORT", "2"), ("OTHER", "x")]).unwrap();
        assert_eq!(l.config.name, "f");
        assert_eq!(l.config.net.port, 2);
        assert_eq!(l.config.net.max_connections, 100);
        assert_eq!(l.origins["name"], Origin::File { path: "d.toml".into(), line: 1, column: 8 });
        assert_eq!(l.origins["net.port"], Origin::Env { var: "K_NET__PORT".into() });
        assert_eq!(l.origins["net.max_connections"], Origin::Default);
        let l = loader()
            .with_env_vars("K", [("K_NET__PORT".to_owned(), "2".to_owned())])
            .with_override("net.port", 3, "--port")
            .load_text::<Demo>(None, None, Phase::Start)
            .unwrap();
        assert_eq!(l.config.net.port, 3);
        assert_eq!(l.origins["net.port"], Origin::Flag { flag: "--port".into() });
        assert_eq!(l.origin_lines(false), vec!["net.port = 3  # flag --port".to_owned()]);
    }

    #[test]
    fn arrays_replace_and_can_be_indexed_from_the_environment() {
        let l = load("[[items]]\nid = \"a\"\n[[items]]\nid = \"b\"\n", &[("K_ITEMS__1__ID", "c")]).unwrap();
        assert_eq!(l.config.items, vec![Item { id: "a".into() }, Item { id: "c".into() }]);
        assert_eq!(l.origins["items[0].id"], Origin::File { path: "d.toml".into(), line: 2, column: 6 });
        assert_eq!(l.origins["items[1].id"], Origin::Env { var: "K_ITEMS__1__ID".into() });
        let e = load("", &[("K_ITEMS__0__ID", "c")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment K_ITEMS__0__ID: items[0].id: items has 0 entries: there is no [0] to set"
        );
    }

    #[test]
    fn every_bad_variable_is_named() {
        let e = load("", &[("K_NET__PORTT", "1"), ("K_NET__PORT", "big"), ("K_NET____X", "1")]).unwrap_err();
        let lines: Vec<String> = e.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "environment K_NET____X: malformed variable name (levels are separated by exactly `__`): \"NET____X\"",
                "environment K_NET__PORT: net.port: invalid type: string \"big\", expected u16",
                "environment K_NET__PORTT: net.portt: unknown field `portt`, expected `port` or `max_connections`",
            ]
        );
    }

    #[test]
    fn file_errors_carry_position_and_key() {
        let e = load("[net]\nport = 70000\n", &[]).unwrap_err();
        assert_eq!(e.to_string(), "d.toml:2:8: net.port: invalid value: integer `70000`, expected u16");
        let e = load("[net\n", &[]).unwrap_err();
        assert!(e.to_string().starts_with("d.toml:1:5: "), "{e}");
        let e = load("[net]\nmax_connections = 0\n", &[]).unwrap_err();
        assert_eq!(e.to_string(), "d.toml:2:19: net.max_connections: must be at least 1");
        let e = load("name = \"bad\"\n[net]\nport = 5\n", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.toml:2:2: net: bad name with this net",
            "a section finding points at its header's name"
        );
        let e = load("", &[("K_NET__MAX_CONNECTIONS", "0")]).unwrap_err();
        assert_eq!(e.to_string(), "environment K_NET__MAX_CONNECTIONS: net.max_connections: must be at least 1");
        let l = load("[net]\nmax_connections = 5000\n", &[]).unwrap();
        assert_eq!(l.warnings[0].to_string(), "d.toml:2:19: warning: net.max_connections: more than 1000");
    }

    #[test]
    fn env_values_are_toml_when_they_parse() {
        assert_eq!(env_value("12"), Value::Integer(12));
        assert_eq!(env_value("true"), Value::Boolean(true));
        assert_eq!(env_value("0.0.0.0:4222"), Value::String("0.0.0.0:4222".into()));
        assert_eq!(env_value("1\nx = 2"), Value::String("1\nx = 2".into()));
        assert_eq!(env_value("[\"a\"]"), Value::Array(vec![Value::String("a".into())]));
    }

    #[test]
    fn key_paths_round_trip() {
        let p = key_path("topics[3].name").unwrap();
        assert_eq!(p, vec![Segment::Key("topics".into()), Segment::Index(3), Segment::Key("name".into())]);
        assert_eq!(show_path(&p), "topics[3].name");
        assert!(key_path("a..b").is_err());
    }

    #[test]
    fn changed_keys_names_leaves() {
        let a: Table = toml::from_str("x = 1\n[t]\ny = 2\nz = [1]\n").unwrap();
        let b: Table = toml::from_str("x = 1\n[t]\ny = 3\nw = 1\nz = [1, 2]\n").unwrap();
        assert_eq!(changed_keys(&a, &b), vec!["t.w", "t.y", "t.z"]);
        assert!(changed_keys(&a, &a).is_empty());
    }
}
