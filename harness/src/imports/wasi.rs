//! WASI preview1: the functions the Rust std links in (stdout/stderr as logs, the environment,
//! the virtual clock, the host's random bytes, `proc_exit`).

use super::{Ctx, R, note_call, read, write, write_u32};
use crate::abi::LogLevel;
use crate::vm::VmState;
use wasmtime::Linker;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    const W: &str = "wasi_snapshot_preview1";
    linker.func_wrap(
        W,
        "fd_write",
        |mut c: Ctx<'_>, fd: i32, iovs: i32, n: i32, written_out: i32| -> R {
            note_call(&mut c, "fd_write");
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
            note_call(&mut c, "environ_sizes_get");
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
            note_call(&mut c, "environ_get");
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
            note_call(&mut c, "args_sizes_get");
            write_u32(&mut c, count_out, 0)?;
            write_u32(&mut c, size_out, 0)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        W,
        "args_get",
        |mut c: Ctx<'_>, _argv: i32, _buf: i32| -> R {
            note_call(&mut c, "args_get");
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        W,
        "clock_time_get",
        |mut c: Ctx<'_>, id: i32, _precision: i64, out: i32| -> R {
            note_call(&mut c, "clock_time_get");
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
        note_call(&mut c, "random_get");
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
            note_call(&mut c, "proc_exit");
            c.data_mut().exit_code = Some(code);
            Err(wasmtime::Error::msg(format!("proc_exit({code})")))
        },
    )?;
    linker.func_wrap(W, "sched_yield", |mut c: Ctx<'_>| -> R {
        note_call(&mut c, "sched_yield");
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(W, "fd_close", |mut c: Ctx<'_>, _fd: i32| -> R {
        note_call(&mut c, "fd_close");
        Ok(ERRNO_BADF)
    })?;
    linker.func_wrap(
        W,
        "fd_fdstat_get",
        |mut c: Ctx<'_>, _fd: i32, _out: i32| -> R {
            note_call(&mut c, "fd_fdstat_get");
            Ok(ERRNO_BADF)
        },
    )?;
    linker.func_wrap(
        W,
        "fd_seek",
        |mut c: Ctx<'_>, _fd: i32, _off: i64, _whence: i32, _out: i32| -> R {
            note_call(&mut c, "fd_seek");
            Ok(ERRNO_BADF)
        },
    )?;
    Ok(())
}
