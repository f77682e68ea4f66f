//! Shared data and shared queues, per vm_id across every worker of the host.

use super::{Ctx, OK, R, give, note_call, read, st, write_u32};
use crate::abi::Status;
use crate::host::lock;
use crate::vm::VmState;
use wasmtime::Linker;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, k: i32, klen: i32, ptr_out: i32, len_out: i32, cas_out: i32| -> R {
            note_call(&mut c, "proxy_get_shared_data");
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
            note_call(&mut c, "proxy_set_shared_data");
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
            note_call(&mut c, "proxy_register_shared_queue");
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
            note_call(&mut c, "proxy_resolve_shared_queue");
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
            note_call(&mut c, "proxy_enqueue_shared_queue");
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
            note_call(&mut c, "proxy_dequeue_shared_queue");
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
    Ok(())
}
