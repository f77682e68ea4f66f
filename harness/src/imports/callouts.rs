//! Callouts: HTTP calls, gRPC calls and streams, and `proxy_get_status`.

use super::{Ctx, OK, R, give, note_call, read, read_map, st, write_u32};
use crate::abi::{LogLevel, Status};
use crate::host::lock;
use crate::stream::HeaderMap;
use crate::vm::{CallId, PendingGrpcCall, PendingHttpCall, VmState};
use std::time::Duration;
use wasmtime::Linker;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
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
            note_call(&mut c, "proxy_http_call");
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
            note_call(&mut c, "proxy_grpc_call");
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
            note_call(&mut c, "proxy_grpc_stream");
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
            note_call(&mut c, "proxy_grpc_send");
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
            note_call(&mut c, "proxy_grpc_cancel");
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
            note_call(&mut c, "proxy_grpc_close");
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
            note_call(&mut c, "proxy_get_status");
            let (code, msg) = c.data().status.clone();
            write_u32(&mut c, code_out, code)?;
            if !msg.is_empty() {
                give(&mut c, &msg, ptr_out, len_out)?;
            }
            OK
        },
    )?;
    Ok(())
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
