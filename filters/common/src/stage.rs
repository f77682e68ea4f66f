//! The host-agnostic shape of a filter: a **stage** reads a request view and returns
//! [`Effects`]; a host adapter (a filter's own `.wasm`, the bundle's chain mode) applies them.
//!
//! No host call happens inside a stage. What a stage needs from its host besides the headers —
//! the clock, a property, shared data, a foreign function — goes through [`StageHost`], which
//! each adapter implements with its host's calls (and tests with a map). What it wants done —
//! headers set, added or removed on either side, a local reply, a route-cache clear, counter
//! increments, gRPC callouts to wait for — it writes into [`Effects`]. The adapter decides how
//! to apply them: the standalone modules make one host call per effect, the chain merges the
//! effects of all its stages into the fewest calls (one write per changed header, one
//! `clear_route_cache`).
//!
//! Request headers are handed to a stage as a borrowed list of `(name, value)` pairs (lowercase
//! names, duplicates kept, host order): the same type every filter's pure logic already takes.
//! In a chain the list is the one the host sent with what earlier stages wrote applied
//! ([`HeaderList`]), so a stage sees exactly what it would see as a separate filter.

use std::borrow::Cow;

use proxy_wasm::types::Status;

use crate::headers::{for_each_header, header_count};

/// A counter defined with the host (`None`: the host refused it, so increments are dropped).
/// The one counter type of every stage: an effect names it, the adapter increments it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter(pub Option<u32>);

/// A header change, in the order the stage decided it. Names and values are borrowed from the
/// stage's configuration where they come from there (most do), so a standalone filter's
/// request allocates nothing for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    /// Replace every copy of `name` with one `value` (Envoy's `setCopy`).
    Set(Cow<'a, str>, Cow<'a, [u8]>),
    /// Append one more copy (`addCopy`).
    Add(Cow<'a, str>, Cow<'a, [u8]>),
    /// Remove every copy.
    Remove(Cow<'a, str>),
}

impl HeaderEdit<'_> {
    /// The edit with its own copies of what it borrowed.
    pub fn into_owned(self) -> HeaderEdit<'static> {
        match self {
            HeaderEdit::Set(n, v) => HeaderEdit::Set(n.into_owned().into(), v.into_owned().into()),
            HeaderEdit::Add(n, v) => HeaderEdit::Add(n.into_owned().into(), v.into_owned().into()),
            HeaderEdit::Remove(n) => HeaderEdit::Remove(n.into_owned().into()),
        }
    }

    /// The header name.
    pub fn name(&self) -> &str {
        match self {
            HeaderEdit::Set(n, _) | HeaderEdit::Add(n, _) | HeaderEdit::Remove(n) => n,
        }
    }
}

/// A local reply: the stream ends here with this answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A gRPC call the stage waits for (unary; the adapter dispatches it and hands the answer back
/// to the stage by its index in [`Effects::grpc_calls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    pub cluster: String,
    pub service: &'static str,
    pub method: &'static str,
    pub message: Vec<u8>,
    pub timeout_ms: u64,
}

/// What a stage decided, for its adapter to apply. `'a`: what the edits may borrow (the stage).
#[derive(Debug, Default)]
pub struct Effects<'a> {
    /// Request header edits (applied before the next stage reads the headers).
    pub request: Vec<HeaderEdit<'a>>,
    /// Response header edits.
    pub response: Vec<HeaderEdit<'a>>,
    /// The request's routing headers changed: re-pick the route once they are applied.
    pub clear_route_cache: bool,
    /// Answer locally; later request stages do not run.
    pub reply: Option<LocalReply>,
    /// `(metric id, amount)` increments.
    pub counters: Vec<(u32, u32)>,
    /// Calls to dispatch; the stage is [`Flow::Wait`]ing for their answers.
    pub grpc_calls: Vec<GrpcCall>,
}

impl<'a> Effects<'a> {
    pub fn set_request(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.request
            .push(HeaderEdit::Set(name.into(), value.into()));
    }

    pub fn add_request(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.request
            .push(HeaderEdit::Add(name.into(), value.into()));
    }

    pub fn remove_request(&mut self, name: impl Into<Cow<'a, str>>) {
        self.request.push(HeaderEdit::Remove(name.into()));
    }

    pub fn set_response(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.response
            .push(HeaderEdit::Set(name.into(), value.into()));
    }

    pub fn add_response(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.response
            .push(HeaderEdit::Add(name.into(), value.into()));
    }

    /// The effects with their own copies of what they borrowed.
    pub fn into_owned(self) -> Effects<'static> {
        Effects {
            request: self
                .request
                .into_iter()
                .map(HeaderEdit::into_owned)
                .collect(),
            response: self
                .response
                .into_iter()
                .map(HeaderEdit::into_owned)
                .collect(),
            clear_route_cache: self.clear_route_cache,
            reply: self.reply,
            counters: self.counters,
            grpc_calls: self.grpc_calls,
        }
    }

    /// Add 1 to `counter` (nothing for a refused counter).
    pub fn count(&mut self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Add `by` to `counter` (nothing when `by` is 0 or the counter was refused).
    pub fn add(&mut self, counter: Counter, by: u32) {
        if let (Some(id), true) = (counter.0, by > 0) {
            self.counters.push((id, by));
        }
    }

    /// Answer locally.
    pub fn reply(&mut self, status: u32, headers: Vec<(String, String)>, body: String) {
        self.reply = Some(LocalReply {
            status,
            headers,
            body,
        });
    }

    /// Whether applying these effects needs no host call.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty()
            && self.response.is_empty()
            && !self.clear_route_cache
            && self.reply.is_none()
            && self.counters.is_empty()
            && self.grpc_calls.is_empty()
    }
}

/// The status a call the host refused to dispatch is answered with (no gRPC status is this
/// large), so a stage can tell it from a call that went out and failed.
pub const CALL_NOT_SENT: u32 = u32::MAX;

/// What a stage does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on to the next stage (or the next filter).
    Continue,
    /// [`Effects::reply`] is set: the request goes no further.
    Reply,
    /// Wait: for the [`Effects::grpc_calls`], or for something the stage's root tracks (keys).
    Wait,
}

/// A shared-data write's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetResult {
    Ok,
    /// The CAS token no longer matches: someone else wrote first.
    CasMismatch,
    /// Any other refusal.
    Failed,
}

/// What a stage may ask of its host besides the request headers. Every method is one host call
/// in the Proxy-Wasm adapters.
pub trait StageHost {
    /// The host clock, nanoseconds since the Unix epoch (0 if unreadable).
    fn now_ns(&mut self) -> u64;
    /// A property (`["source", "address"]`), `None` when absent or unreadable.
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>>;
    /// A shared-data entry and its CAS token; `(None, None)` when absent.
    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Write a shared-data entry (only if its CAS token is still `cas`, when given).
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult;
    /// Call a host foreign function.
    fn foreign_function(&mut self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status>;
}

/// A filter's decision logic, the same in every host. Built once per configuration (its
/// compiled settings and counter ids); [`Stage::Stream`] is what one request keeps between its
/// phases.
pub trait Stage: 'static {
    /// Per-stream state (what the response phase needs from the request phase).
    type Stream: Default;

    /// Whether the stage does anything on response headers ([`Stage::on_response_headers`]):
    /// a filter's own module without a response phase is not entered for them at all.
    const RESPONSE_HEADERS: bool = false;

    /// Whether [`Stage::on_request_headers`] looks at the headers at all (a stage that does not
    /// saves its adapter the header-map read).
    fn reads_request_headers(&self) -> bool {
        true
    }

    /// The request headers: `headers` as the client sent them with what earlier filters wrote.
    fn on_request_headers<'s>(
        &'s self,
        stream: &mut Self::Stream,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow;

    /// The response headers (also of a local reply, whoever sent it; the request phase may not
    /// have run).
    fn on_response_headers<'s>(
        &'s self,
        _stream: &mut Self::Stream,
        _host: &mut dyn StageHost,
        _fx: &mut Effects<'s>,
    ) {
    }

    /// The answer to call `call` (its index in the [`Effects::grpc_calls`] of the request
    /// phase): `status` 0 with the response `body`, a gRPC status, or [`CALL_NOT_SENT`] when
    /// the host refused to dispatch it (the adapter has logged why). [`Flow::Continue`] or [`Flow::Reply`] once
    /// every call has answered; [`Flow::Wait`] while some are outstanding.
    fn on_grpc_answer<'s>(
        &'s self,
        _stream: &mut Self::Stream,
        _call: usize,
        _status: u32,
        _body: Option<&[u8]>,
        _host: &mut dyn StageHost,
        _fx: &mut Effects<'s>,
    ) -> Flow {
        Flow::Continue
    }
}

/// The request headers of a chain: the host's serialised map as read (kept as one buffer,
/// parsed once) and what the stages wrote, kept in one byte arena — no allocation per header or
/// per edit. A stage's view ([`HeaderList::pairs`]) is the unchanged headers in the host's
/// order, then the changed names — where Envoy's `setCopy` and `addCopy` put them too. Stages
/// look headers up by name, so they see exactly what they would see after separate filters'
/// host calls; and the changed names are what the chain writes back, one call per name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    /// The map as the host serialised it (`proxy_get_header_map_pairs`).
    base: Vec<u8>,
    /// The headers of `base`, in the host's order (names checked to be UTF-8).
    index: Vec<BaseHeader>,
    /// Names the stages wrote (a `String`: slicing it needs no UTF-8 check).
    names: String,
    /// Values the stages wrote.
    arena: Vec<u8>,
    /// What the stages wrote, in order: a value of a changed name, or (`None`) the mark that a
    /// name was changed with no value (removed). `live`: not replaced or removed since.
    written: Vec<Written>,
}

/// One header of the host's map: where its name and its value are in `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseHeader {
    name: [usize; 2],
    value: [usize; 2],
    /// Its name was changed since (it is no longer in the view).
    hidden: bool,
}

/// Whether the name at `at` in `bytes` is `name`: the lengths first (cheap), the bytes only
/// when they match (a byte-by-byte `memcmp` in Wasm).
fn is_named(bytes: &[u8], at: [usize; 2], name: &str) -> bool {
    at[1].wrapping_sub(at[0]) == name.len() && bytes.get(at[0]..at[1]) == Some(name.as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    name: [usize; 2],
    /// The index in `written` of the first entry of this name: entries of one name are found
    /// by comparing this number, not the name (string compares were most of the list's work).
    first: usize,
    value: Option<[usize; 2]>,
    live: bool,
}

impl HeaderList {
    /// The list of a map as the host serialised it (see [`crate::headers::parse_header_map`];
    /// a buffer that does not parse reads as an empty map).
    pub fn from_serialized(base: Vec<u8>) -> Self {
        let start = base.as_ptr() as usize;
        let at = |s: &[u8]| s.as_ptr() as usize - start;
        let mut index = Vec::with_capacity(header_count(&base));
        let parsed = for_each_header(&base, |name, value| {
            let (n, v) = (at(name.as_bytes()), at(value));
            index.push(BaseHeader {
                name: [n, n + name.len()],
                value: [v, v + value.len()],
                hidden: false,
            });
        });
        if parsed.is_none() {
            index.clear();
        }
        Self {
            base,
            index,
            // Room for what a gateway chain typically writes: no regrowth on the way.
            names: String::with_capacity(256),
            arena: Vec::with_capacity(512),
            written: Vec::with_capacity(16),
        }
    }

    fn base_is(&self, h: &BaseHeader, name: &str) -> bool {
        is_named(&self.base, h.name, name)
    }

    fn written_is(&self, w: &Written, name: &str) -> bool {
        is_named(self.names.as_bytes(), w.name, name)
    }

    fn written_name(&self, w: &Written) -> &str {
        self.names.get(w.name[0]..w.name[1]).unwrap_or_default()
    }

    fn written_value(&self, w: &Written) -> Option<&[u8]> {
        let [v0, v1] = w.value?;
        self.arena.get(v0..v1)
    }

    /// The view stages take: borrowed `(name, value)` pairs.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        let mut out = Vec::with_capacity(self.index.len() + self.written.len());
        for h in self.index.iter().filter(|h| !h.hidden) {
            if let (Some(name), Some(value)) = (
                self.base.get(h.name[0]..h.name[1]),
                self.base.get(h.value[0]..h.value[1]),
            ) {
                // SAFETY: `h.name` is where `for_each_header` found a name it checked to be
                // UTF-8, in this very buffer, which nothing changes after the parse. Checking
                // again for every stage's view was a tenth of the chain's bookkeeping.
                out.push((unsafe { std::str::from_utf8_unchecked(name) }, value));
            }
        }
        for w in self.written.iter().filter(|w| w.live) {
            if let Some(value) = self.written_value(w) {
                out.push((self.written_name(w), value));
            }
        }
        out
    }

    /// The first entry of `written` named `name`.
    fn first_written(&self, name: &str) -> Option<usize> {
        self.written.iter().position(|w| self.written_is(w, name))
    }

    /// Whether `name` has a value now (`first`: its [`HeaderList::first_written`]).
    fn present(&self, name: &str, first: Option<usize>) -> bool {
        let in_base = self
            .index
            .iter()
            .any(|h| !h.hidden && self.base_is(h, name));
        in_base
            || first.is_some_and(|first| {
                self.written
                    .iter()
                    .any(|w| w.first == first && w.live && w.value.is_some())
            })
    }

    /// `name` loses every value it has (the base's and what was written); `first`: its
    /// [`HeaderList::first_written`].
    fn clear(&mut self, name: &str, first: Option<usize>) {
        let base = &self.base;
        for h in self
            .index
            .iter_mut()
            .filter(|h| is_named(base, h.name, name))
        {
            h.hidden = true;
        }
        if let Some(first) = first {
            for w in self.written.iter_mut().filter(|w| w.first == first) {
                w.live = false;
            }
        }
    }

    /// Record `name` (with `value`, or none: the mark of a removal); `first`: its
    /// [`HeaderList::first_written`].
    fn write(&mut self, name: &str, first: Option<usize>, value: Option<&[u8]>) {
        let n0 = self.names.len();
        self.names.push_str(name);
        let name_at = [n0, self.names.len()];
        let value = value.map(|v| {
            let v0 = self.arena.len();
            self.arena.extend_from_slice(v);
            [v0, self.arena.len()]
        });
        self.written.push(Written {
            name: name_at,
            first: first.unwrap_or(self.written.len()),
            value,
            live: true,
        });
    }

    /// Apply one edit, as Envoy's header map would.
    pub fn apply(&mut self, edit: &HeaderEdit<'_>) {
        match edit {
            HeaderEdit::Set(name, value) => {
                let first = self.first_written(name);
                self.clear(name, first);
                self.write(name, first, Some(value));
            }
            HeaderEdit::Add(name, value) => {
                let mut first = self.first_written(name);
                // The host's copies stay: they count as changed, in the view after this.
                let base_copies: Vec<[usize; 2]> = self
                    .index
                    .iter()
                    .filter(|h| !h.hidden && self.base_is(h, name))
                    .map(|h| h.value)
                    .collect();
                if !base_copies.is_empty() {
                    self.clear(name, first);
                    for [v0, v1] in base_copies {
                        let copy = self.base.get(v0..v1).map(<[u8]>::to_vec);
                        self.write(name, first, copy.as_deref());
                        first = first.or(Some(self.written.len() - 1));
                    }
                }
                self.write(name, first, Some(value));
            }
            HeaderEdit::Remove(name) => {
                // Removing a header that is not there changes nothing (and costs no call).
                let first = self.first_written(name);
                if self.present(name, first) {
                    self.clear(name, first);
                    self.write(name, first, None);
                }
            }
        }
    }

    /// The fewest edits that turn the host's map (as it was read) into this list: per changed
    /// name, in first-change order, one `Set` for a single value, one `Remove` when it is gone,
    /// or a `Remove` and an `Add` per copy when there are several. A name set back to exactly
    /// what the host has is still written (cheaper than comparing).
    pub fn write_back(&self) -> Vec<HeaderEdit<'_>> {
        let mut out = Vec::with_capacity(self.written.len());
        for (i, first) in self.written.iter().enumerate() {
            if first.first != i {
                continue; // written at its first change
            }
            let name = self.written_name(first);
            let values = || {
                self.written
                    .get(i..)
                    .unwrap_or_default()
                    .iter()
                    .filter(|w| w.live && w.first == i)
                    .filter_map(|w| self.written_value(w))
            };
            let n = || Cow::Borrowed(name);
            let mut all = values();
            match (all.next(), all.next()) {
                (None, _) => out.push(HeaderEdit::Remove(n())),
                (Some(v), None) => out.push(HeaderEdit::Set(n(), Cow::Borrowed(v))),
                _ => {
                    out.push(HeaderEdit::Remove(n()));
                    out.extend(values().map(|v| HeaderEdit::Add(n(), Cow::Borrowed(v))));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::serialize_header_map;

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        HeaderList::from_serialized(serialize_header_map(
            pairs.iter().map(|(k, v)| (*k, v.as_bytes())),
        ))
    }

    fn set(n: &'static str, v: &'static str) -> HeaderEdit<'static> {
        HeaderEdit::Set(n.into(), v.as_bytes().into())
    }

    fn add(n: &'static str, v: &'static str) -> HeaderEdit<'static> {
        HeaderEdit::Add(n.into(), v.as_bytes().into())
    }

    #[test]
    fn set_replaces_every_copy_and_the_name_moves_to_the_end() {
        let mut h = list(&[("a", "1"), ("x", "1"), ("b", "2"), ("x", "2")]);
        h.apply(&set("x", "new"));
        assert_eq!(
            h.pairs(),
            vec![("a", &b"1"[..]), ("b", b"2"), ("x", b"new")]
        );
        assert_eq!(h.write_back(), vec![set("x", "new")]);
    }

    #[test]
    fn a_later_stage_sees_an_earlier_stages_edits() {
        let mut h = list(&[("x-request-id", "bad value"), (":path", "/")]);
        h.apply(&set("x-request-id", "generated"));
        h.apply(&HeaderEdit::Remove("authorization".into()));
        h.apply(&add("cookie", "a=1"));
        assert_eq!(
            h.pairs(),
            vec![
                (":path", &b"/"[..]),
                ("x-request-id", b"generated"),
                ("cookie", b"a=1")
            ]
        );
        // Removing a header that is not there changes nothing and costs no host call.
        assert_eq!(
            h.write_back(),
            vec![set("x-request-id", "generated"), set("cookie", "a=1")]
        );
    }

    #[test]
    fn write_back_removes_gone_names_and_rebuilds_repeated_ones() {
        let mut h = list(&[("token", "t"), ("cookie", "a=1"), ("cookie", "b=2; s=3")]);
        h.apply(&HeaderEdit::Remove("token".into()));
        h.apply(&HeaderEdit::Remove("cookie".into()));
        h.apply(&add("cookie", "a=1"));
        h.apply(&add("cookie", "b=2"));
        assert_eq!(
            h.write_back(),
            vec![
                HeaderEdit::Remove("token".into()),
                HeaderEdit::Remove("cookie".into()),
                add("cookie", "a=1"),
                add("cookie", "b=2"),
            ]
        );
    }

    #[test]
    fn an_add_keeps_the_hosts_copies() {
        let mut h = list(&[("x", "1")]);
        h.apply(&add("x", "2"));
        assert_eq!(h.pairs(), vec![("x", &b"1"[..]), ("x", b"2")]);
        h.apply(&HeaderEdit::Remove("x".into()));
        assert_eq!(h.pairs(), vec![]);
        assert_eq!(h.write_back(), vec![HeaderEdit::Remove("x".into())]);
    }

    #[test]
    fn counters_the_host_refused_are_dropped() {
        let mut fx = Effects::default();
        assert!(fx.is_empty());
        fx.count(Counter(None));
        fx.add(Counter(Some(3)), 0);
        assert!(fx.is_empty());
        fx.count(Counter(Some(3)));
        fx.add(Counter(Some(4)), 2);
        assert_eq!(fx.counters, vec![(3, 1), (4, 2)]);
    }
}
