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

use crate::headers::{header_name_str, parse_header_map};

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
        self.request.push(HeaderEdit::Set(name.into(), value.into()));
    }

    pub fn add_request(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.request.push(HeaderEdit::Add(name.into(), value.into()));
    }

    pub fn remove_request(&mut self, name: impl Into<Cow<'a, str>>) {
        self.request.push(HeaderEdit::Remove(name.into()));
    }

    pub fn set_response(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.response.push(HeaderEdit::Set(name.into(), value.into()));
    }

    pub fn add_response(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, [u8]>>) {
        self.response.push(HeaderEdit::Add(name.into(), value.into()));
    }

    /// The effects with their own copies of what they borrowed.
    pub fn into_owned(self) -> Effects<'static> {
        Effects {
            request: self.request.into_iter().map(HeaderEdit::into_owned).collect(),
            response: self.response.into_iter().map(HeaderEdit::into_owned).collect(),
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

/// The request headers of a chain: the host's serialised map as read (kept as one buffer, not
/// copied header by header) and an overlay of the names the stages changed, with their values
/// now. A stage's view ([`HeaderList::pairs`]) is the unchanged headers in the host's order, then
/// the changed names — where Envoy's `setCopy` and `addCopy` put them too. Stages look headers up
/// by name, so they see exactly what they would see after separate filters' host calls; and the
/// overlay is what the chain writes back, one call per changed name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    /// The map as the host serialised it (`proxy_get_header_map_pairs`).
    base: Vec<u8>,
    /// Where each header of `base` is (parsed once): name and value byte ranges. Names are
    /// UTF-8 (checked by the parse).
    index: Vec<[usize; 4]>,
    /// Per header of `base`: whether its name was changed (its values now are in `changed`).
    hidden: Vec<bool>,
    /// Per changed name, in first-change order: its values now (none: removed).
    changed: Vec<(String, Vec<Vec<u8>>)>,
}

impl HeaderList {
    /// The list of a map as the host serialised it (see [`crate::headers::parse_header_map`];
    /// a buffer that does not parse reads as an empty map).
    pub fn from_serialized(base: Vec<u8>) -> Self {
        let start = base.as_ptr() as usize;
        let at = |s: &[u8]| s.as_ptr() as usize - start;
        let index: Vec<[usize; 4]> = parse_header_map(&base)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| {
                let (n, v) = (at(name.as_bytes()), at(value));
                [n, n + name.len(), v, v + value.len()]
            })
            .collect();
        Self {
            hidden: vec![false; index.len()],
            base,
            index,
            changed: Vec::new(),
        }
    }

    /// The headers as the host sent them, with whether their name was changed.
    fn base_pairs(&self) -> impl Iterator<Item = (&str, &[u8], bool)> {
        self.index
            .iter()
            .zip(&self.hidden)
            .filter_map(|(&[n0, n1, v0, v1], &hidden)| {
                let name = header_name_str(self.base.get(n0..n1)?)?;
                Some((name, self.base.get(v0..v1)?, hidden))
            })
    }

    /// The view stages take: borrowed `(name, value)` pairs.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        let mut out = Vec::with_capacity(self.index.len() + self.changed.len());
        out.extend(
            self.base_pairs()
                .filter(|(_, _, hidden)| !hidden)
                .map(|(name, value, _)| (name, value)),
        );
        for (name, values) in &self.changed {
            out.extend(values.iter().map(|v| (name.as_str(), v.as_slice())));
        }
        out
    }

    /// The values of `name` now, to edit: its entry in the overlay, made from the host's
    /// values on the first change.
    fn values_mut(&mut self, name: &str) -> &mut Vec<Vec<u8>> {
        let at = match self.changed.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                let values = self
                    .base_pairs()
                    .filter(|(n, ..)| *n == name)
                    .map(|(_, v, _)| v.to_vec())
                    .collect();
                for (&[n0, n1, ..], hidden) in self.index.iter().zip(self.hidden.iter_mut()) {
                    if self.base.get(n0..n1) == Some(name.as_bytes()) {
                        *hidden = true;
                    }
                }
                self.changed.push((name.to_owned(), values));
                self.changed.len() - 1
            }
        };
        // `at` was just found or pushed: in bounds.
        &mut self.changed[at].1
    }

    /// Apply one edit, as Envoy's header map would.
    pub fn apply(&mut self, edit: &HeaderEdit<'_>) {
        match edit {
            HeaderEdit::Set(name, value) => {
                let values = self.values_mut(name);
                values.clear();
                values.push(value.to_vec());
            }
            HeaderEdit::Add(name, value) => self.values_mut(name).push(value.to_vec()),
            HeaderEdit::Remove(name) => {
                let name: &str = name;
                let present = match self.changed.iter().find(|(n, _)| n == name) {
                    Some((_, values)) => !values.is_empty(),
                    None => self.base_pairs().any(|(n, ..)| n == name),
                };
                // Removing a header that is not there changes nothing (and costs no call).
                if present {
                    self.values_mut(name).clear();
                }
            }
        }
    }

    /// The fewest edits that turn the host's map (as it was read) into this list: per changed
    /// name, in first-change order, one `Set` for a single value, one `Remove` when it is gone,
    /// or a `Remove` and an `Add` per copy when there are several. A name set back to exactly
    /// what the host has is still written (cheaper than comparing).
    pub fn write_back(&self) -> Vec<HeaderEdit<'_>> {
        let mut out = Vec::with_capacity(self.changed.len());
        for (name, values) in &self.changed {
            let n = || Cow::Borrowed(name.as_str());
            match values.as_slice() {
                [] => out.push(HeaderEdit::Remove(n())),
                [v] => out.push(HeaderEdit::Set(n(), Cow::Borrowed(v.as_slice()))),
                many => {
                    out.push(HeaderEdit::Remove(n()));
                    out.extend(
                        many.iter()
                            .map(|v| HeaderEdit::Add(n(), Cow::Borrowed(v.as_slice()))),
                    );
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
            vec![(":path", &b"/"[..]), ("x-request-id", b"generated"), ("cookie", b"a=1")]
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
