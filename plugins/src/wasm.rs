//! WebAssembly processors in a wasmtime sandbox (feature `wasm`).
//!
//! # The sandbox
//!
//! A [`WasmProcessor`] is a [`StreamProcessor`] over one instance of a
//! compiled module. The guest sees nothing of the host but the small API
//! below: no WASI, no clock, no randomness, no files — a module importing
//! anything else is refused when it is loaded. Three limits hold:
//!
//! * **Fuel** ([`WasmLimits::fuel_per_message`]): every message starts the
//!   call with this much fuel; running out traps (`out of fuel`), the
//!   message is dead-lettered and the call counts as a failure. Fuel counts
//!   executed instructions, so the same message costs the same on every
//!   machine and under the simulator (wall-clock interruption — epochs —
//!   would not be deterministic, and is not used).
//! * **Memory** ([`WasmLimits::max_memory_bytes`]): linear memory may not
//!   grow past it (a `memory.grow` beyond traps); one memory, one table,
//!   one instance per store.
//! * **Permissions** ([`Permissions`]): `publish` to a topic outside the
//!   set, or reading or changing a header outside it, traps at the call
//!   (`may not publish to …`, `may not touch header …`). The chain checks
//!   the resulting action again, as for native plugins.
//!
//! After any trap the instance is discarded and a fresh one is made for the
//! next message, so a guest left half-way cannot carry broken state on.
//!
//! # The guest's side (ABI)
//!
//! The module exports `memory`, `alloc(len: i32) -> i32` (where the host
//! may write `len` bytes: the payload) and
//! `process(payload: i32, len: i32) -> i32`, which answers
//! `0` (continue, with any changes made through the API), `1` (drop) or
//! `2` (reject: dead-letter, reason from `reject`).
//!
//! Host functions, module `kaelix` (pointers and lengths are `i32` into the
//! guest's memory; a range outside memory traps):
//!
//! | function | does |
//! |---|---|
//! | `topic(out, cap) -> len` | copies the message's topic (up to `cap` bytes), returns its full length |
//! | `header(name, name_len, out, cap) -> len` | copies a header's value, returns its full length, `-1` if absent |
//! | `set_header(name, name_len, value, value_len)` | sets a header on the outgoing message |
//! | `remove_header(name, name_len)` | removes a header from the outgoing message |
//! | `set_payload(ptr, len)` | replaces the outgoing payload |
//! | `publish(topic, topic_len, ptr, len)` | routes a copy with this payload to `topic` (ends the chain: the message goes on as the first routed message unless the guest drops it) |
//! | `reject(ptr, len)` | the reason used when `process` returns `2` |
//!
//! With `publish` used, `0` routes the outgoing message plus the published
//! ones, `1` routes only the published ones.

use std::sync::Arc;

use bytes::Bytes;
use kaelix_broker::message::Message;
use kaelix_broker::topic::Topic;
use semver::Version;
use wasmtime::{
    Caller, Config, Engine, Instance, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};

use crate::plugin::{Action, Permissions, Plugin, PluginContext, PluginError, StreamProcessor, rebuild};

/// The limits of one sandboxed instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WasmLimits {
    /// Fuel each message starts with (about one unit per instruction).
    pub fuel_per_message: u64,
    /// Most bytes of linear memory.
    pub max_memory_bytes: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits { fuel_per_message: 1_000_000, max_memory_bytes: 1 << 20 }
    }
}

/// A wasmtime engine set up for plugins (fuel on, small memory
/// reservations); one per process, shared by every module.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
}

impl WasmEngine {
    /// The engine.
    pub fn new() -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.consume_fuel(true);
        // A plugin's memory is small: reserve what the limit needs rather
        // than the default 4 GiB of address space per instance, and check
        // bounds explicitly instead of relying on guard pages.
        config.memory_reservation(16 << 20);
        config.memory_guard_size(64 << 10);
        config.memory_reservation_for_growth(0);
        config.max_wasm_stack(256 << 10);
        let engine = Engine::new(&config).map_err(|e| PluginError(format!("wasm engine: {e}")))?;
        Ok(WasmEngine { engine })
    }

    /// Compiles a module from WebAssembly binary or WAT text, refusing one
    /// that imports anything outside the host API or lacks the exports.
    pub fn compile(&self, bytes: &[u8]) -> Result<WasmModule, PluginError> {
        let module = Module::new(&self.engine, bytes).map_err(|e| PluginError(format!("invalid module: {e:#}")))?;
        for import in module.imports() {
            if import.module() != "kaelix" || !HOST_FUNCTIONS.contains(&import.name()) {
                return Err(PluginError(format!(
                    "module imports {}::{}, which the host does not provide (host API: kaelix::{{{}}})",
                    import.module(),
                    import.name(),
                    HOST_FUNCTIONS.join(", ")
                )));
            }
        }
        for (name, what) in [("memory", "a memory"), ("alloc", "a function"), ("process", "a function")] {
            if module.get_export(name).is_none() {
                return Err(PluginError(format!("module does not export {name} ({what})")));
            }
        }
        Ok(WasmModule { module: Arc::new(module), engine: self.clone() })
    }
}

/// The host functions a guest may import (module `kaelix`).
pub const HOST_FUNCTIONS: [&str; 7] =
    ["topic", "header", "set_header", "remove_header", "set_payload", "publish", "reject"];

/// A compiled module (cheap to clone; instances share the code).
#[derive(Clone)]
pub struct WasmModule {
    module: Arc<Module>,
    engine: WasmEngine,
}

/// What the guest did to the message during one call.
#[derive(Default)]
struct Call {
    message: Option<Message>,
    payload: Option<Vec<u8>>,
    header_changes: Vec<(String, Option<Bytes>)>,
    published: Vec<(Topic, Vec<u8>)>,
    reason: Option<String>,
}

struct Host {
    limits: StoreLimits,
    permissions: Permissions,
    call: Call,
}

struct Live {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    process: TypedFunc<(i32, i32), i32>,
}

/// A sandboxed processor: one instance of a [`WasmModule`] (see the
/// module docs).
pub struct WasmProcessor {
    name: String,
    version: Version,
    module: WasmModule,
    limits: WasmLimits,
    permissions: Permissions,
    live: Option<Live>,
    /// Fuel the last completed call consumed.
    last_fuel_used: u64,
}

impl WasmProcessor {
    /// A processor named `name` at `version`, running `module` within
    /// `limits` and `permissions`. Instantiated at initialization.
    pub fn new(
        name: impl Into<String>,
        version: Version,
        module: WasmModule,
        limits: WasmLimits,
        permissions: Permissions,
    ) -> Self {
        WasmProcessor { name: name.into(), version, module, limits, permissions, live: None, last_fuel_used: 0 }
    }

    /// Fuel the last completed call consumed (the same for the same
    /// message and module on every machine).
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// Bytes of linear memory the live instance holds (0 when none).
    pub fn memory_bytes(&self) -> usize {
        self.live.as_ref().map_or(0, |l| l.memory.data_size(&l.store))
    }

    fn instantiate(&self) -> Result<Live, PluginError> {
        let host = Host {
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.max_memory_bytes)
                .memories(1)
                .tables(1)
                .instances(1)
                .trap_on_grow_failure(true)
                .build(),
            permissions: self.permissions.clone(),
            call: Call::default(),
        };
        let mut store = Store::new(&self.module.engine.engine, host);
        store.limiter(|h| &mut h.limits);
        // Start-up code runs on the first message's budget.
        store.set_fuel(self.limits.fuel_per_message).map_err(wasm_error)?;
        let linker = linker(&self.module.engine.engine).map_err(wasm_error)?;
        let instance: Instance = linker.instantiate(&mut store, &self.module.module).map_err(wasm_error)?;
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| PluginError::new("no memory export"))?;
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "alloc").map_err(wasm_error)?;
        let process = instance.get_typed_func::<(i32, i32), i32>(&mut store, "process").map_err(wasm_error)?;
        Ok(Live { store, memory, alloc, process })
    }

    fn call(&mut self, message: &Message) -> Result<Action, PluginError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        let live = self.live.as_mut().expect("just made");
        live.store.set_fuel(self.limits.fuel_per_message).map_err(wasm_error)?;
        live.store.data_mut().call = Call { message: Some(message.clone()), ..Call::default() };
        let payload = message.payload();
        let len = i32::try_from(payload.len()).map_err(|_| PluginError::new("payload too large for a wasm guest"))?;
        let result = (|| {
            let ptr = live.alloc.call(&mut live.store, len)?;
            live.memory.write(&mut live.store, ptr as u32 as usize, payload)?;
            live.process.call(&mut live.store, (ptr, len))
        })();
        let code = match result {
            Ok(code) => code,
            Err(e) => {
                // A trapped instance may hold half-done state: start afresh.
                self.live = None;
                return Err(wasm_error(e));
            }
        };
        self.last_fuel_used = self.limits.fuel_per_message - live.store.get_fuel().map_err(wasm_error)?;
        let call = std::mem::take(&mut live.store.data_mut().call);
        outcome(message, call, code)
    }
}

/// The action a finished call amounts to.
fn outcome(message: &Message, call: Call, code: i32) -> Result<Action, PluginError> {
    let changed = call.payload.is_some() || !call.header_changes.is_empty();
    let outgoing = || with_changes(message, call.payload.as_deref(), &call.header_changes);
    let routed = |first: Option<Message>| -> Result<Vec<Message>, PluginError> {
        let mut all: Vec<Message> = first.into_iter().collect();
        for (topic, payload) in &call.published {
            let m = rebuild(message)
                .topic(topic.clone())
                .payload(payload.clone())
                .build()
                .map_err(|e| PluginError(format!("guest published an invalid message: {e}")))?;
            all.push(m);
        }
        Ok(all)
    };
    match code {
        0 if !call.published.is_empty() => Ok(Action::Route(routed(Some(outgoing()?))?)),
        0 if changed => Ok(Action::Replace(outgoing()?)),
        0 => Ok(Action::Pass),
        1 if !call.published.is_empty() => Ok(Action::Route(routed(None)?)),
        1 => Ok(Action::Drop),
        2 => Ok(Action::DeadLetter(call.reason.unwrap_or_else(|| "rejected by the guest".to_owned()))),
        other => Err(PluginError(format!("process returned {other} (0 continue, 1 drop, 2 reject)"))),
    }
}

/// `message` with the guest's payload and header changes applied (headers
/// keep their order; a set header that existed keeps its place).
fn with_changes(
    message: &Message,
    payload: Option<&[u8]>,
    header_changes: &[(String, Option<Bytes>)],
) -> Result<Message, PluginError> {
    let mut headers: Vec<(String, Bytes)> = message.headers().iter().map(|(n, v)| (n.to_owned(), v.clone())).collect();
    for (name, value) in header_changes {
        match (headers.iter().position(|(n, _)| n == name), value) {
            (Some(i), Some(v)) => headers[i].1 = v.clone(),
            (Some(i), None) => {
                headers.remove(i);
            }
            (None, Some(v)) => headers.push((name.clone(), v.clone())),
            (None, None) => {}
        }
    }
    let mut b = Message::builder()
        .topic(message.topic().clone())
        .payload(payload.map_or_else(|| message.payload().clone(), Bytes::copy_from_slice))
        .id(message.id())
        .timestamp(message.timestamp());
    if let Some(k) = message.key() {
        b = b.key(k.clone());
    }
    if let Some(r) = message.reply_to() {
        b = b.reply_to(r.clone());
    }
    if let Some(o) = message.origin() {
        b = b.origin(o);
    }
    if let Some(p) = message.partition() {
        b = b.partition(p);
    }
    for (n, v) in headers {
        b = b.header(n, v);
    }
    b.build().map_err(|e| PluginError(format!("guest built an invalid message: {e}")))
}

/// A wasmtime error as a plugin error (`out of fuel`, the trap, or the
/// host's refusal).
fn wasm_error(e: wasmtime::Error) -> PluginError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginError::new("out of fuel"),
        Some(trap) => PluginError(trap.to_string()),
        // A host refusal or a load error: its own text, without the wasm
        // backtrace wasmtime attaches as context (multi-line, and a dead
        // letter's reason is one header line).
        None => PluginError(one_line(&e.root_cause().to_string())),
    }
}

/// `text` on one line (newlines become `; `), as a header value must be.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Reads `len` bytes at `ptr` of the caller's memory.
fn read(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let memory =
        caller.get_export("memory").and_then(|e| e.into_memory()).ok_or_else(|| wasmtime::format_err!("no memory"))?;
    let mut buf = vec![0; usize::try_from(len).map_err(|_| wasmtime::format_err!("negative length"))?];
    memory.read(&*caller, ptr as u32 as usize, &mut buf)?;
    Ok(buf)
}

fn read_str(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> wasmtime::Result<String> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| wasmtime::format_err!("text is not UTF-8"))
}

/// Copies `bytes` to `out` (at most `cap` bytes); returns the full length.
fn write_out(caller: &mut Caller<'_, Host>, bytes: &[u8], out: i32, cap: i32) -> wasmtime::Result<i32> {
    let memory =
        caller.get_export("memory").and_then(|e| e.into_memory()).ok_or_else(|| wasmtime::format_err!("no memory"))?;
    let n = bytes.len().min(usize::try_from(cap).unwrap_or(0));
    memory.write(&mut *caller, out as u32 as usize, &bytes[..n])?;
    Ok(i32::try_from(bytes.len()).unwrap_or(i32::MAX))
}

fn linker(engine: &Engine) -> wasmtime::Result<Linker<Host>> {
    let mut l = Linker::new(engine);
    l.func_wrap("kaelix", "topic", |mut c: Caller<'_, Host>, out: i32, cap: i32| {
        let topic = c.data().call.message.as_ref().map(|m| m.topic().as_str().to_owned()).unwrap_or_default();
        write_out(&mut c, topic.as_bytes(), out, cap)
    })?;
    l.func_wrap("kaelix", "header", |mut c: Caller<'_, Host>, name: i32, name_len: i32, out: i32, cap: i32| {
        let name = read_str(&mut c, name, name_len)?;
        if !c.data().permissions.may_touch_header(&name) {
            wasmtime::bail!("may not touch header {name:?}");
        }
        let value = c.data().call.message.as_ref().and_then(|m| m.headers().get(&name).cloned());
        match value {
            Some(v) => write_out(&mut c, &v, out, cap),
            None => Ok(-1),
        }
    })?;
    l.func_wrap(
        "kaelix",
        "set_header",
        |mut c: Caller<'_, Host>, name: i32, name_len: i32, value: i32, value_len: i32| {
            let name = read_str(&mut c, name, name_len)?;
            if !c.data().permissions.may_touch_header(&name) {
                wasmtime::bail!("may not touch header {name:?}");
            }
            let value = read(&mut c, value, value_len)?;
            c.data_mut().call.header_changes.push((name, Some(Bytes::from(value))));
            Ok(())
        },
    )?;
    l.func_wrap("kaelix", "remove_header", |mut c: Caller<'_, Host>, name: i32, name_len: i32| {
        let name = read_str(&mut c, name, name_len)?;
        if !c.data().permissions.may_touch_header(&name) {
            wasmtime::bail!("may not touch header {name:?}");
        }
        c.data_mut().call.header_changes.push((name, None));
        Ok(())
    })?;
    l.func_wrap("kaelix", "set_payload", |mut c: Caller<'_, Host>, ptr: i32, len: i32| {
        let payload = read(&mut c, ptr, len)?;
        c.data_mut().call.payload = Some(payload);
        Ok(())
    })?;
    l.func_wrap("kaelix", "publish", |mut c: Caller<'_, Host>, topic: i32, topic_len: i32, ptr: i32, len: i32| {
        let topic = read_str(&mut c, topic, topic_len)?;
        let topic = Topic::new(&topic).map_err(|e| wasmtime::format_err!("invalid topic {topic:?}: {e}"))?;
        if !c.data().permissions.may_publish(&topic) {
            wasmtime::bail!("may not publish to {topic}");
        }
        let payload = read(&mut c, ptr, len)?;
        c.data_mut().call.published.push((topic, payload));
        Ok(())
    })?;
    l.func_wrap("kaelix", "reject", |mut c: Caller<'_, Host>, ptr: i32, len: i32| {
        let reason = String::from_utf8_lossy(&read(&mut c, ptr, len)?).into_owned();
        c.data_mut().call.reason = Some(reason);
        Ok(())
    })?;
    Ok(l)
}

impl Plugin for WasmProcessor {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> Version {
        self.version.clone()
    }

    fn initialize(&mut self, _context: &PluginContext) -> Result<(), PluginError> {
        self.live = Some(self.instantiate()?);
        Ok(())
    }

    fn shutdown(&mut self) {
        self.live = None;
    }
}

impl StreamProcessor for WasmProcessor {
    fn process(&mut self, message: &Message) -> Result<Action, PluginError> {
        self.call(message)
    }
}

/// A guest that passes every message on unchanged (the smallest valid
/// module: what the call-overhead benchmark runs).
pub const PASS_THROUGH_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "process") (param i32 i32) (result i32) (i32.const 0)))"#;

/// A guest that shows the host API, deciding by the payload's first byte:
/// `d` drop, `r` reject ("nope"), `l` loop forever (runs out of fuel),
/// `g` grow memory by 100 pages (past a 1 MiB limit), `p` publish a copy
/// to `out.x`, `s` publish to `secret`, `h` set header `tag: wasm`, `a` set
/// header `auth: wasm`, `u` upper-case the payload; anything else passes.
pub const DEMO_WAT: &str = r#"(module
  (import "kaelix" "publish" (func $publish (param i32 i32 i32 i32)))
  (import "kaelix" "set_header" (func $set_header (param i32 i32 i32 i32)))
  (import "kaelix" "reject" (func $reject (param i32 i32)))
  (import "kaelix" "set_payload" (func $set_payload (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "nope")
  (data (i32.const 16) "out.x")
  (data (i32.const 32) "secret")
  (data (i32.const 48) "tag")
  (data (i32.const 64) "wasm")
  (data (i32.const 80) "auth")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "process") (param $ptr i32) (param $len i32) (result i32)
    (local $c i32) (local $i i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    (local.set $c (i32.load8_u (local.get $ptr)))
    (if (i32.eq (local.get $c) (i32.const 100)) (then (return (i32.const 1))))
    (if (i32.eq (local.get $c) (i32.const 114)) (then
      (call $reject (i32.const 0) (i32.const 4)) (return (i32.const 2))))
    (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $spin (br $spin))))
    (if (i32.eq (local.get $c) (i32.const 103)) (then (drop (memory.grow (i32.const 100)))))
    (if (i32.eq (local.get $c) (i32.const 112)) (then
      (call $publish (i32.const 16) (i32.const 5) (local.get $ptr) (local.get $len))))
    (if (i32.eq (local.get $c) (i32.const 115)) (then
      (call $publish (i32.const 32) (i32.const 6) (local.get $ptr) (local.get $len))))
    (if (i32.eq (local.get $c) (i32.const 104)) (then
      (call $set_header (i32.const 48) (i32.const 3) (i32.const 64) (i32.const 4))))
    (if (i32.eq (local.get $c) (i32.const 97)) (then
      (call $set_header (i32.const 80) (i32.const 4) (i32.const 64) (i32.const 4))))
    (if (i32.eq (local.get $c) (i32.const 117)) (then
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (local.get $ptr) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (call $set_payload (local.get $ptr) (local.get $len))))
    (i32.const 0)))"#;

#[cfg(test)]
mod tests {
    use kaelix_broker::topic::Pattern;

    use super::*;

    fn processor(limits: WasmLimits, permissions: Permissions) -> WasmProcessor {
        let engine = WasmEngine::new().unwrap();
        let module = engine.compile(DEMO_WAT.as_bytes()).unwrap();
        let mut p = WasmProcessor::new("demo", Version::new(1, 0, 0), module, limits, permissions);
        p.initialize(&PluginContext::default()).unwrap();
        p
    }

    fn msg(payload: &str) -> Message {
        Message::builder().topic("in.a").payload(payload.to_owned()).header("keep", "1").build().unwrap()
    }

    fn perms() -> Permissions {
        Permissions {
            read: vec![Pattern::new("in.>").unwrap()],
            publish: vec![Pattern::new("out.*").unwrap()],
            headers: Some(vec!["tag".into()]),
        }
    }

    #[test]
    fn decisions_come_back_as_actions() {
        let mut p = processor(WasmLimits::default(), perms());
        assert!(matches!(p.process(&msg("x")).unwrap(), Action::Pass));
        assert!(matches!(p.process(&msg("d")).unwrap(), Action::Drop));
        assert!(matches!(p.process(&msg("r")).unwrap(), Action::DeadLetter(r) if r == "nope"));
        let Action::Replace(up) = p.process(&msg("up and away")).unwrap() else { panic!("replaced") };
        assert_eq!(up.payload().as_ref(), b"UP AND AWAY");
        let Action::Replace(tagged) = p.process(&msg("h")).unwrap() else { panic!("replaced") };
        let headers: Vec<(&str, &[u8])> = tagged.headers().iter().map(|(n, v)| (n, v.as_ref())).collect();
        assert_eq!(headers, [("keep", &b"1"[..]), ("tag", b"wasm")]);
        let Action::Route(routed) = p.process(&msg("pub")).unwrap() else { panic!("routed") };
        let topics: Vec<&str> = routed.iter().map(|m| m.topic().as_str()).collect();
        assert_eq!(topics, ["in.a", "out.x"]);
        assert_eq!(routed[1].payload().as_ref(), b"pub");
    }

    #[test]
    fn permissions_are_enforced_at_the_host_call() {
        let mut p = processor(WasmLimits::default(), perms());
        assert_eq!(p.process(&msg("secret")).unwrap_err().0, "may not publish to secret");
        assert_eq!(p.process(&msg("a")).unwrap_err().0, "may not touch header \"auth\"");
        // The instance was replaced after the trap and serves on.
        assert!(matches!(p.process(&msg("x")).unwrap(), Action::Pass));
    }

    #[test]
    fn fuel_stops_a_runaway_guest_deterministically() {
        let mut p = processor(WasmLimits { fuel_per_message: 10_000, ..WasmLimits::default() }, perms());
        assert_eq!(p.process(&msg("loop")).unwrap_err().0, "out of fuel");
        assert!(matches!(p.process(&msg("up")).unwrap(), Action::Replace(_)));
        let used = p.last_fuel_used();
        assert!(used > 0 && used < 10_000);
        let mut again = processor(WasmLimits { fuel_per_message: 10_000, ..WasmLimits::default() }, perms());
        again.process(&msg("up")).unwrap();
        assert_eq!(again.last_fuel_used(), used, "the same message costs the same fuel");
        p.process(&msg("upupupup")).unwrap();
        assert!(p.last_fuel_used() > used, "a longer payload costs more");
    }

    #[test]
    fn memory_past_the_limit_traps() {
        let mut p = processor(WasmLimits { max_memory_bytes: 1 << 20, ..WasmLimits::default() }, perms());
        assert_eq!(p.memory_bytes(), 64 << 10);
        let err = p.process(&msg("grow")).unwrap_err();
        assert!(err.0.contains("memory") || err.0.contains("grow"), "{err}");
        let mut roomy = processor(WasmLimits { max_memory_bytes: 16 << 20, ..WasmLimits::default() }, perms());
        assert!(matches!(roomy.process(&msg("grow")).unwrap(), Action::Pass));
        assert_eq!(roomy.memory_bytes(), 101 * (64 << 10));
    }

    #[test]
    fn modules_outside_the_host_api_are_refused() {
        let engine = WasmEngine::new().unwrap();
        let wasi = r#"(module (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "alloc") (param i32) (result i32) (i32.const 0))
            (func (export "process") (param i32 i32) (result i32) (i32.const 0)))"#;
        let err = engine.compile(wasi.as_bytes()).err().unwrap();
        assert!(err.0.starts_with("module imports wasi_snapshot_preview1::clock_time_get"), "{err}");
        let no_alloc = r#"(module (memory (export "memory") 1)
            (func (export "process") (param i32 i32) (result i32) (i32.const 0)))"#;
        assert_eq!(engine.compile(no_alloc.as_bytes()).err().unwrap().0, "module does not export alloc (a function)");
        assert!(engine.compile(b"(module (oops").err().unwrap().0.starts_with("invalid module"));
    }
}
