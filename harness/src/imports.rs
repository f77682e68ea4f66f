//! Every host function a module built with proxy-wasm 0.2.5 can import: the 37 `env` functions of
//! ABI v0.2.1 (plus `proxy_get_header_map_size` and `proxy_get_buffer_status`, which the spec
//! names and the SDK never imports) and the WASI preview1 functions the Rust std links in.
//!
//! Each returns only statuses the SDK accepts for that call. Where Envoy would answer with a
//! status the SDK cannot take (bad memory, a malformed map), the module would panic; the host
//! traps right away with the reason instead, so the test sees the cause.

use crate::abi::{self, LogLevel, MetricType, Status, buffer, map, stream};
use crate::host::{MetricValue, lock};
use crate::stream::{HeaderMap, LocalResponse, StreamState};
use crate::vm::{CallId, ContextSlot, Effect, PendingGrpcCall, PendingHttpCall, Vm, VmState};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::{Caller, Linker, Memory};

type Ctx<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

const OK: R = Ok(0);

fn st(s: Status) -> R {
    Ok(s.code())
}

fn fault(caller: &mut Ctx<'_>, msg: String) -> wasmtime::Error {
    caller.data_mut().host_fault = Some(msg.clone());
    wasmtime::Error::msg(msg)
}

fn memory(caller: &mut Ctx<'_>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory").and_then(|e| e.into_memory()) {
        Some(m) => Ok(m),
        None => Err(fault(caller, "the module exports no memory".into())),
    }
}

fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    match mem.data(&*caller).get(start..start.saturating_add(len)) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => Err(fault(
            caller,
            format!("invalid memory access: {len} bytes at {start:#x}"),
        )),
    }
}

fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    let start = ptr as u32 as usize;
    match mem
        .data_mut(&mut *caller)
        .get_mut(start..start.saturating_add(bytes.len()))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Ok(())
        }
        None => Err(fault(
            caller,
            format!(
                "invalid memory access: writing {} bytes at {start:#x}",
                bytes.len()
            ),
        )),
    }
}

fn write_u32(caller: &mut Ctx<'_>, ptr: i32, v: u32) -> wasmtime::Result<()> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates (the SDK takes ownership with
/// `Vec::from_raw_parts`) and writes the pointer and size to the output slots.
fn give(caller: &mut Ctx<'_>, bytes: &[u8], ptr_out: i32, len_out: i32) -> wasmtime::Result<()> {
    let alloc = Vm::allocator(caller, "malloc")
        .or_else(|| Vm::allocator(caller, "proxy_on_memory_allocate"));
    let Some(alloc) = alloc else {
        return Err(fault(caller, "the module exports no allocator".into()));
    };
    let addr = alloc.call(&mut *caller, bytes.len() as i32)?;
    if addr == 0 && !bytes.is_empty() {
        return Err(fault(
            caller,
            format!(
                "the module's allocator returned null for {} bytes",
                bytes.len()
            ),
        ));
    }
    write(caller, addr, bytes)?;
    write_u32(caller, ptr_out, addr as u32)?;
    write_u32(caller, len_out, bytes.len() as u32)
}

fn read_map(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> wasmtime::Result<Option<abi::Pairs>> {
    let bytes = read(caller, ptr, len)?;
    Ok(abi::deserialize_map(&bytes))
}

/// The slot of the effective context, when it is an HTTP context.
fn slot<'a>(caller: &'a mut Ctx<'_>) -> Option<&'a mut ContextSlot> {
    let id = caller.data().effective_context;
    caller.data_mut().contexts.get_mut(&id)
}

fn stream_of(caller: &mut Ctx<'_>) -> Option<Arc<Mutex<StreamState>>> {
    slot(caller).map(|s| s.stream.clone())
}

enum MapRef {
    Stream(Arc<Mutex<StreamState>>, i32),
    Callout(i32),
}

/// Resolves a map type for the effective context, applying Envoy's phase rules.
fn map_for(caller: &mut Ctx<'_>, map_type: i32, write: bool) -> Option<MapRef> {
    match map_type {
        map::HTTP_REQUEST_HEADERS
        | map::HTTP_REQUEST_TRAILERS
        | map::HTTP_RESPONSE_HEADERS
        | map::HTTP_RESPONSE_TRAILERS => {
            let s = slot(caller)?;
            let a = s.access;
            let open = match map_type {
                map::HTTP_REQUEST_HEADERS => a.request_headers,
                map::HTTP_REQUEST_TRAILERS => a.request_trailers,
                map::HTTP_RESPONSE_HEADERS => a.response_headers,
                _ => a.response_trailers,
            };
            (open || (a.log && !write)).then(|| MapRef::Stream(s.stream.clone(), map_type))
        }
        map::GRPC_RECEIVE_INITIAL_METADATA
        | map::GRPC_RECEIVE_TRAILING_METADATA
        | map::HTTP_CALL_RESPONSE_HEADERS
        | map::HTTP_CALL_RESPONSE_TRAILERS => caller
            .data()
            .callout_response
            .as_ref()
            .map(|_| MapRef::Callout(map_type)),
        _ => None,
    }
}

fn with_map<T>(caller: &mut Ctx<'_>, m: &MapRef, f: impl FnOnce(&mut HeaderMap) -> T) -> T {
    match m {
        MapRef::Stream(s, t) => {
            let mut st = lock(s);
            let hm = match *t {
                map::HTTP_REQUEST_HEADERS => &mut st.request_headers,
                map::HTTP_REQUEST_TRAILERS => &mut st.request_trailers,
                map::HTTP_RESPONSE_HEADERS => &mut st.response_headers,
                _ => &mut st.response_trailers,
            };
            f(hm)
        }
        MapRef::Callout(t) => {
            let resp = caller
                .data_mut()
                .callout_response
                .get_or_insert_with(Default::default);
            let pairs = match *t {
                map::GRPC_RECEIVE_INITIAL_METADATA | map::HTTP_CALL_RESPONSE_HEADERS => {
                    &mut resp.headers
                }
                _ => &mut resp.trailers,
            };
            let mut hm = HeaderMap::from_byte_pairs(std::mem::take(pairs));
            let out = f(&mut hm);
            *pairs = hm.pairs().to_vec();
            out
        }
    }
}

/// Which body buffer a buffer type names for the effective context; `None` = not available now.
fn body_buffer<'a>(caller: &'a mut Ctx<'_>, buffer_type: i32) -> Option<&'a mut Vec<u8>> {
    match buffer_type {
        buffer::HTTP_REQUEST_BODY => {
            let s = slot(caller)?;
            (s.access.request_body || s.access.log).then_some(&mut s.request_body)
        }
        buffer::HTTP_RESPONSE_BODY => {
            let s = slot(caller)?;
            (s.access.response_body || s.access.log).then_some(&mut s.response_body)
        }
        buffer::HTTP_CALL_RESPONSE_BODY => caller
            .data_mut()
            .callout_response
            .as_mut()
            .map(|r| &mut r.body),
        buffer::GRPC_RECEIVE_BUFFER => caller.data_mut().grpc_message.as_mut(),
        _ => None,
    }
}

fn property(caller: &mut Ctx<'_>, path: &[u8]) -> Option<Vec<u8>> {
    let data = caller.data();
    let plugin = data.plugin.as_ref()?;
    match path {
        b"plugin_name" => return Some(plugin.name.clone().into_bytes()),
        b"plugin_root_id" => return Some(plugin.root_id.clone().into_bytes()),
        b"plugin_vm_id" => return Some(plugin.vm_id.clone().into_bytes()),
        _ => {}
    }
    if let Some(v) = data.vm_properties.get(path) {
        return Some(v.clone());
    }
    if let Some(stream) = data
        .contexts
        .get(&data.effective_context)
        .map(|s| s.stream.clone())
    {
        let st = lock(&stream);
        if let Some(v) = st.filter_state.get(path) {
            return Some(v.clone());
        }
        if let Some(v) = stream_property(&st, path) {
            return Some(v);
        }
    }
    let shared = data.shared()?;
    lock(&shared.properties).get(path).cloned()
}

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// `request.*`, `response.*`, `source.*`, `destination.*` and route attributes, encoded as Envoy does.
fn stream_property(st: &StreamState, path: &[u8]) -> Option<Vec<u8>> {
    let h = &st.request_headers;
    let header = |name: &str| h.get_bytes(name).map(|v| v.to_vec());
    let opts = st.options.clone().unwrap_or_default();
    let port = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<i64>().ok());
    let full_path = h.get_bytes(":path").unwrap_or_default();
    match path {
        b"request\0path" => header(":path"),
        b"request\0url_path" => Some(
            full_path
                .split(|b| *b == b'?')
                .next()
                .unwrap_or_default()
                .to_vec(),
        ),
        b"request\0query" => full_path
            .iter()
            .position(|b| *b == b'?')
            .map(|i| full_path[i + 1..].to_vec()),
        b"request\0host" => header(":authority"),
        b"request\0method" => header(":method"),
        b"request\0scheme" => header(":scheme"),
        b"request\0referer" => header("referer"),
        b"request\0useragent" => header("user-agent"),
        b"request\0id" => header("x-request-id"),
        b"request\0protocol" => Some(opts.protocol.into_bytes()),
        b"request\0headers" => Some(abi::serialize_map(h.pairs())),
        b"response\0code" => st
            .response_headers
            .get(":status")?
            .parse::<i64>()
            .ok()
            .map(int),
        b"response\0headers" => Some(abi::serialize_map(st.response_headers.pairs())),
        b"source\0address" => Some(opts.source_address.into_bytes()),
        b"source\0port" => port(&opts.source_address).map(int),
        b"destination\0address" => Some(opts.destination_address.into_bytes()),
        b"destination\0port" => port(&opts.destination_address).map(int),
        b"xds\0route_name" => Some(opts.route_name.into_bytes()),
        _ => None,
    }
}

pub(crate) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    // ---- logging and time -------------------------------------------------------------------
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> R {
            let msg = read(&mut c, ptr, len)?;
            let level = LogLevel::from_raw(level).unwrap_or(LogLevel::Info);
            c.data_mut()
                .log(level, String::from_utf8_lossy(&msg).into_owned());
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Ctx<'_>, ret: i32| -> R {
            let level = c
                .data()
                .plugin
                .as_ref()
                .map_or(LogLevel::Trace, |p| p.log_level);
            write_u32(&mut c, ret, level as u32)?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ret: i32| -> R {
            let now = c.data().host.as_ref().map_or(0, |h| h.now_ns());
            write(&mut c, ret, &now.to_le_bytes())?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, ms: i32| -> R {
            let now = c.data().host.as_ref().map_or(0, |h| h.now_ns());
            let d = c.data_mut();
            d.tick_period_ms = ms as u32;
            d.next_tick_ns = now + (ms as u32 as u64) * 1_000_000;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Ctx<'_>, ctx: i32| -> R {
            let ctx = ctx as u32;
            let d = c.data_mut();
            if ctx == d.root_context_id || d.contexts.contains_key(&ctx) {
                d.effective_context = ctx;
                OK
            } else {
                st(Status::BadArgument)
            }
        },
    )?;
    // Envoy (proxy-wasm-cpp-host `WasmBase::done`) answers Ok only for a root context whose
    // `on_done` returned false during VM shutdown; this host never shuts a VM down, so there
    // is never such a context: NotFound, as Envoy answers a stream or an idle root context.
    linker.func_wrap("env", "proxy_done", |mut c: Ctx<'_>| -> R {
        c.data_mut().done_calls += 1;
        st(Status::NotFound)
    })?;

    // ---- buffers ------------------------------------------------------------------------------
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>, t: i32, start: i32, max: i32, ptr_out: i32, len_out: i32| -> R {
            let bytes: Vec<u8> = match t {
                buffer::VM_CONFIGURATION => c
                    .data()
                    .plugin
                    .as_ref()
                    .map(|p| p.vm_configuration.clone())
                    .unwrap_or_default(),
                buffer::PLUGIN_CONFIGURATION => c
                    .data()
                    .plugin
                    .as_ref()
                    .map(|p| p.configuration.clone())
                    .unwrap_or_default(),
                _ => match body_buffer(&mut c, t) {
                    Some(b) => b.clone(),
                    None => return st(Status::NotFound),
                },
            };
            let start = (start as u32 as usize).min(bytes.len());
            let end = start.saturating_add(max as u32 as usize).min(bytes.len());
            // As proxy-wasm-cpp-host: nothing is written for an empty range (the SDK sees None).
            if end > start {
                give(&mut c, &bytes[start..end], ptr_out, len_out)?;
            }
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let data = read(&mut c, ptr, len)?;
            let readonly = slot(&mut c).is_some_and(|s| s.access.log);
            let Some(buf) = body_buffer(&mut c, t) else {
                return Err(fault(&mut c, format!("set_buffer_bytes: buffer type {t} is not available in this callback (Envoy answers NotFound, which the SDK does not accept)")));
            };
            if readonly && (t == buffer::HTTP_REQUEST_BODY || t == buffer::HTTP_RESPONSE_BODY) {
                return Err(fault(&mut c, "set_buffer_bytes: bodies are read-only in on_log".into()));
            }
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(size as u32 as usize).min(buf.len());
            buf.splice(start..end, data);
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: Ctx<'_>, t: i32, len_out: i32, flags_out: i32| -> R {
            let len = match t {
                buffer::VM_CONFIGURATION => c
                    .data()
                    .plugin
                    .as_ref()
                    .map_or(0, |p| p.vm_configuration.len()),
                buffer::PLUGIN_CONFIGURATION => c
                    .data()
                    .plugin
                    .as_ref()
                    .map_or(0, |p| p.configuration.len()),
                _ => match body_buffer(&mut c, t) {
                    Some(b) => b.len(),
                    None => return st(Status::NotFound),
                },
            };
            write_u32(&mut c, len_out, len as u32)?;
            write_u32(&mut c, flags_out, 0)?;
            OK
        },
    )?;

    // ---- header maps --------------------------------------------------------------------------
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, t: i32, ptr_out: i32, len_out: i32| -> R {
            let Some(m) = map_for(&mut c, t, false) else {
                return st(Status::BadArgument);
            };
            let bytes = with_map(&mut c, &m, |hm| abi::serialize_map(hm.pairs()));
            give(&mut c, &bytes, ptr_out, len_out)?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, t: i32, ptr: i32, len: i32| -> R {
            let Some(pairs) = read_map(&mut c, ptr, len)? else {
                return Err(fault(
                    &mut c,
                    "set_header_map_pairs: malformed serialized map".into(),
                ));
            };
            let Some(m) = map_for(&mut c, t, true) else {
                return st(Status::BadArgument);
            };
            with_map(&mut c, &m, |hm| hm.set_all(pairs));
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: Ctx<'_>, t: i32, ret: i32| -> R {
            let Some(m) = map_for(&mut c, t, false) else {
                return st(Status::BadArgument);
            };
            let n = with_map(&mut c, &m, |hm| abi::serialize_map(hm.pairs()).len());
            write_u32(&mut c, ret, n as u32)?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>, t: i32, k: i32, klen: i32, ptr_out: i32, len_out: i32| -> R {
            let key = read(&mut c, k, klen)?;
            let Some(m) = map_for(&mut c, t, false) else {
                return st(Status::BadArgument);
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            match with_map(&mut c, &m, |hm| hm.get_bytes(&key).map(|v| v.to_vec())) {
                Some(v) => {
                    give(&mut c, &v, ptr_out, len_out)?;
                    OK
                }
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Ctx<'_>, t: i32, k: i32, klen: i32, v: i32, vlen: i32| -> R {
            let (key, value) = (read(&mut c, k, klen)?, read(&mut c, v, vlen)?);
            let Some(m) = map_for(&mut c, t, true) else {
                return st(Status::BadArgument);
            };
            with_map(&mut c, &m, |hm| hm.add(&key, &value));
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_>, t: i32, k: i32, klen: i32, v: i32, vlen: i32| -> R {
            let (key, value) = (read(&mut c, k, klen)?, read(&mut c, v, vlen)?);
            let Some(m) = map_for(&mut c, t, true) else {
                return st(Status::BadArgument);
            };
            with_map(&mut c, &m, |hm| hm.replace(&key, &value));
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, t: i32, k: i32, klen: i32| -> R {
            let key = read(&mut c, k, klen)?;
            let Some(m) = map_for(&mut c, t, true) else {
                return st(Status::BadArgument);
            };
            with_map(&mut c, &m, |hm| hm.remove(&key));
            OK
        },
    )?;

    // ---- properties ---------------------------------------------------------------------------
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, p: i32, plen: i32, ptr_out: i32, len_out: i32| -> R {
            let path = read(&mut c, p, plen)?;
            match property(&mut c, &path) {
                Some(v) => {
                    give(&mut c, &v, ptr_out, len_out)?;
                    OK
                }
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Ctx<'_>, p: i32, plen: i32, v: i32, vlen: i32| -> R {
            let (path, value) = (read(&mut c, p, plen)?, read(&mut c, v, vlen)?);
            match stream_of(&mut c) {
                Some(s) => {
                    lock(&s).filter_state.insert(path, value);
                }
                None => {
                    c.data_mut().vm_properties.insert(path, value);
                }
            }
            OK
        },
    )?;

    // ---- shared data and queues ---------------------------------------------------------------
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, k: i32, klen: i32, ptr_out: i32, len_out: i32, cas_out: i32| -> R {
            let key = read(&mut c, k, klen)?;
            let vm_id = c.data().vm_id().to_string();
            let entry = c
                .data()
                .shared()
                .and_then(|s| lock(&s.shared_data).get(&vm_id, &key));
            match entry {
                Some((value, cas)) => {
                    if !value.is_empty() {
                        give(&mut c, &value, ptr_out, len_out)?;
                    }
                    write_u32(&mut c, cas_out, cas)?;
                    OK
                }
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, k: i32, klen: i32, v: i32, vlen: i32, cas: i32| -> R {
            let (key, value) = (read(&mut c, k, klen)?, read(&mut c, v, vlen)?);
            let vm_id = c.data().vm_id().to_string();
            let status = match c.data().shared() {
                Some(s) => lock(&s.shared_data).set(&vm_id, &key, &value, cas as u32),
                None => Status::InternalFailure,
            };
            st(status)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Ctx<'_>, n: i32, nlen: i32, id_out: i32| -> R {
            let name = String::from_utf8_lossy(&read(&mut c, n, nlen)?).into_owned();
            let (vm_id, owner) = (
                c.data().vm_id().to_string(),
                (c.data().vm_key, c.data().root_context_id),
            );
            let id = {
                let Some(shared) = c.data().shared() else {
                    return st(Status::InternalFailure);
                };
                let mut q = lock(&shared.queues);
                match q
                    .by_id
                    .iter()
                    .find(|(_, q)| q.vm_id == vm_id && q.name == name)
                {
                    Some((id, _)) => *id,
                    None => {
                        q.next_id += 1;
                        let id = q.next_id;
                        q.by_id.insert(
                            id,
                            crate::host::Queue {
                                vm_id,
                                name,
                                owner,
                                items: Default::default(),
                            },
                        );
                        id
                    }
                }
            };
            write_u32(&mut c, id_out, id)?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Ctx<'_>, v: i32, vlen: i32, n: i32, nlen: i32, id_out: i32| -> R {
            let mut vm_id = String::from_utf8_lossy(&read(&mut c, v, vlen)?).into_owned();
            let name = String::from_utf8_lossy(&read(&mut c, n, nlen)?).into_owned();
            // As Envoy (`ContextBase::lookupSharedQueue`): an empty vm_id means the caller's own.
            if vm_id.is_empty() {
                vm_id = c.data().vm_id().to_string();
            }
            let found = c.data().shared().and_then(|s| {
                lock(&s.queues)
                    .by_id
                    .iter()
                    .find(|(_, q)| q.vm_id == vm_id && q.name == name)
                    .map(|(id, _)| *id)
            });
            match found {
                Some(id) => {
                    write_u32(&mut c, id_out, id)?;
                    OK
                }
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ptr: i32, len: i32| -> R {
            let data = read(&mut c, ptr, len)?;
            let Some(shared) = c.data().shared() else {
                return st(Status::InternalFailure);
            };
            let mut q = lock(&shared.queues);
            let owner = match q.by_id.get_mut(&(id as u32)) {
                Some(queue) => {
                    queue.items.push_back(data);
                    queue.owner
                }
                None => return st(Status::NotFound),
            };
            q.ready
                .entry(owner.0)
                .or_default()
                .push((owner.1, id as u32));
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ptr_out: i32, len_out: i32| -> R {
            let item = {
                let Some(shared) = c.data().shared() else {
                    return st(Status::InternalFailure);
                };
                let mut q = lock(&shared.queues);
                match q.by_id.get_mut(&(id as u32)) {
                    Some(queue) => queue.items.pop_front(),
                    None => return st(Status::NotFound),
                }
            };
            match item {
                Some(data) => {
                    give(&mut c, &data, ptr_out, len_out)?;
                    OK
                }
                None => st(Status::Empty),
            }
        },
    )?;

    // ---- stream control -----------------------------------------------------------------------
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Ctx<'_>, t: i32| -> R {
            let ctx = c.data().effective_context;
            if slot(&mut c).is_some() {
                match t {
                    stream::HTTP_REQUEST => c.data_mut().effects.push(Effect::ContinueRequest(ctx)),
                    stream::HTTP_RESPONSE => {
                        c.data_mut().effects.push(Effect::ContinueResponse(ctx))
                    }
                    // L4 (downstream/upstream) streams are not emulated.
                    stream::DOWNSTREAM | stream::UPSTREAM => {}
                    _ => return st(Status::BadArgument),
                }
            }
            OK
        },
    )?;
    linker.func_wrap("env", "proxy_close_stream", |mut c: Ctx<'_>, t: i32| -> R {
        let ctx = c.data().effective_context;
        if slot(&mut c).is_some() && (t == stream::HTTP_REQUEST || t == stream::HTTP_RESPONSE) {
            c.data_mut().effects.push(Effect::ResetStream(ctx));
        }
        OK
    })?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>, code: i32, d: i32, dlen: i32, b: i32, blen: i32, h: i32, hlen: i32, grpc: i32| -> R {
            let details = String::from_utf8_lossy(&read(&mut c, d, dlen)?).into_owned();
            let body = read(&mut c, b, blen)?;
            let Some(headers) = read_map(&mut c, h, hlen)? else {
                return Err(fault(&mut c, "send_local_response: malformed serialized header map".into()));
            };
            let ctx = c.data().effective_context;
            if slot(&mut c).is_none() {
                return Err(fault(&mut c, "send_local_response called outside an HTTP context (Envoy answers BadArgument, which the SDK does not accept)".into()));
            }
            let reply = LocalResponse {
                sent_by: 0, // set by the worker, which knows the chain position
                status: code as u32,
                details,
                body,
                headers: HeaderMap::from_byte_pairs(headers),
                grpc_status: (0..=16).contains(&grpc).then_some(grpc),
            };
            c.data_mut().effects.push(Effect::LocalResponse(ctx, reply));
            OK
        },
    )?;

    // ---- callouts -----------------------------------------------------------------------------
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         u: i32,
         ulen: i32,
         h: i32,
         hlen: i32,
         b: i32,
         blen: i32,
         t: i32,
         tlen: i32,
         timeout: i32,
         token_out: i32|
         -> R {
            let upstream = String::from_utf8_lossy(&read(&mut c, u, ulen)?).into_owned();
            let (Some(headers), body, Some(trailers)) = (
                read_map(&mut c, h, hlen)?,
                read(&mut c, b, blen)?,
                read_map(&mut c, t, tlen)?,
            ) else {
                return st(Status::BadArgument);
            };
            let known = c
                .data()
                .shared()
                .is_some_and(|s| lock(&s.clusters).contains(&upstream));
            let headers = HeaderMap::from_byte_pairs(headers);
            let complete = [":method", ":path", ":authority"]
                .iter()
                .all(|n| headers.contains(n));
            if !known || !complete {
                let why = if known {
                    "a :method, :path or :authority header is missing"
                } else {
                    "unknown cluster"
                };
                c.data_mut().log(
                    LogLevel::Debug,
                    format!("[harness] http_call to {upstream:?} refused (BadArgument): {why}"),
                );
                return st(Status::BadArgument);
            }
            let now = c.data().host.as_ref().map_or(0, |h| h.now_ns());
            let d = c.data_mut();
            let token = d.next_token;
            d.next_token += 1;
            let timeout = Duration::from_millis(timeout as u32 as u64);
            d.http_calls.insert(
                token,
                PendingHttpCall {
                    id: CallId {
                        vm: d.vm_index,
                        token,
                    },
                    upstream,
                    headers,
                    body,
                    trailers: HeaderMap::from_byte_pairs(trailers),
                    timeout,
                    deadline_ns: (!timeout.is_zero()).then(|| now + timeout.as_nanos() as u64),
                },
            );
            write_u32(&mut c, token_out, token)?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: Ctx<'_>,
         u: i32,
         ulen: i32,
         s: i32,
         slen: i32,
         m: i32,
         mlen: i32,
         md: i32,
         mdlen: i32,
         msg: i32,
         msglen: i32,
         timeout: i32,
         token_out: i32|
         -> R {
            let upstream = String::from_utf8_lossy(&read(&mut c, u, ulen)?).into_owned();
            let service = String::from_utf8_lossy(&read(&mut c, s, slen)?).into_owned();
            let method = String::from_utf8_lossy(&read(&mut c, m, mlen)?).into_owned();
            let Some(metadata) = read_map(&mut c, md, mdlen)? else {
                return st(Status::ParseFailure);
            };
            let message = read(&mut c, msg, msglen)?;
            grpc_open(
                &mut c,
                upstream,
                service,
                method,
                metadata,
                vec![message],
                timeout,
                false,
                token_out,
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: Ctx<'_>,
         u: i32,
         ulen: i32,
         s: i32,
         slen: i32,
         m: i32,
         mlen: i32,
         md: i32,
         mdlen: i32,
         token_out: i32|
         -> R {
            let upstream = String::from_utf8_lossy(&read(&mut c, u, ulen)?).into_owned();
            let service = String::from_utf8_lossy(&read(&mut c, s, slen)?).into_owned();
            let method = String::from_utf8_lossy(&read(&mut c, m, mlen)?).into_owned();
            let Some(metadata) = read_map(&mut c, md, mdlen)? else {
                return st(Status::ParseFailure);
            };
            grpc_open(
                &mut c,
                upstream,
                service,
                method,
                metadata,
                Vec::new(),
                0,
                true,
                token_out,
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: Ctx<'_>, token: i32, p: i32, len: i32, eos: i32| -> R {
            let message = read(&mut c, p, len)?;
            match c.data_mut().grpc_calls.get_mut(&(token as u32)) {
                Some(call) if call.streaming && !call.half_closed => {
                    call.messages.push(message);
                    call.half_closed = eos != 0;
                    OK
                }
                Some(_) => st(Status::BadArgument),
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut c: Ctx<'_>, token: i32| -> R {
            // Envoy drops a cancelled call: no callback will come for it.
            match c.data_mut().grpc_calls.remove(&(token as u32)) {
                Some(_) => OK,
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut c: Ctx<'_>, token: i32| -> R {
            match c.data_mut().grpc_calls.get_mut(&(token as u32)) {
                Some(call) => {
                    call.half_closed = true;
                    OK
                }
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Ctx<'_>, code_out: i32, ptr_out: i32, len_out: i32| -> R {
            let (code, msg) = c.data().status.clone();
            write_u32(&mut c, code_out, code)?;
            if !msg.is_empty() {
                give(&mut c, &msg, ptr_out, len_out)?;
            }
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Ctx<'_>, n: i32, nlen: i32, a: i32, alen: i32, ptr_out: i32, len_out: i32| -> R {
            let name = String::from_utf8_lossy(&read(&mut c, n, nlen)?).into_owned();
            let args = read(&mut c, a, alen)?;
            let missing = c
                .data()
                .shared()
                .is_some_and(|s| lock(&s.missing_builtins).contains(&name));
            if name == "clear_route_cache" && !missing {
                return match stream_of(&mut c) {
                    Some(s) => {
                        lock(&s).route_cache_clears += 1;
                        OK
                    }
                    None => st(Status::BadArgument),
                };
            }
            let f = c
                .data()
                .shared()
                .and_then(|s| lock(&s.foreign).get(&name).cloned());
            // Registered functions first (tests may wrap a built-in), then Envoy's built-ins.
            let result = match f {
                Some(f) => f(&args),
                None if name == "verify_signature" && !missing => {
                    crate::foreign::verify_signature(&args)
                }
                None => return st(Status::NotFound),
            };
            match result {
                Ok(result) => {
                    if !result.is_empty() {
                        give(&mut c, &result, ptr_out, len_out)?;
                    }
                    OK
                }
                Err(status) => st(status),
            }
        },
    )?;

    // ---- metrics (process-wide by name, as Envoy's stats) ------------------------------------
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, t: i32, n: i32, nlen: i32, id_out: i32| -> R {
            let name = String::from_utf8_lossy(&read(&mut c, n, nlen)?).into_owned();
            let Some(kind) = MetricType::from_raw(t) else {
                return Err(fault(
                    &mut c,
                    format!("define_metric: unknown metric type {t}"),
                ));
            };
            if let Some(s) = c.data().shared() {
                lock(&s.metrics).define(kind, &name);
            }
            // Envoy hands out a new id for every definition, even of a name it has seen.
            let d = c.data_mut();
            // As Envoy: the metric type sits in the id's two low bits (counter 0, gauge 1,
            // histogram 2), so an id with 3 there is no metric at all (BadArgument).
            let id = (d.next_metric_id << 2) | kind as u32;
            d.next_metric_id += 1;
            d.metric_ids.insert(id, (kind, name));
            write_u32(&mut c, id_out, id)?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Ctx<'_>, id: i32, delta: i64| -> R {
            update_metric(&c, id, |kind, v| match (kind, v) {
                (MetricType::Counter, MetricValue::Counter(x)) if delta > 0 => {
                    *x = x.saturating_add(delta as u64);
                    Status::Ok
                }
                (MetricType::Gauge, MetricValue::Gauge(x)) => {
                    *x = x.saturating_add(delta);
                    Status::Ok
                }
                _ => Status::BadArgument,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Ctx<'_>, id: i32, value: i64| -> R {
            update_metric(&c, id, |_, v| {
                match v {
                    MetricValue::Counter(x) => *x = x.saturating_add(value as u64),
                    MetricValue::Gauge(x) => *x = value,
                    MetricValue::Histogram(h) => h.push(value as u64),
                }
                Status::Ok
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, ret: i32| -> R {
            let (_, name) = match metric_of(&c, id) {
                Ok(m) => m,
                Err(status) => return st(status),
            };
            let value = c
                .data()
                .shared()
                .and_then(|s| lock(&s.metrics).values.get(&name).cloned());
            let v = match value {
                Some(MetricValue::Counter(x)) => x,
                Some(MetricValue::Gauge(x)) => x as u64,
                Some(MetricValue::Histogram(_)) => return st(Status::BadArgument),
                None => return st(Status::NotFound),
            };
            write(&mut c, ret, &v.to_le_bytes())?;
            OK
        },
    )?;

    define_wasi(linker)
}

#[allow(clippy::too_many_arguments)]
fn grpc_open(
    c: &mut Ctx<'_>,
    upstream: String,
    service: String,
    method: String,
    metadata: Vec<(Vec<u8>, Vec<u8>)>,
    messages: Vec<Vec<u8>>,
    timeout_ms: i32,
    streaming: bool,
    token_out: i32,
) -> R {
    let known = c
        .data()
        .shared()
        .is_some_and(|s| lock(&s.clusters).contains(&upstream));
    if !known {
        c.data_mut().log(
            LogLevel::Debug,
            format!("[harness] gRPC to unknown cluster {upstream:?} refused (ParseFailure)"),
        );
        return st(Status::ParseFailure);
    }
    let d = c.data_mut();
    let token = d.next_token;
    d.next_token += 1;
    d.grpc_calls.insert(
        token,
        PendingGrpcCall {
            id: CallId {
                vm: d.vm_index,
                token,
            },
            upstream,
            service,
            method,
            initial_metadata: HeaderMap::from_byte_pairs(metadata),
            messages,
            timeout: Duration::from_millis(timeout_ms as u32 as u64),
            streaming,
            half_closed: !streaming,
            cancelled: false,
        },
    );
    write_u32(c, token_out, token)?;
    OK
}

/// A metric id as Envoy reads it: type bits 3 → BadArgument; an unknown id → NotFound.
fn metric_of(c: &Ctx<'_>, id: i32) -> Result<(MetricType, String), Status> {
    if id as u32 & 3 == 3 {
        return Err(Status::BadArgument);
    }
    c.data()
        .metric_ids
        .get(&(id as u32))
        .cloned()
        .ok_or(Status::NotFound)
}

fn update_metric(
    c: &Ctx<'_>,
    id: i32,
    f: impl FnOnce(MetricType, &mut MetricValue) -> Status,
) -> R {
    let (kind, name) = match metric_of(c, id) {
        Ok(m) => m,
        Err(status) => return st(status),
    };
    let Some(shared) = c.data().shared() else {
        return st(Status::NotFound);
    };
    let mut m = lock(&shared.metrics);
    match m.values.get_mut(&name) {
        Some(v) => st(f(kind, v)),
        None => st(Status::NotFound),
    }
}

// ---- WASI preview1 ------------------------------------------------------------------------------

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;

fn define_wasi(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    const W: &str = "wasi_snapshot_preview1";
    linker.func_wrap(
        W,
        "fd_write",
        |mut c: Ctx<'_>, fd: i32, iovs: i32, n: i32, written_out: i32| -> R {
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            let mut out = Vec::new();
            for i in 0..n.max(0) {
                let iov = read(&mut c, iovs + i * 8, 8)?;
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                out.extend(read(&mut c, ptr, len)?);
            }
            write_u32(&mut c, written_out, out.len() as u32)?;
            // stdout/stderr become log lines (Envoy logs them at info / error).
            let level = if fd == 1 {
                LogLevel::Info
            } else {
                LogLevel::Error
            };
            let text = String::from_utf8_lossy(&out);
            for line in text.lines().filter(|l| !l.is_empty()) {
                c.data_mut().log(level, line.to_string());
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        W,
        "environ_sizes_get",
        |mut c: Ctx<'_>, count_out: i32, size_out: i32| -> R {
            let env = c
                .data()
                .plugin
                .as_ref()
                .map(|p| p.env.clone())
                .unwrap_or_default();
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            write_u32(&mut c, count_out, env.len() as u32)?;
            write_u32(&mut c, size_out, size as u32)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        W,
        "environ_get",
        |mut c: Ctx<'_>, ptrs: i32, buf: i32| -> R {
            let env = c
                .data()
                .plugin
                .as_ref()
                .map(|p| p.env.clone())
                .unwrap_or_default();
            let mut at = buf;
            for (i, (k, v)) in env.iter().enumerate() {
                let entry = format!("{k}={v}\0");
                write_u32(&mut c, ptrs + (i as i32) * 4, at as u32)?;
                write(&mut c, at, entry.as_bytes())?;
                at += entry.len() as i32;
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        W,
        "args_sizes_get",
        |mut c: Ctx<'_>, count_out: i32, size_out: i32| -> R {
            write_u32(&mut c, count_out, 0)?;
            write_u32(&mut c, size_out, 0)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(W, "args_get", |_c: Ctx<'_>, _argv: i32, _buf: i32| -> R {
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(
        W,
        "clock_time_get",
        |mut c: Ctx<'_>, id: i32, _precision: i64, out: i32| -> R {
            let Some(host) = c.data().host.clone() else {
                return Ok(ERRNO_INVAL);
            };
            let ns = match id {
                0 => host.now_ns(), // realtime
                1 => host.now_ns().saturating_sub(host.shared.start_ns) + 1_000_000_000, // monotonic
                2 | 3 => 0,                                                              // cpu time
                _ => return Ok(ERRNO_INVAL),
            };
            write(&mut c, out, &ns.to_le_bytes())?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(W, "random_get", |mut c: Ctx<'_>, buf: i32, len: i32| -> R {
        let mut bytes = vec![0u8; len as u32 as usize];
        if let Some(h) = c.data().host.clone() {
            h.next_random(&mut bytes);
        }
        write(&mut c, buf, &bytes)?;
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(
        W,
        "proc_exit",
        |mut c: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
            c.data_mut().exit_code = Some(code);
            Err(wasmtime::Error::msg(format!("proc_exit({code})")))
        },
    )?;
    linker.func_wrap(W, "sched_yield", |_c: Ctx<'_>| -> R { Ok(ERRNO_SUCCESS) })?;
    linker.func_wrap(W, "fd_close", |_c: Ctx<'_>, _fd: i32| -> R {
        Ok(ERRNO_BADF)
    })?;
    linker.func_wrap(
        W,
        "fd_fdstat_get",
        |_c: Ctx<'_>, _fd: i32, _out: i32| -> R { Ok(ERRNO_BADF) },
    )?;
    linker.func_wrap(
        W,
        "fd_seek",
        |_c: Ctx<'_>, _fd: i32, _off: i64, _whence: i32, _out: i32| -> R { Ok(ERRNO_BADF) },
    )?;
    Ok(())
}
