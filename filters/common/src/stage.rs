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

use crate::headers::{for_each_header, header_count, header_name_str, length_bit};

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
    /// Value buffers of recycled edits, for [`Effects::copied`] (an adapter that keeps its
    /// effects between stages and streams allocates no value once these are there).
    spare_values: Vec<Vec<u8>>,
}

/// How many value buffers [`Effects::recycle`] keeps, and the largest it keeps (a value as long
/// as a forwarded token payload is rare: its room is given back).
const SPARE_VALUES: usize = 16;
const SPARE_VALUE_ROOM: usize = 256;

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

    /// What is left to do once the request edits and counters are applied, taken out with its
    /// own copies of what it borrowed: the response edits, the route-cache clear, the reply, the
    /// calls. `self` keeps its vectors' room (for [`Effects::recycle`]).
    #[inline]
    pub fn take_rest(&mut self) -> Effects<'static> {
        Effects {
            clear_route_cache: std::mem::take(&mut self.clear_route_cache),
            reply: self.reply.take(),
            grpc_calls: std::mem::take(&mut self.grpc_calls),
            response: self
                .response
                .drain(..)
                .map(HeaderEdit::into_owned)
                .collect(),
            ..Effects::default()
        }
    }

    /// A value holding a copy of `bytes`, in a buffer a recycled edit left when there is one
    /// (no allocation), else in a new one. For values a stage cannot lend for its lifetime
    /// (a cached claim, a generated ID).
    pub fn copied(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self.spare_values.pop() {
            Some(mut value) => {
                value.extend_from_slice(bytes);
                value
            }
            // Not an empty vector extended: its growth path is dearer in Wasm than a copy.
            None => bytes.to_vec(),
        }
    }

    /// These effects emptied, their vectors' room kept for the next stage's (an adapter that
    /// keeps one `Effects` for a stream allocates its vectors once, not once per stage). The
    /// edits' element types differ only in lifetime: the in-place collect keeps the room.
    pub fn recycle(self) -> Effects<'static> {
        let Effects {
            mut request,
            mut response,
            mut counters,
            mut grpc_calls,
            mut spare_values,
            ..
        } = self;
        counters.clear();
        grpc_calls.clear();
        keep_values(&mut request, &mut spare_values);
        keep_values(&mut response, &mut spare_values);
        Effects {
            request: emptied(request),
            response: emptied(response),
            clear_route_cache: false,
            reply: None,
            counters,
            grpc_calls,
            spare_values,
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

    /// The names of every request header [`Stage::on_request_headers`] looks up and of every
    /// one its request edits touch, when they are a few fixed ones (`None`, the default: it
    /// may look at any). A host may then read just these, one lookup each, instead of the
    /// whole map: the stage finds the same values, and the edits' write-back knows what the
    /// host had of each name it writes.
    fn request_header_names(&self) -> Option<Vec<String>> {
        None
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

/// The request headers of a chain: the host's headers as read (copied once into one buffer,
/// indexed once) and what the stages wrote, kept in one byte arena — no allocation per header
/// or per edit, and none for writes on a request no stage writes to. A stage's view
/// ([`HeaderList::view_into`]) is the unchanged headers in the host's order, then the changed
/// names — where Envoy's `setCopy` and `addCopy` put them too. Stages look headers up by name,
/// so they see exactly what they would see after separate filters' host calls; and the changed
/// names are what the chain writes back, one call per name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderList {
    /// The host's headers: the map as a Proxy-Wasm host serialised it
    /// (`proxy_get_header_map_pairs`, [`HeaderList::from_serialized`]), or each name and value
    /// back to back as a native host lent them ([`HeaderList::from_pairs`]). Never changed
    /// after construction: `index` borrows its heap buffer.
    base: Vec<u8>,
    /// The headers of `base` still in the view, in the host's order, names checked to be
    /// UTF-8: borrowed from `base`'s heap buffer, which moves with the list, never changes and
    /// is never reallocated. `'static` stands for "as long as `base`": no method hands a pair
    /// out for longer than a borrow of the list (see [`detach`]). A stage's view of the
    /// unchanged headers is then a copy of this slice, not a walk that slices `base` header by
    /// header (that walk was most of the chain's bookkeeping: five views a request).
    index: Vec<(&'static str, &'static [u8])>,
    /// Names and values the stages wrote (a name is pushed from a `&str`, so its bytes are
    /// UTF-8). Empty, unallocated, until a stage writes.
    arena: Vec<u8>,
    /// What the stages wrote, in order: a value of a changed name, or (`None`) the mark that a
    /// name was changed with no value (removed). `live`: not replaced or removed since.
    written: Vec<Written>,
    /// `base` is what the host has: the list was read from it. A list that was not (no stage
    /// looks at the headers: [`Stage::reads_request_headers`]) knows nothing of the host's
    /// map, so every name it writes may be there: it is set or removed, never only added.
    host_read: bool,
    /// `index` borrows the host's memory, not `base` ([`HeaderList::refill_borrowing`]) until
    /// [`HeaderList::own`] copies it.
    borrowed: bool,
    /// The lengths of the names `index` was filled with, one bit each
    /// ([`crate::headers::length_bit`]); not cleared when a name leaves `index`, so a bit that
    /// is not set means no header of that length is there. Most names the stages write are
    /// not in the request, and this rules them out without a search (each edit searched the
    /// index two or three times).
    index_lengths: u64,
    /// The same for the names in `written` (never cleared until the list is reset).
    written_lengths: u64,
}

/// `part` (of a list's `base`, or lent by the host) borrowed for as long as the list: how
/// `index` keeps its pairs.
///
/// # Safety
/// `part` lies in the heap buffer of a `base` that is stored, unchanged, with the `index` the
/// result goes into (or in host memory under [`HeaderList::refill_borrowing`]'s contract), and
/// the result is only ever handed out re-borrowed from that list.
unsafe fn detach<T: ?Sized>(part: &T) -> &'static T {
    // SAFETY: the caller's contract: the buffer outlives every use of the reference.
    unsafe { &*std::ptr::from_ref(part) }
}

impl Clone for HeaderList {
    /// A list over its own copy of the host's headers (a derived clone would borrow the
    /// original's `base`).
    fn clone(&self) -> Self {
        let mut copy = HeaderList::from_pairs(
            self.index
                .iter()
                .map(|&(name, value)| (name.as_bytes(), value)),
        );
        copy.arena = self.arena.clone();
        copy.written = self.written.clone();
        copy.written_lengths = self.written_lengths;
        copy.host_read = self.host_read;
        copy
    }
}

/// Whether the name at `at` in `bytes` is `name`: the lengths first (cheap), the bytes only
/// when they match (a byte-by-byte `memcmp` in Wasm).
/// Whether two header names are equal ([`crate::bytes::eq`]: no byte-at-a-time `memcmp` in
/// Wasm, where the list's searches compared names of equal length with it).
fn same_name(a: &str, b: &str) -> bool {
    crate::bytes::eq(a.as_bytes(), b.as_bytes())
}

fn is_named(bytes: &[u8], at: [usize; 2], name: &str) -> bool {
    at[1].wrapping_sub(at[0]) == name.len()
        && bytes
            .get(at[0]..at[1])
            .is_some_and(|b| crate::bytes::eq(b, name.as_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    name: [usize; 2],
    /// The index in `written` of the first entry of this name: entries of one name are found
    /// by comparing this number, not the name (string compares were most of the list's work).
    first: usize,
    value: Option<[usize; 2]>,
    live: bool,
    /// On a name's first entry: the host's map had the name when it was first changed. One it
    /// never had needs no removal, and a single value is an `addCopy` (no lookup of copies to
    /// replace).
    host_had: bool,
    /// On a name's first entry: a later entry has the same name (the write-back then looks
    /// for its values; most names are written once, and their one entry is all there is).
    more: bool,
}

impl HeaderList {
    /// The list of a map as the host serialised it (see [`crate::headers::parse_header_map`];
    /// a buffer that does not parse reads as an empty map).
    pub fn from_serialized(base: Vec<u8>) -> Self {
        let mut list = Self::default();
        list.refill_from_serialized(base);
        list
    }

    /// This list emptied, then made the list of the serialised map `base`
    /// ([`HeaderList::from_serialized`]); a list kept from an earlier request keeps the room
    /// of its index and of what the stages write (no allocation for them).
    pub fn refill_from_serialized(&mut self, base: Vec<u8>) {
        self.reset();
        // The index borrows from `base`: it is empty (reset) when `base` is replaced.
        self.base = base;
        self.index.reserve(header_count(&self.base));
        let (index, lengths) = (&mut self.index, &mut self.index_lengths);
        let parsed = for_each_header(&self.base, |name, value| {
            *lengths |= length_bit(name.len());
            // SAFETY: both are in `base`'s heap buffer, which stays with `index`, unchanged,
            // until `reset` empties `index` first.
            index.push(unsafe { (detach(name), detach(value)) });
        });
        if parsed.is_none() {
            self.index.clear();
        }
        self.host_read = true;
    }

    /// The list of headers a native host lends as `(name, value)` byte pairs (Envoy's header
    /// array in a dynamic module); see [`HeaderList::refill_from_pairs`].
    pub fn from_pairs<'p>(pairs: impl Iterator<Item = (&'p [u8], &'p [u8])> + Clone) -> Self {
        let mut list = Self::default();
        list.refill_from_pairs(pairs);
        list
    }

    /// This list emptied, then made the list of `pairs` as a native host lends them: one copy
    /// into one buffer, one index — no serialising into the Proxy-Wasm form and parsing it
    /// back — and, for a list kept from an earlier request, no allocation: its buffers keep
    /// their room. Names that are not UTF-8 are skipped (no HTTP codec lets one through;
    /// checked once, and only when a name is not ASCII).
    pub fn refill_from_pairs<'p>(
        &mut self,
        pairs: impl Iterator<Item = (&'p [u8], &'p [u8])> + Clone,
    ) {
        self.reset();
        self.fill_base(pairs);
    }

    /// This list emptied, then made the list of `pairs` without copying them: the index
    /// borrows the host's memory (a native host lends its header array for the length of a
    /// callback). Copying eleven headers was ≈ 1.3k instructions of a dynamic-module filter's
    /// request; a list that must outlive the loan is [`HeaderList::own`]ed first. Names that
    /// are not UTF-8 are skipped, as in [`HeaderList::refill_from_pairs`].
    ///
    /// # Safety
    /// Every pair's memory stays valid and unchanged until this list is reset, refilled,
    /// owned or dropped, whichever comes first.
    pub unsafe fn refill_borrowing<'p>(
        &mut self,
        pairs: impl Iterator<Item = (&'p [u8], &'p [u8])>,
    ) {
        self.reset();
        for (name, value) in pairs {
            let Some(name) = header_name_str(name) else {
                continue;
            };
            self.index_lengths |= length_bit(name.len());
            // SAFETY: the caller's contract: the pairs outlive every use of the index, which
            // only ever hands them out re-borrowed from the list.
            self.index.push(unsafe { (detach(name), detach(value)) });
        }
        self.host_read = true;
        self.borrowed = true;
    }

    /// Copy what the list borrows ([`HeaderList::refill_borrowing`]) into its own buffer, so
    /// that it may outlive the loan; nothing to do for a list that borrows nothing. What the
    /// stages wrote is kept.
    pub fn own(&mut self) {
        if !std::mem::take(&mut self.borrowed) {
            return;
        }
        let lent = std::mem::take(&mut self.index);
        self.base.clear();
        self.fill_base(lent.iter().map(|&(name, value)| (name.as_bytes(), value)));
        // `lent` (the old index's room) is dropped here, its pairs no longer used.
    }

    /// Copy `pairs` into `base` (empty) and index them.
    fn fill_base<'p>(&mut self, pairs: impl Iterator<Item = (&'p [u8], &'p [u8])> + Clone) {
        let (mut count, mut size, mut all_ascii) = (0usize, 0usize, true);
        for (name, value) in pairs.clone() {
            count += 1;
            size += name.len() + value.len();
            all_ascii &= name.is_ascii();
        }
        // Zeroed to its final size first, then filled piece by piece: each piece is borrowed
        // once, from the buffer `index` will borrow from, and nothing writes to it after.
        self.base.resize(size, 0);
        self.index.reserve(count);
        let mut rest: &mut [u8] = &mut self.base;
        let mut kept = 0;
        for (name, value) in pairs {
            if !all_ascii && header_name_str(name).is_none() {
                continue;
            }
            let Some((name_at, tail)) = rest.split_at_mut_checked(name.len()) else {
                break;
            };
            let Some((value_at, tail)) = tail.split_at_mut_checked(value.len()) else {
                break;
            };
            name_at.copy_from_slice(name);
            value_at.copy_from_slice(value);
            kept += name.len() + value.len();
            rest = tail;
            self.index_lengths |= length_bit(name.len());
            // SAFETY: `name_at` holds `name`'s bytes, found to be UTF-8 above (ASCII, or
            // checked). Both are in `base`'s buffer, which stays with `index` and is not
            // changed again until `reset` empties `index` first.
            self.index.push(unsafe {
                let name = std::str::from_utf8_unchecked(name_at);
                (detach(name), detach(&*value_at))
            });
        }
        // Skipped names leave room at the end, unused (a shorter length does not move the
        // buffer).
        self.base.truncate(kept);
        self.host_read = true;
    }

    /// An empty list that keeps its buffers' room (for the next request of a worker).
    pub fn reset(&mut self) {
        // The index borrows from `base` (or the host): it goes first.
        self.index.clear();
        self.borrowed = false;
        self.base.clear();
        self.arena.clear();
        self.written.clear();
        self.host_read = false;
        self.index_lengths = 0;
        self.written_lengths = 0;
    }

    /// How many bytes this list holds on to (what a worker keeps when it keeps the list).
    pub fn room(&self) -> usize {
        self.base.capacity()
            + self.arena.capacity()
            + self.index.capacity() * std::mem::size_of::<(&str, &[u8])>()
            + self.written.capacity() * std::mem::size_of::<Written>()
    }

    /// Whether the host's headers still in the list have `name`.
    fn index_has(&self, name: &str) -> bool {
        self.index_lengths & length_bit(name.len()) != 0
            && self.index.iter().any(|&(n, _)| same_name(n, name))
    }

    fn written_is(&self, w: &Written, name: &str) -> bool {
        is_named(&self.arena, w.name, name)
    }

    fn written_name(&self, w: &Written) -> &str {
        let name = self.arena.get(w.name[0]..w.name[1]).unwrap_or_default();
        // SAFETY: `w.name` is where `write` pushed a `&str`'s bytes into the arena, which only
        // grows: the range holds exactly those bytes.
        unsafe { std::str::from_utf8_unchecked(name) }
    }

    fn written_value(&self, w: &Written) -> Option<&[u8]> {
        let [v0, v1] = w.value?;
        self.arena.get(v0..v1)
    }

    /// The view stages take, into `out` (emptied first; a caller that keeps one vector for all
    /// its stages allocates it once — see [`recycle_view`]): borrowed `(name, value)` pairs.
    pub fn view_into<'h>(&'h self, out: &mut Vec<(&'h str, &'h [u8])>) {
        out.clear();
        out.reserve(self.index.len() + self.written.len());
        let unchanged: &'h [(&'h str, &'h [u8])] = &self.index;
        out.extend_from_slice(unchanged);
        for w in self.written.iter().filter(|w| w.live) {
            if let Some(value) = self.written_value(w) {
                out.push((self.written_name(w), value));
            }
        }
    }

    /// The view stages take, in a vector of its own.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        let mut out = Vec::new();
        self.view_into(&mut out);
        out
    }

    /// The first entry of `written` named `name`.
    fn first_written(&self, name: &str) -> Option<usize> {
        if self.written_lengths & length_bit(name.len()) == 0 {
            return None;
        }
        self.written.iter().position(|w| self.written_is(w, name))
    }

    /// Whether `name` has a value now (`first`: its [`HeaderList::first_written`]).
    fn present(&self, name: &str, first: Option<usize>) -> bool {
        !self.host_read
            || self.index_has(name)
            || first.is_some_and(|first| {
                self.written
                    .iter()
                    .any(|w| w.first == first && w.live && w.value.is_some())
            })
    }

    /// `name` loses every value it has (the host's and what was written); `first`: its
    /// [`HeaderList::first_written`]. Whether the host's map still had it.
    fn clear(&mut self, name: &str, first: Option<usize>) -> bool {
        let before = self.index.len();
        // Usually the name is not there: a search is cheaper than a `retain` that rewrites.
        if self.index_has(name) {
            self.index.retain(|&(n, _)| !same_name(n, name));
        }
        if let Some(first) = first {
            for w in self.written.iter_mut().filter(|w| w.first == first) {
                w.live = false;
            }
        }
        self.index.len() != before || !self.host_read
    }

    /// Record `name` (with `value`, or none: the mark of a removal); `first`: its
    /// [`HeaderList::first_written`]; `host_had`: the host's map had (or, not read, may have
    /// had) the name until this write: see [`Written::host_had`], set on the name's first entry.
    fn write(&mut self, name: &str, first: Option<usize>, value: Option<&[u8]>, host_had: bool) {
        if self.written.capacity() == 0 {
            // Room for what a gateway chain typically writes: no regrowth on the way.
            self.arena.reserve(768);
            self.written.reserve(16);
        }
        let n0 = self.arena.len();
        self.arena.extend_from_slice(name.as_bytes());
        let name_at = [n0, self.arena.len()];
        let value = value.map(|v| {
            let v0 = self.arena.len();
            self.arena.extend_from_slice(v);
            [v0, self.arena.len()]
        });
        if let Some(entry) = first.and_then(|f| self.written.get_mut(f)) {
            entry.host_had |= host_had;
            entry.more = true;
        }
        self.written_lengths |= length_bit(name.len());
        self.written.push(Written {
            name: name_at,
            first: first.unwrap_or(self.written.len()),
            value,
            live: true,
            host_had,
            more: false,
        });
    }

    /// Apply one edit, as Envoy's header map would.
    pub fn apply(&mut self, edit: &HeaderEdit<'_>) {
        match edit {
            HeaderEdit::Set(name, value) => {
                let first = self.first_written(name);
                let host_had = self.clear(name, first);
                self.write(name, first, Some(value), host_had);
            }
            HeaderEdit::Add(name, value) => {
                let mut first = self.first_written(name);
                // The host's copies stay: they count as changed, in the view after this.
                let host_copies: Vec<&'static [u8]> = if self.index_has(name) {
                    self.index
                        .iter()
                        .filter(|&&(n, _)| same_name(n, name))
                        .map(|&(_, v)| v)
                        .collect()
                } else {
                    Vec::new()
                };
                if !host_copies.is_empty() {
                    self.clear(name, first);
                    for copy in host_copies {
                        // `copy` is in `base`, which `write` does not touch.
                        self.write(name, first, Some(copy), true);
                        first = first.or(Some(self.written.len() - 1));
                    }
                }
                // A name the host was not read for may have copies: they stay (no removal
                // is written for it), so it is not marked as one the host had.
                self.write(name, first, Some(value), false);
            }
            HeaderEdit::Remove(name) => {
                // Removing a header that is not there changes nothing (and costs no call).
                let first = self.first_written(name);
                if self.present(name, first) {
                    let host_had = self.clear(name, first);
                    self.write(name, first, None, host_had);
                }
            }
        }
    }

    /// The fewest edits that turn the host's map (as it was read) into this list: per changed
    /// name, in first-change order, one `Set` for a single value, one `Remove` when it is gone,
    /// or a `Remove` and an `Add` per copy when there are several — except that a name the
    /// host's map never had needs no removal: its values are only `Add`ed (Envoy's `addCopy`
    /// skips the search for copies `setCopy` replaces), and nothing is written for it when
    /// it ends with none. A name set back to exactly what the host has is still written
    /// (cheaper than comparing).
    pub fn write_back(&self) -> Vec<HeaderEdit<'_>> {
        let mut out = Vec::with_capacity(self.written.len());
        self.write_back_each(|edit| out.push(edit));
        out
    }

    /// The last stage's `edits` written straight to the host, without going through the list:
    /// what [`HeaderList::apply`] for each, then [`HeaderList::write_back`], would write —
    /// for a list nothing was written to yet and edits that each name a different header
    /// (else `false`, and nothing is handed to `out`). A `Set` of a name the host's map does
    /// not have is an `Add`, a `Remove` of one is nothing, as there. One difference: an `Add`
    /// to a name the host has is one `Add` (Envoy appends), where the list removes the
    /// host's copies and adds them back before the new value: the same values in the same
    /// order, the name's place in the map aside.
    ///
    /// Why: applying edits to the list (its arena and marks) and reading them back is most of
    /// a single native filter's own bookkeeping, and a last stage's edits have no later
    /// stage to show them to. The list is stale afterwards: reset it.
    pub fn write_through<'e>(
        &self,
        edits: &'e [HeaderEdit<'e>],
        mut out: impl FnMut(HeaderEdit<'e>),
    ) -> bool {
        if !self.written.is_empty() {
            return false;
        }
        let name_of = |edit: &'e HeaderEdit<'e>| -> &'e str {
            match edit {
                HeaderEdit::Set(name, _) | HeaderEdit::Add(name, _) | HeaderEdit::Remove(name) => {
                    name
                }
            }
        };
        for (i, edit) in edits.iter().enumerate() {
            let name = name_of(edit);
            if edits
                .get(..i)
                .unwrap_or_default()
                .iter()
                .any(|e| same_name(name_of(e), name))
            {
                return false;
            }
        }
        let host_has = |name: &str| !self.host_read || self.index_has(name);
        for edit in edits {
            let single = match edit {
                HeaderEdit::Set(name, value) => {
                    single_value_edit(name, Some(value), host_has(name))
                }
                HeaderEdit::Remove(name) => single_value_edit(name, None, host_has(name)),
                HeaderEdit::Add(name, value) => {
                    Some(HeaderEdit::Add(Cow::Borrowed(name), Cow::Borrowed(value)))
                }
            };
            if let Some(edit) = single {
                out(edit);
            }
        }
        true
    }

    /// [`HeaderList::write_back`]'s edits handed to `out` one by one (no vector).
    pub fn write_back_each<'h>(&'h self, mut out: impl FnMut(HeaderEdit<'h>)) {
        for (i, first) in self.written.iter().enumerate() {
            if first.first != i {
                continue; // written at its first change
            }
            let name = self.written_name(first);
            if !first.more {
                // The name's one entry (most names): its value, if not removed since, is all
                // it has — no search of the other entries.
                let value = if first.live {
                    self.written_value(first)
                } else {
                    None
                };
                if let Some(edit) = single_value_edit(name, value, first.host_had) {
                    out(edit);
                }
                continue;
            }
            let values = || {
                self.written
                    .get(i..)
                    .unwrap_or_default()
                    .iter()
                    .filter(|w| w.live && w.first == i)
                    .filter_map(|w| self.written_value(w))
            };
            let mut all = values();
            match (all.next(), all.next()) {
                (value, None) => {
                    if let Some(edit) = single_value_edit(name, value, first.host_had) {
                        out(edit);
                    }
                }
                (Some(_), Some(_)) | (None, Some(_)) => {
                    if first.host_had {
                        out(HeaderEdit::Remove(Cow::Borrowed(name)));
                    }
                    for v in values() {
                        out(HeaderEdit::Add(Cow::Borrowed(name), Cow::Borrowed(v)));
                    }
                }
            }
        }
    }
}

/// The one edit that leaves `name` with `value` (or none) on a host whose map had it
/// (`host_had`) or not: a name the map never had is added, not set (Envoy's `addCopy` skips
/// the search for copies `setCopy` replaces), and nothing is written for it when it ends
/// with no value.
#[inline]
fn single_value_edit<'a>(
    name: &'a str,
    value: Option<&'a [u8]>,
    host_had: bool,
) -> Option<HeaderEdit<'a>> {
    let name = Cow::Borrowed(name);
    match (value, host_had) {
        (None, false) => None,
        (None, true) => Some(HeaderEdit::Remove(name)),
        (Some(v), true) => Some(HeaderEdit::Set(name, Cow::Borrowed(v))),
        (Some(v), false) => Some(HeaderEdit::Add(name, Cow::Borrowed(v))),
    }
}

/// The owned values of `edits` moved (emptied) to `spare` while it has room for them (see
/// [`Effects::copied`]); the edits, dropped next, then free nothing.
fn keep_values(edits: &mut [HeaderEdit<'_>], spare: &mut Vec<Vec<u8>>) {
    for edit in edits {
        if spare.len() >= SPARE_VALUES {
            return;
        }
        if let HeaderEdit::Set(_, Cow::Owned(value)) | HeaderEdit::Add(_, Cow::Owned(value)) = edit
            && value.capacity() <= SPARE_VALUE_ROOM
        {
            let mut value = std::mem::take(value);
            value.clear();
            spare.push(value);
        }
    }
}

/// An emptied view ([`HeaderList::view_into`]) with its room kept for the next one: the
/// element types differ only in lifetime, so the standard library's in-place collect reuses
/// the allocation.
pub fn recycle_view(view: Vec<(&str, &[u8])>) -> Vec<(&'static str, &'static [u8])> {
    emptied(view)
}

/// `items` emptied, as a vector of `U`, its room kept when `U` has `T`'s size and alignment
/// (`T` with other lifetimes: `recycled_views_and_effects_keep_their_room`), else a new empty
/// vector. (The standard library's in-place collect did the same at ≈ 70 instructions a call,
/// several calls a stage.)
fn emptied<T, U>(mut items: Vec<T>) -> Vec<U> {
    items.clear();
    if size_of::<T>() != size_of::<U>() || align_of::<T>() != align_of::<U>() || size_of::<T>() == 0
    {
        return Vec::new();
    }
    let mut items = std::mem::ManuallyDrop::new(items);
    let (ptr, room) = (items.as_mut_ptr(), items.capacity());
    // SAFETY: `ptr` was allocated for `room` values of `T`, which is the layout of `room`
    // values of `U` (same size and alignment, not zero-sized); the length is 0, so no `T` is
    // ever read as a `U`; `items` is not dropped, so the allocation has one owner.
    unsafe { Vec::from_raw_parts(ptr.cast::<U>(), 0, room) }
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
    fn a_native_hosts_pairs_read_as_the_same_list_without_non_utf8_names() {
        let lent: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/a"),
            (b"x", b""),
            (b"\xff", b"dropped"),
            (b"x", b"2"),
            (b"b", b"\xfe"),
        ];
        let native = HeaderList::from_pairs(lent.iter().copied());
        let serialised = HeaderList::from_serialized(serialize_header_map([
            (":path", &b"/a"[..]),
            ("x", b""),
            ("x", b"2"),
            ("b", b"\xfe"),
        ]));
        assert_eq!(native.pairs(), serialised.pairs());
        // One buffer of exactly the names and values (the dropped one counted, not copied).
        assert_eq!(native.base.len(), 12);
        assert_eq!(native.base.capacity(), 20);
        // A clone has its own copy of the host's headers.
        let mut copy = native.clone();
        drop(native);
        assert_eq!(copy.pairs(), serialised.pairs());
        // A list refilled for the next request forgets the last one and keeps its room.
        copy.refill_from_pairs(lent.iter().copied());
        copy.apply(&set("w", "1"));
        let room = copy.room();
        copy.refill_from_pairs(lent.iter().copied());
        assert_eq!(copy.pairs(), serialised.pairs());
        assert!(copy.write_back().is_empty());
        assert_eq!(copy.room(), room);
        assert!(
            HeaderList::from_pairs(std::iter::empty())
                .pairs()
                .is_empty()
        );
    }

    /// `edits` done to `map` as Envoy's header map does them.
    fn envoy_does(map: &mut Vec<(String, Vec<u8>)>, edits: &[HeaderEdit<'_>]) {
        for edit in edits {
            match edit {
                HeaderEdit::Set(n, v) => {
                    map.retain(|(m, _)| m != n);
                    map.push((n.to_string(), v.to_vec()));
                }
                HeaderEdit::Add(n, v) => map.push((n.to_string(), v.to_vec())),
                HeaderEdit::Remove(n) => map.retain(|(m, _)| m != n),
            }
        }
    }

    /// Each name's values in order (where a name sits in the map aside).
    fn by_name(map: &[(String, Vec<u8>)]) -> std::collections::BTreeMap<&str, Vec<&[u8]>> {
        let mut names = std::collections::BTreeMap::<&str, Vec<&[u8]>>::new();
        for (n, v) in map {
            names.entry(n.as_str()).or_default().push(v);
        }
        names
    }

    #[test]
    fn a_last_stages_edits_written_through_leave_the_map_as_the_list_would() {
        let host: &[(&str, &str)] = &[("a", "1"), ("b", "2"), ("b", "3")];
        let each = |n: &'static str| {
            [
                set(n, "new"),
                add(n, "more"),
                HeaderEdit::Remove(Cow::Borrowed(n)),
            ]
        };
        // Every edit on a name the host has once, twice or not at all, alone and in pairs.
        let mut cases: Vec<Vec<HeaderEdit<'static>>> = Vec::new();
        for n in ["a", "b", "c"] {
            for e in each(n) {
                cases.push(vec![e.clone()]);
                for m in ["a", "b", "c"].into_iter().filter(|m| *m != n) {
                    for f in each(m) {
                        cases.push(vec![e.clone(), f]);
                    }
                }
            }
        }
        for read in [true, false] {
            for edits in &cases {
                let fresh = || {
                    if read {
                        list(host)
                    } else {
                        HeaderList::default()
                    }
                };
                let mut through = Vec::new();
                assert!(fresh().write_through(edits, |e| through.push(e.into_owned())));
                let mut listed = fresh();
                for edit in edits {
                    listed.apply(edit);
                }
                let (mut by_list, mut by_through) = (Vec::new(), Vec::new());
                for (k, v) in host {
                    by_list.push((k.to_string(), v.as_bytes().to_vec()));
                }
                by_through.clone_from(&by_list);
                envoy_does(&mut by_list, &listed.write_back());
                envoy_does(&mut by_through, &through);
                assert_eq!(
                    by_name(&by_through),
                    by_name(&by_list),
                    "{edits:?} read {read}"
                );
                // Never more calls than the list's write-back.
                assert!(through.len() <= listed.write_back().len(), "{edits:?}");
            }
        }
        // A name the host lacks: set is an add, a removal no call; one it has: set.
        let mut out = Vec::new();
        assert!(list(host).write_through(
            &[set("c", "1"), HeaderEdit::Remove("d".into()), set("a", "2")],
            |e| out.push(e.into_owned())
        ));
        assert_eq!(out, vec![add("c", "1"), set("a", "2")]);
    }

    #[test]
    fn every_way_of_filling_a_list_knows_which_names_the_host_has() {
        let host: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/a"),
            (
                b"x-long-header-name-of-many-bytes-past-sixty-three-characters-xx",
                b"1",
            ),
            (b"ab", b"2"),
        ];
        let serialized = serialize_header_map(
            host.iter()
                .map(|(k, v)| (std::str::from_utf8(k).unwrap_or_default(), *v)),
        );
        let long = "x-long-header-name-of-many-bytes-past-sixty-three-characters-xx";
        let check = |h: &mut HeaderList| {
            for edit in [
                set("ab", "3"),
                set(long, "4"),
                set("cd", "5"),
                set("a", "6"),
            ] {
                h.apply(&edit);
            }
            h.apply(&HeaderEdit::Remove(":path".into()));
            h.apply(&HeaderEdit::Remove(":pat".into()));
            // The host's names are replaced or removed, the others only added.
            assert_eq!(
                h.write_back(),
                vec![
                    set("ab", "3"),
                    set(long, "4"),
                    add("cd", "5"),
                    add("a", "6"),
                    HeaderEdit::Remove(":path".into()),
                ]
            );
        };
        check(&mut HeaderList::from_serialized(serialized));
        let mut copied = HeaderList::from_pairs(host.iter().copied());
        check(&mut copied);
        // Emptied and refilled with nothing: no name is the host's any more.
        copied.refill_from_pairs(std::iter::empty());
        copied.apply(&set("ab", "7"));
        assert_eq!(copied.write_back(), vec![add("ab", "7")]);
        let mut borrowed = HeaderList::default();
        // SAFETY: `host` outlives the lists and is not changed.
        unsafe { borrowed.refill_borrowing(host.iter().copied()) };
        check(&mut borrowed);
        let mut owned = HeaderList::default();
        // SAFETY: as above.
        unsafe { owned.refill_borrowing(host.iter().copied()) };
        owned.own();
        check(&mut owned);
    }

    #[test]
    fn a_clone_goes_on_from_what_was_written() {
        let mut h = list(&[("a", "1")]);
        h.apply(&set("y", "1"));
        let mut copy = h.clone();
        copy.apply(&set("y", "2"));
        copy.apply(&add("a", "2"));
        assert_eq!(
            copy.write_back(),
            vec![
                add("y", "2"),
                HeaderEdit::Remove("a".into()),
                add("a", "1"),
                add("a", "2"),
            ]
        );
        assert_eq!(h.write_back(), vec![add("y", "1")]);
    }

    #[test]
    fn edits_are_not_written_through_a_list_already_written_or_twice_to_a_name() {
        let mut out = Vec::new();
        let mut written = list(&[("a", "1")]);
        written.apply(&set("b", "2"));
        assert!(!written.write_through(&[set("c", "3")], |e| out.push(e.into_owned())));
        assert!(!list(&[("a", "1")]).write_through(
            &[HeaderEdit::Remove("a".into()), set("b", "1"), set("a", "2")],
            |e| out.push(e.into_owned())
        ));
        assert!(list(&[]).write_through(&[], |e| out.push(e.into_owned())));
        assert_eq!(out, vec![], "nothing is written");
    }

    #[test]
    fn nothing_is_allocated_for_writes_until_a_stage_writes() {
        let mut h = HeaderList::from_pairs([(&b"a"[..], &b"1"[..])].into_iter());
        assert_eq!((h.arena.capacity(), h.written.capacity()), (0, 0));
        h.apply(&HeaderEdit::Remove("absent".into()));
        assert_eq!((h.arena.capacity(), h.written.capacity()), (0, 0));
        h.apply(&set("b", "2"));
        assert_eq!(h.pairs(), vec![("a", &b"1"[..]), ("b", b"2")]);
    }

    #[test]
    fn emptied_keeps_room_only_for_the_same_layout() {
        let kept: Vec<u32> = emptied(vec![1i32, 2, 3]);
        assert!(kept.is_empty() && kept.capacity() >= 3);
        let new: Vec<u64> = emptied(vec![1u8, 2, 3]);
        assert!(new.is_empty() && new.capacity() == 0);
        let unit: Vec<()> = emptied(vec![(), ()]);
        assert!(unit.is_empty());
    }

    #[test]
    fn recycled_views_and_effects_keep_their_room() {
        let h = list(&[("a", "1"), ("b", "2")]);
        let mut view = Vec::new();
        h.view_into(&mut view);
        assert_eq!(view, vec![("a", &b"1"[..]), ("b", b"2")]);
        let room = view.capacity();
        let view = recycle_view(view);
        assert!(view.is_empty() && view.capacity() == room);

        let mut fx = Effects::default();
        fx.set_request("a", b"1".to_vec());
        fx.set_response("b", &b"2"[..]);
        fx.counters.push((1, 1));
        fx.clear_route_cache = true;
        let room = (
            fx.request.capacity(),
            fx.response.capacity(),
            fx.counters.capacity(),
        );
        let fx = fx.recycle();
        assert!(fx.is_empty());
        assert_eq!(
            (
                fx.request.capacity(),
                fx.response.capacity(),
                fx.counters.capacity()
            ),
            room
        );
    }

    #[test]
    fn a_refilled_list_is_the_new_map_alone_in_the_old_room() {
        let serialized = |pairs: &[(&str, &str)]| {
            serialize_header_map(pairs.iter().map(|(k, v)| (*k, v.as_bytes())))
        };
        let mut h = list(&[("a", "1"), ("b", "2"), ("c", "3")]);
        h.apply(&set("x-new", "written"));
        h.apply(&HeaderEdit::Remove("a".into()));
        let room = (h.index.capacity(), h.arena.capacity(), h.written.capacity());
        h.refill_from_serialized(serialized(&[("d", "4"), ("b", "5")]));
        // Nothing of the old request: its headers, its edits.
        assert_eq!(h.pairs(), vec![("d", &b"4"[..]), ("b", b"5")]);
        assert!(h.write_back().is_empty());
        assert_eq!(
            (h.index.capacity(), h.arena.capacity(), h.written.capacity()),
            room
        );
        // The same list as one made from the map, and it reads as the host's (`host_read`):
        // a name it does not have is only added.
        let fresh = HeaderList::from_serialized(serialized(&[("d", "4"), ("b", "5")]));
        assert_eq!(h.pairs(), fresh.pairs());
        h.apply(&set("e", "6"));
        assert_eq!(h.write_back(), vec![add("e", "6")]);
        // A map that does not parse is an empty list.
        h.refill_from_serialized(vec![1, 2, 3]);
        assert!(h.pairs().is_empty());
    }

    #[test]
    fn the_rest_of_effects_is_taken_owned_and_the_request_side_stays() {
        let mut fx = Effects::default();
        fx.set_request("a", &b"1"[..]);
        fx.set_response("b", &b"2"[..]);
        fx.counters.push((1, 1));
        fx.clear_route_cache = true;
        fx.reply(401, vec![], "no".into());
        let rest = fx.take_rest();
        assert_eq!(rest.response, vec![set("b", "2")]);
        assert!(rest.clear_route_cache && rest.reply.is_some());
        assert!(rest.request.is_empty() && rest.counters.is_empty());
        assert_eq!((fx.request.len(), fx.counters.len()), (1, 1));
        assert!(fx.response.is_empty() && !fx.clear_route_cache && fx.reply.is_none());
    }

    #[test]
    fn recycled_effects_lend_their_owned_values_buffers_to_copies() {
        let mut fx = Effects::default();
        let first = fx.copied(b"alice");
        let at = first.as_ptr();
        fx.set_request("x-user-id", first);
        fx.set_response("x-b", &b"borrowed: not kept"[..]);
        let big = fx.copied(&[b'a'; SPARE_VALUE_ROOM + 1]);
        fx.add_response("x-big", big);
        let mut fx = fx.recycle();
        // The small owned value's buffer comes back, emptied; the borrowed and the big one not.
        assert_eq!(fx.spare_values.len(), 1);
        let again = fx.copied(b"bob");
        assert_eq!((again.as_ptr(), &again[..]), (at, &b"bob"[..]));
        assert_eq!(fx.copied(b"new"), b"new");
        // At most SPARE_VALUES are kept.
        for _ in 0..SPARE_VALUES + 3 {
            let v = fx.copied(b"v");
            fx.set_request("x", v);
        }
        let fx = fx.recycle();
        assert_eq!(fx.spare_values.len(), SPARE_VALUES);
        assert!(fx.spare_values.iter().all(Vec::is_empty));
    }

    #[test]
    fn a_list_not_read_from_the_host_sets_and_removes_every_name_it_writes() {
        // No stage read the headers: the host may have any name, so a single value replaces
        // its copies, a removal is written, and added values leave its copies alone.
        let mut h = HeaderList::default();
        h.apply(&set("x-request-id", "generated"));
        h.apply(&HeaderEdit::Remove("x-spoofed".into()));
        h.apply(&add("x-added", "1"));
        h.apply(&add("x-replaced", "1"));
        h.apply(&set("x-replaced", "2"));
        assert_eq!(
            h.write_back(),
            vec![
                set("x-request-id", "generated"),
                HeaderEdit::Remove("x-spoofed".into()),
                add("x-added", "1"),
                set("x-replaced", "2"),
            ]
        );
        // Read, then emptied for the next request: not read again, it knows nothing.
        let mut h = list(&[("a", "1")]);
        h.reset();
        h.apply(&set("a", "2"));
        assert_eq!(h.write_back(), vec![set("a", "2")]);
    }

    #[test]
    fn a_name_the_host_never_had_is_added_not_set_and_never_removed() {
        let mut h = list(&[("a", "1")]);
        h.apply(&set("new", "v"));
        h.apply(&set("gone", "v"));
        h.apply(&HeaderEdit::Remove("gone".into()));
        h.apply(&add("twice", "1"));
        h.apply(&add("twice", "2"));
        h.apply(&set("a", "2"));
        assert_eq!(
            h.write_back(),
            vec![
                add("new", "v"),
                add("twice", "1"),
                add("twice", "2"),
                set("a", "2"),
            ]
        );
        assert_eq!(
            h.pairs(),
            vec![
                ("new", &b"v"[..]),
                ("twice", b"1"),
                ("twice", b"2"),
                ("a", b"2")
            ]
        );
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
        // Removing a header that is not there changes nothing and costs no host call; a name
        // the host did not have is added.
        assert_eq!(
            h.write_back(),
            vec![set("x-request-id", "generated"), add("cookie", "a=1")]
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
    fn a_borrowing_list_owned_keeps_its_headers_and_what_was_written() {
        let mut host: Vec<(String, Vec<u8>)> = vec![
            (":path".into(), b"/a".to_vec()),
            ("x".into(), b"1".to_vec()),
            ("caf\u{e9}".into(), b"kept: UTF-8".to_vec()),
        ];
        let mut h = HeaderList::default();
        // SAFETY: `host` is not changed until `h` is owned below.
        unsafe {
            h.refill_borrowing(host.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())));
        }
        h.apply(&add("x", "2"));
        h.apply(&set("y", "3"));
        // What the list shows and would write back, owned.
        let snapshot = |h: &HeaderList| {
            let pairs: Vec<(String, Vec<u8>)> = h
                .pairs()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect();
            let edits: Vec<HeaderEdit<'static>> = h
                .write_back()
                .into_iter()
                .map(HeaderEdit::into_owned)
                .collect();
            (pairs, edits)
        };
        let before = snapshot(&h);
        h.own();
        // The host's memory changes (as Envoy's may once the hook returns): the list does not.
        for (_, value) in &mut host {
            value.fill(b'#');
        }
        drop(host);
        let after = snapshot(&h);
        assert_eq!(before, after);
        assert_eq!(
            after.0.first(),
            Some(&(":path".to_string(), b"/a".to_vec()))
        );
        // Owning twice, or a list that borrows nothing, changes nothing; a reset list borrows
        // nothing.
        h.own();
        assert_eq!(
            (h.pairs().len(), h.write_back().len()),
            (after.0.len(), after.1.len())
        );
        h.reset();
        assert!(!h.borrowed && h.pairs().is_empty());
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
