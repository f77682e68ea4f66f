//! Every host function a module built with proxy-wasm 0.2.5 can import: the 37 `env` functions of
//! ABI v0.2.1 (plus `proxy_get_header_map_size` and `proxy_get_buffer_status`, which the spec
//! names and the SDK never imports) and the WASI preview1 functions the Rust std links in.
//!
//! Each returns only statuses the SDK accepts for that call. Where Envoy would answer with a
//! status the SDK cannot take (bad memory, a malformed map), the module would panic; the host
//! traps right away with the reason instead, so the test sees the cause.
//!
//! This module has the memory and context helpers every area uses and [`define`], which registers
//! them all; each ABI area (header maps, buffers, properties, shared data and queues, stream
//! control, callouts, foreign functions, metrics, logging and time, WASI) is a submodule.

mod buffers;
mod callouts;
mod foreign_functions;
mod headers;
mod log_time;
mod metrics;
mod properties;
mod shared;
mod stream_control;
mod wasi;

use crate::abi::{self, Status};
use crate::stream::StreamState;
use crate::vm::{ContextSlot, Vm, VmState};
use std::sync::{Arc, Mutex};
use wasmtime::{Caller, Linker, Memory};

type Ctx<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

const OK: R = Ok(0);

/// Count a call of the import `name` (the per-name figures of [`crate::CallbackRecord`]).
fn note_call(caller: &mut Ctx<'_>, name: &'static str) {
    *caller
        .data_mut()
        .host_calls_by_name
        .entry(name)
        .or_insert(0) += 1;
}

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

/// Registers every import, area by area.
pub(crate) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    log_time::define(linker)?;
    buffers::define(linker)?;
    headers::define(linker)?;
    properties::define(linker)?;
    shared::define(linker)?;
    stream_control::define(linker)?;
    callouts::define(linker)?;
    foreign_functions::define(linker)?;
    metrics::define(linker)?;
    wasi::define(linker)
}
