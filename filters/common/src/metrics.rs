//! Counter ids. Each filter defines its counters once per root context (`on_configure`) and
//! keeps the ids as `Option<u32>`: `None` when the host refused the definition, and then every
//! increment of it is skipped. [`counter_id`] is that decision, pure so it is tested natively;
//! the host calls (`define_metric`, `increment_metric`) are in `glue` (Wasm only).

use proxy_wasm::types::Status;

/// The id of a counter from the host's answer to its definition; a refusal is logged as
/// `<filter>: cannot define metric <name>: <status>` and gives `None`.
pub fn counter_id(filter: &str, name: &str, defined: Result<u32, Status>) -> Option<u32> {
    match defined {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("{filter}: cannot define metric {name}: {status:?}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_defined_counter_has_its_id() {
        let logs = crate::test_log::capture(|| {
            assert_eq!(counter_id("f", "m", Ok(3)), Some(3));
        });
        assert!(logs.is_empty(), "{logs:?}");
    }

    #[test]
    fn a_refused_counter_is_logged_and_has_none() {
        let logs = crate::test_log::capture(|| {
            assert_eq!(
                counter_id(
                    "rate-limit",
                    "gatewasm_rate_limit_overflow",
                    Err(Status::BadArgument)
                ),
                None
            );
        });
        assert_eq!(
            logs,
            vec![(
                log::Level::Warn,
                "rate-limit: cannot define metric gatewasm_rate_limit_overflow: BadArgument"
                    .to_owned()
            )]
        );
    }
}
