//! Metrics, process-wide by name, as Envoy's stats.

use super::{Ctx, OK, R, fault, note_call, read, st, write, write_u32};
use crate::abi::{MetricType, Status};
use crate::host::{MetricValue, lock};
use crate::vm::VmState;
use wasmtime::Linker;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, t: i32, n: i32, nlen: i32, id_out: i32| -> R {
            note_call(&mut c, "proxy_define_metric");
            let name = String::from_utf8_lossy(&read(&mut c, n, nlen)?).into_owned();
            let Some(kind) = MetricType::from_raw(t) else {
                return Err(fault(
                    &mut c,
                    format!("define_metric: unknown metric type {t}"),
                ));
            };
            if let Some(s) = c.data().shared() {
                lock(&s.metrics).define(kind, &name);
            }
            // Envoy hands out a new id for every definition, even of a name it has seen.
            let d = c.data_mut();
            // As Envoy: the metric type sits in the id's two low bits (counter 0, gauge 1,
            // histogram 2), so an id with 3 there is no metric at all (BadArgument).
            let id = (d.next_metric_id << 2) | kind as u32;
            d.next_metric_id += 1;
            d.metric_ids.insert(id, (kind, name));
            write_u32(&mut c, id_out, id)?;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Ctx<'_>, id: i32, delta: i64| -> R {
            note_call(&mut c, "proxy_increment_metric");
            update_metric(&c, id, |kind, v| match (kind, v) {
                (MetricType::Counter, MetricValue::Counter(x)) if delta > 0 => {
                    *x = x.saturating_add(delta as u64);
                    Status::Ok
                }
                (MetricType::Gauge, MetricValue::Gauge(x)) => {
                    *x = x.saturating_add(delta);
                    Status::Ok
                }
                _ => Status::BadArgument,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Ctx<'_>, id: i32, value: i64| -> R {
            note_call(&mut c, "proxy_record_metric");
            update_metric(&c, id, |_, v| {
                match v {
                    MetricValue::Counter(x) => *x = x.saturating_add(value as u64),
                    MetricValue::Gauge(x) => *x = value,
                    MetricValue::Histogram(h) => h.push(value as u64),
                }
                Status::Ok
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, ret: i32| -> R {
            note_call(&mut c, "proxy_get_metric");
            let (_, name) = match metric_of(&c, id) {
                Ok(m) => m,
                Err(status) => return st(status),
            };
            let value = c
                .data()
                .shared()
                .and_then(|s| lock(&s.metrics).values.get(&name).cloned());
            let v = match value {
                Some(MetricValue::Counter(x)) => x,
                Some(MetricValue::Gauge(x)) => x as u64,
                Some(MetricValue::Histogram(_)) => return st(Status::BadArgument),
                None => return st(Status::NotFound),
            };
            write(&mut c, ret, &v.to_le_bytes())?;
            OK
        },
    )?;
    Ok(())
}

/// A metric id as Envoy reads it: type bits 3 → BadArgument; an unknown id → NotFound.
fn metric_of(c: &Ctx<'_>, id: i32) -> Result<(MetricType, String), Status> {
    if id as u32 & 3 == 3 {
        return Err(Status::BadArgument);
    }
    c.data()
        .metric_ids
        .get(&(id as u32))
        .cloned()
        .ok_or(Status::NotFound)
}

fn update_metric(
    c: &Ctx<'_>,
    id: i32,
    f: impl FnOnce(MetricType, &mut MetricValue) -> Status,
) -> R {
    let (kind, name) = match metric_of(c, id) {
        Ok(m) => m,
        Err(status) => return st(status),
    };
    let Some(shared) = c.data().shared() else {
        return st(Status::NotFound);
    };
    let mut m = lock(&shared.metrics);
    match m.values.get_mut(&name) {
        Some(v) => st(f(kind, v)),
        None => st(Status::NotFound),
    }
}
