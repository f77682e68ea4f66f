use jwt_to_header::auth::*;
use jwt_to_header::cache::Cache;
use jwt_to_header::config::parse_settings;
use jwt_to_header::verify::NoNative;
fn main() {
    let cfg = std::fs::read("/tmp/jwtcfg.json").unwrap();
    let token = std::fs::read_to_string("/tmp/jwttoken").unwrap();
    let s = parse_settings(Some(&cfg)).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let h: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":scheme", b"http"),
        (":path", b"/api/bench"),
        (":authority", b"acme.tenants.localhost"),
        ("user-agent", b"gatewasm-bench"),
        ("accept", b"*/*"),
        (
            "traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("authorization", auth.as_bytes()),
    ];
    let mut cache = Cache::new(1000);
    let remote = vec![None];
    let mut n = 0;
    for _ in 0..2_000_000 {
        let mut native = NoNative;
        let mut env = Env {
            now: 1_767_225_700,
            remote: &remote,
            cache: &mut cache,
            native: &mut native,
            stats: Stats::default(),
        };
        if let Decision::Allow(_) = decide(&s, &h, &mut env) {
            n += 1
        }
    }
    println!("{n}");
}
