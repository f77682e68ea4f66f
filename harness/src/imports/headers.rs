//! Header maps: the stream's headers and trailers (with Envoy's phase rules) and the headers,
//! trailers and metadata of callout responses.

use super::{Ctx, OK, R, fault, give, note_call, read, read_map, slot, st, write_u32};
use crate::abi::{self, Status, map};
use crate::host::lock;
use crate::stream::{HeaderMap, StreamState};
use crate::vm::VmState;
use std::sync::{Arc, Mutex};
use wasmtime::Linker;

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

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, t: i32, ptr_out: i32, len_out: i32| -> R {
            note_call(&mut c, "proxy_get_header_map_pairs");
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
            note_call(&mut c, "proxy_set_header_map_pairs");
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
            note_call(&mut c, "proxy_get_header_map_size");
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
            note_call(&mut c, "proxy_get_header_map_value");
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
            note_call(&mut c, "proxy_add_header_map_value");
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
            note_call(&mut c, "proxy_replace_header_map_value");
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
            note_call(&mut c, "proxy_remove_header_map_value");
            let key = read(&mut c, k, klen)?;
            let Some(m) = map_for(&mut c, t, true) else {
                return st(Status::BadArgument);
            };
            with_map(&mut c, &m, |hm| hm.remove(&key));
            OK
        },
    )?;
    Ok(())
}
