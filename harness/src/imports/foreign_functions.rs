//! `proxy_call_foreign_function`: `clear_route_cache`, Envoy's `verify_signature`, and the
//! functions a test registers on the host.

use super::{Ctx, OK, R, give, note_call, read, st, stream_of};
use crate::abi::Status;
use crate::host::lock;
use crate::vm::VmState;
use wasmtime::Linker;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Ctx<'_>, n: i32, nlen: i32, a: i32, alen: i32, ptr_out: i32, len_out: i32| -> R {
            note_call(&mut c, "proxy_call_foreign_function");
            let name = String::from_utf8_lossy(&read(&mut c, n, nlen)?).into_owned();
            let args = read(&mut c, a, alen)?;
            if let Some(s) = c.data().shared() {
                *lock(&s.foreign_calls).entry(name.clone()).or_default() += 1;
            }
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
    Ok(())
}
