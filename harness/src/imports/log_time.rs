//! Logging, time and the VM's own state: `proxy_log`, `proxy_get_log_level`, the current
//! time (the host's virtual clock), the tick period, `proxy_set_effective_context` and
//! `proxy_done`.

use super::{Ctx, OK, R, note_call, read, st, write, write_u32};
use crate::abi::{LogLevel, Status};
use crate::vm::VmState;
use wasmtime::Linker;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> R {
            note_call(&mut c, "proxy_log");
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
            note_call(&mut c, "proxy_get_log_level");
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
            note_call(&mut c, "proxy_get_current_time_nanoseconds");
            let now = c.data().host.as_ref().map_or(0, |h| h.now_ns());
            write(&mut c, ret, &now.to_le_bytes())?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, ms: i32| -> R {
            note_call(&mut c, "proxy_set_tick_period_milliseconds");
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
            note_call(&mut c, "proxy_set_effective_context");
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
        note_call(&mut c, "proxy_done");
        c.data_mut().done_calls += 1;
        st(Status::NotFound)
    })?;
    Ok(())
}
