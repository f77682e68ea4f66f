//! Properties: plugin attributes, properties set by the host or the module, filter state and
//! the stream's attributes, encoded as Envoy does.

use super::{Ctx, OK, R, give, note_call, read, st, stream_of};
use crate::abi::{self, Status};
use crate::host::lock;
use crate::stream::StreamState;
use crate::vm::VmState;
use wasmtime::Linker;

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

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, p: i32, plen: i32, ptr_out: i32, len_out: i32| -> R {
            note_call(&mut c, "proxy_get_property");
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
            note_call(&mut c, "proxy_set_property");
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
    Ok(())
}
