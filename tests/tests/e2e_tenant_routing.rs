//! End-to-end: the tenant-routing filter in a real Envoy, as `envoy-configs/tenant-gateway.yaml`
//! sets it up: two tenants, each with its own backend (an echo upstream per Envoy cluster),
//! routed with `cluster_header: x-tenant-cluster`. The tenant comes from a verified JWT claim
//! (Envoy's jwt_authn → x-jwt-tenant), the host (`<tenant>.tenants.localhost`) or the path
//! (`/t/<tenant>/`, stripped).
//!
//! Needs `just build` and `just envoy`; `just test-e2e` does both.

use anyhow::{Context, Result, ensure};
use gatewasm_tests::client::{self, Request, Response};
use gatewasm_tests::demo_jwt::b64url;
use gatewasm_tests::echo::{EchoUpstream, Echoed};
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::gateway_shapes;
use sha2::{Digest, Sha256};

/// The two tenant backends and the gateway in front of them.
struct Gateway {
    acme: EchoUpstream,
    globex: EchoUpstream,
    envoy: Envoy,
}

impl Gateway {
    fn start() -> Result<Self> {
        let acme = EchoUpstream::start()?;
        let globex = EchoUpstream::start()?;
        let envoy = EnvoyBuilder::new("tenant-gateway.yaml")
            .upstream(acme.port())
            .upstream2(globex.port())
            .start()?;
        Ok(Self {
            acme,
            globex,
            envoy,
        })
    }

    fn send(&self, req: &Request) -> Result<Response> {
        client::send(self.envoy.listen_addr(), req)
    }

    /// Sends `req` and checks it reached `tenant`'s backend (and only that one) with the
    /// gateway's tenant headers; returns what the backend saw.
    fn routed_to(&self, tenant: &str, req: &Request) -> Result<Echoed> {
        let before = (self.acme.requests_seen(), self.globex.requests_seen());
        let resp = self.send(req)?;
        ensure!(
            resp.status == 200,
            "{} {:?}: status {}: {}",
            req.path,
            req.headers,
            resp.status,
            resp.text()
        );
        let after = (self.acme.requests_seen(), self.globex.requests_seen());
        let want = match tenant {
            "acme" => (before.0 + 1, before.1),
            _ => (before.0, before.1 + 1),
        };
        ensure!(
            after == want,
            "{}: expected backend of {tenant}; (acme, globex) requests went {before:?} → {after:?}",
            req.path
        );
        let echoed = Echoed::from_response(&resp)?;
        ensure!(
            echoed.header_all("x-tenant-id") == [tenant],
            "{:?}",
            echoed.headers
        );
        ensure!(
            echoed.header_all("x-tenant-cluster") == [format!("tenant_{tenant}").as_str()],
            "{:?}",
            echoed.headers
        );
        Ok(echoed)
    }

    /// Sends `req`, expects a JSON local reply; returns (status, error reason).
    fn rejected(&self, req: &Request) -> Result<(u16, String)> {
        let before = self.acme.requests_seen() + self.globex.requests_seen();
        let resp = self.send(req)?;
        ensure!(
            self.acme.requests_seen() + self.globex.requests_seen() == before,
            "{}: a backend saw the request (status {})",
            req.path,
            resp.status
        );
        ensure!(
            resp.header("content-type") == Some("application/json"),
            "{:?}",
            resp.headers
        );
        let body = resp.json()?;
        let reason = body["error"]
            .as_str()
            .with_context(|| format!("no error in {body}"))?;
        Ok((resp.status, reason.to_string()))
    }
}

fn get(path: &str) -> Request {
    Request::get(path)
}

fn on_host(host: &str, path: &str) -> Request {
    Request::get(path).header("host", host)
}

// ---- a minimal HS256 JWT, signed with the demo key of tenant-gateway.yaml ----

const DEMO_KEY: &[u8] = b"gatewasm-demo-hs256-key-not-for-production!";

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn jwt(tenant: &str) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT","kid":"demo"}"#);
    let claims = serde_json::json!({
        "iss": "https://issuer.example.com",
        "tenant": tenant,
        "exp": 4_102_444_800u64,
    });
    let payload = b64url(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let signature = b64url(&hmac_sha256(DEMO_KEY, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

#[test]
fn base64url_and_hmac_are_right() {
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"foob"), "Zm9vYg");
    assert_eq!(b64url(b"\xfb\xff"), "-_8");
    // RFC 4231 test case 2.
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

// ---- the tests ----

#[test]
fn routes_each_tenant_to_its_own_backend() -> Result<()> {
    let gw = Gateway::start()?;

    // By host (case, port and trailing dot do not matter).
    let seen = gw.routed_to("acme", &on_host("acme.tenants.localhost", "/orders"))?;
    ensure!(seen.path == "/orders", "{}", seen.path);
    ensure!(seen.header("x-tenant-tier") == Some("gold"));
    gw.routed_to("globex", &on_host("GLOBEX.tenants.localhost.:8080", "/"))?;

    // By path, with the prefix stripped.
    let seen = gw.routed_to("globex", &get("/t/globex/reports?y=2026"))?;
    ensure!(seen.path == "/reports?y=2026", "{}", seen.path);
    ensure!(seen.header("x-tenant-tier") == Some("silver"));
    // A percent-encoded tenant segment is decoded, then validated: it is acme, not a bypass.
    let seen = gw.routed_to("acme", &get("/t/%61cme/x"))?;
    ensure!(seen.path == "/x", "{}", seen.path);

    // By the verified JWT claim.
    let token = format!("Bearer {}", jwt("globex"));
    gw.routed_to("globex", &get("/api").header("authorization", &token))?;
    // A forged token is refused by jwt_authn before tenant-routing runs.
    let forged = format!("Bearer {}x", jwt("acme"));
    let resp = gw.send(&get("/api").header("authorization", forged))?;
    ensure!(resp.status == 401, "status {}", resp.status);

    // All sources agreeing is fine.
    let token = format!("Bearer {}", jwt("acme"));
    let seen = gw.routed_to(
        "acme",
        &on_host("acme.tenants.localhost", "/t/acme/z").header("authorization", &token),
    )?;
    ensure!(seen.path == "/z", "{}", seen.path);

    ensure!(
        gw.envoy
            .counter("wasmcustom.gatewasm_tenant_routing_requests_acme")?
            == 3
    );
    ensure!(
        gw.envoy
            .counter("wasmcustom.gatewasm_tenant_routing_requests_globex")?
            == 3
    );
    Ok(())
}

#[test]
fn keeps_tenants_apart() -> Result<()> {
    let gw = Gateway::start()?;

    // The token says acme, the host says globex: cross-tenant access is refused.
    let token = format!("Bearer {}", jwt("acme"));
    let req = on_host("globex.tenants.localhost", "/").header("authorization", &token);
    ensure!(gw.rejected(&req)? == (403, "tenant_conflict".into()));
    // Host vs path, and host vs an encoded path.
    let req = on_host("globex.tenants.localhost", "/t/acme/data");
    ensure!(gw.rejected(&req)? == (403, "tenant_conflict".into()));
    let req = on_host("globex.tenants.localhost", "/t/%61cme/data");
    ensure!(gw.rejected(&req)? == (403, "tenant_conflict".into()));

    // A client-sent x-tenant-cluster (or x-tenant-id, or tier) cannot redirect traffic.
    let req = on_host("globex.tenants.localhost", "/")
        .header("x-tenant-cluster", "tenant_acme")
        .header("x-tenant-id", "acme")
        .header("x-tenant-tier", "gold");
    let seen = gw.routed_to("globex", &req)?;
    ensure!(
        seen.header_all("x-tenant-tier") == ["silver"],
        "{:?}",
        seen.headers
    );
    // A client-sent x-jwt-tenant is not a verified claim: removed before jwt_authn.
    let req = on_host("globex.tenants.localhost", "/").header("x-jwt-tenant", "acme");
    gw.routed_to("globex", &req)?;
    // Without any tenant, the client's x-tenant-cluster does not route either.
    let req = get("/").header("x-tenant-cluster", "tenant_acme");
    ensure!(gw.rejected(&req)? == (400, "tenant_missing".into()));

    // Unknown tenants: 404, counted under "unknown" only.
    ensure!(
        gw.rejected(&on_host("initech.tenants.localhost", "/"))? == (404, "tenant_unknown".into())
    );
    ensure!(gw.rejected(&get("/t/initech/"))? == (404, "tenant_unknown".into()));

    let c = |name: &str| {
        gw.envoy
            .counter(&format!("wasmcustom.gatewasm_tenant_routing_{name}"))
    };
    ensure!(c("rejected_conflict")? == 3);
    ensure!(c("rejected_missing")? == 1);
    ensure!(c("rejected_unknown")? == 2);
    ensure!(c("requests_unknown")? == 2);
    ensure!(c("requests_globex")? == 2);
    ensure!(c("requests_acme")? == 0);
    let names: Vec<String> = gw
        .envoy
        .stats_matching("gatewasm_tenant_routing")?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    ensure!(!names.iter().any(|n| n.contains("initech")), "{names:?}");
    Ok(())
}

/// `envoy-configs/gateway.yaml` (and its bundle and chain shapes, `gateway_shapes!`):
/// tenant-routing as the fourth filter of the edge chain, behind correlation-id and
/// trace-propagation. The default tenant keeps plain requests working; acme has its own
/// backend; the local replies of tenant-routing carry the chain's request ID.
fn the_edge_gateway_routes_tenants_behind_the_other_filters(config: &str) -> Result<()> {
    let shared = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new(config)
        .upstream(shared.port())
        .upstream2(acme.port())
        .start()?;
    let send = |req: &Request| client::send(envoy.listen_addr(), req);

    // No tenant named: the default tenant "public", on the shared upstream, no tier.
    let resp = send(&get("/hello").header("x-tenant-cluster", "tenant_acme"))?;
    ensure!(
        resp.status == 200,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    let seen = Echoed::from_response(&resp)?;
    ensure!(
        seen.header_all("x-tenant-id") == ["public"],
        "{:?}",
        seen.headers
    );
    ensure!(
        seen.header_all("x-tenant-cluster") == ["upstream"],
        "{:?}",
        seen.headers
    );
    ensure!(seen.header("x-tenant-tier").is_none(), "{:?}", seen.headers);
    ensure!(shared.requests_seen() == 1 && acme.requests_seen() == 0);
    // The earlier filters ran too: an ID and a W3C traceparent reached the upstream.
    ensure!(seen.header("x-request-id").is_some() && seen.header("traceparent").is_some());

    // acme by host and by path: its own backend, its tier, the prefix stripped.
    let seen = Echoed::from_response(&send(
        &get("/orders").header("host", "acme.tenants.localhost"),
    )?)?;
    ensure!(
        seen.header_all("x-tenant-tier") == ["gold"],
        "{:?}",
        seen.headers
    );
    let seen = Echoed::from_response(&send(&get("/t/acme/orders?page=2"))?)?;
    ensure!(seen.path == "/orders?page=2", "{}", seen.path);
    ensure!(acme.requests_seen() == 2 && shared.requests_seen() == 1);

    // globex shares the upstream but gets its own id and tier; a spoofed tier is replaced.
    let seen = Echoed::from_response(&send(&get("/t/globex/").header("x-tenant-tier", "gold"))?)?;
    ensure!(
        seen.header_all("x-tenant-id") == ["globex"],
        "{:?}",
        seen.headers
    );
    ensure!(
        seen.header_all("x-tenant-tier") == ["silver"],
        "{:?}",
        seen.headers
    );

    // Rejections are JSON local replies that still carry the request ID and trace id.
    let resp = send(&get("/t/acme/x").header("host", "globex.tenants.localhost"))?;
    ensure!(resp.status == 403, "status {}", resp.status);
    ensure!(
        resp.json()?["error"] == "tenant_conflict",
        "{}",
        resp.text()
    );
    ensure!(resp.header("x-request-id").is_some(), "{:?}", resp.headers);
    let resp = send(&get("/t/initech/").header("x-request-id", "support-ticket-7"))?;
    ensure!(resp.status == 404, "status {}", resp.status);
    ensure!(resp.json()?["error"] == "tenant_unknown", "{}", resp.text());
    ensure!(
        resp.header("x-request-id") == Some("support-ticket-7"),
        "{:?}",
        resp.headers
    );
    ensure!(shared.requests_seen() == 2 && acme.requests_seen() == 2);

    let c = |name: &str| envoy.counter(&format!("wasmcustom.gatewasm_tenant_routing_{name}"));
    ensure!(c("requests_public")? == 1);
    ensure!(c("requests_acme")? == 2);
    ensure!(c("requests_globex")? == 1);
    ensure!(c("rejected_conflict")? == 1 && c("rejected_unknown")? == 1);
    Ok(())
}
gateway_shapes!(the_edge_gateway_routes_tenants_behind_the_other_filters);

/// `envoy-configs/istio-ecds-gateway.yaml`: tenant-routing delivered over ECDS as istiod
/// delivers the ingress WasmPlugin, routing to clusters named as Istio names them.
#[test]
fn istio_ecds_delivers_tenant_routing_to_the_ingress_gateway() -> Result<()> {
    let public = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("istio-ecds-gateway.yaml")
        .upstream(public.port())
        .upstream2(acme.port())
        .start()?;
    let name = "extensions.istio.io/wasmplugin/istio-system.tenant-routing";
    ensure!(
        envoy.counter(&format!(
            "extension_config_discovery.http_filter.{name}.update_success"
        ))? == 1,
        "ECDS update_success"
    );
    let send = |req: &Request| client::send(envoy.listen_addr(), req);

    let seen = Echoed::from_response(&send(&get("/t/acme/v1/orders"))?)?;
    ensure!(seen.path == "/v1/orders", "{}", seen.path);
    ensure!(
        seen.header_all("x-tenant-cluster") == ["outbound|80||acme-api.acme.svc.cluster.local"],
        "{:?}",
        seen.headers
    );
    let seen = Echoed::from_response(&send(&get("/").header(
        "x-tenant-cluster",
        "outbound|80||acme-api.acme.svc.cluster.local",
    ))?)?;
    ensure!(
        seen.header_all("x-tenant-id") == ["public"],
        "{:?}",
        seen.headers
    );
    ensure!(acme.requests_seen() == 1 && public.requests_seen() == 1);
    let resp = send(&get("/").header("host", "initech.tenants.localhost"))?;
    ensure!(resp.status == 404, "status {}", resp.status);
    ensure!(resp.json()?["error"] == "tenant_unknown", "{}", resp.text());
    Ok(())
}
