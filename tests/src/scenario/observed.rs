//! What a host observed: the requests and responses of a step as one host saw them
//! ([`Observed`]) and how the host fared with the whole scenario ([`HostOutcome`]). Both
//! runners ([`super::harness`], [`super::envoy`]) produce these; `check.rs` judges them.

use std::collections::BTreeMap;

/// A request or response as seen at one point: headers (lowercase names, in order, duplicates
/// kept) and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Headers. For a request: `:method`, `:path`, `:authority` first.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Message {
    /// Every value of `name`.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The response the client got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientResponse {
    /// Status code.
    pub status: u16,
    /// Headers and body.
    pub message: Message,
}

/// What one host observed in one step.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The request as sent (for `request.` references).
    pub request: Message,
    /// The request as the upstream received it (`None`: it did not reach the upstream).
    pub upstream: Option<Message>,
    /// The response as the client received it (`None`: no response; see `notes`).
    pub client: Option<ClientResponse>,
    /// Metric changes during the step (counters and gauges), by filter-defined name.
    pub metrics: BTreeMap<String, i64>,
    /// Callouts made: cluster and request.
    pub callouts: Vec<(String, Message)>,
    /// Anything else worth showing (e.g. "the client timed out").
    pub notes: Vec<String>,
}

/// How a host fared with a scenario.
#[derive(Debug, Clone)]
pub enum HostOutcome {
    /// Every step ran.
    Ran(Vec<Observed>),
    /// The chain's configuration was rejected; the proxy's log.
    ConfigRejected(String),
    /// The runner could not run the scenario (a module trapped, Envoy did not start, …).
    Failed(String),
}
