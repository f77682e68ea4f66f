//! Stream control: `proxy_continue_stream`, `proxy_close_stream` and
//! `proxy_send_local_response`, recorded as effects the worker applies.

use super::{Ctx, OK, R, fault, note_call, read, read_map, slot, st};
use crate::abi::{Status, stream};
use crate::stream::{HeaderMap, LocalResponse};
use crate::vm::{Effect, VmState};
use wasmtime::Linker;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Ctx<'_>, t: i32| -> R {
            note_call(&mut c, "proxy_continue_stream");
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
        note_call(&mut c, "proxy_close_stream");
        let ctx = c.data().effective_context;
        if slot(&mut c).is_some() && (t == stream::HTTP_REQUEST || t == stream::HTTP_RESPONSE) {
            c.data_mut().effects.push(Effect::ResetStream(ctx));
        }
        OK
    })?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>, code: i32, d: i32, dlen: i32, b: i32, blen: i32, h: i32, hlen: i32, grpc: i32| -> R { note_call(&mut c, "proxy_send_local_response");
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
    Ok(())
}
