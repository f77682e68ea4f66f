//! Buffers: the VM and plugin configurations, request and response bodies, and the bodies of
//! callout responses and gRPC messages.

use super::{Ctx, OK, R, fault, give, note_call, read, slot, st, write_u32};
use crate::abi::{Status, buffer};
use crate::vm::VmState;
use wasmtime::Linker;

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

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>, t: i32, start: i32, max: i32, ptr_out: i32, len_out: i32| -> R {
            note_call(&mut c, "proxy_get_buffer_bytes");
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
        |mut c: Ctx<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32| -> R { note_call(&mut c, "proxy_set_buffer_bytes");
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
            note_call(&mut c, "proxy_get_buffer_status");
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
    Ok(())
}
