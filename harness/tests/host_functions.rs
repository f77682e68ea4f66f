//! Each host function the SDK imports, driven through the test module, against Envoy's
//! documented behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use proxy_wasm_harness::*;
use std::time::Duration;

#[test]
fn the_test_module_imports_all_37_env_functions_and_loads() {
    let wasm = std::fs::read(artifact_path("harness-test-module").unwrap()).unwrap();
    let m = module();
    assert_eq!(m.name(), "harness_test_module");
    // The import section names every env function; count them from the raw module.
    let env_imports = count_env_imports(&wasm);
    assert_eq!(env_imports, 37, "proxy-wasm 0.2.5 imports 37 env functions");
}

fn count_env_imports(wasm: &[u8]) -> usize {
    fn leb(d: &[u8], i: &mut usize) -> usize {
        let (mut r, mut s) = (0usize, 0);
        loop {
            let b = d[*i];
            *i += 1;
            r |= ((b & 0x7f) as usize) << s;
            s += 7;
            if b < 0x80 {
                return r;
            }
        }
    }
    let mut i = 8;
    while i < wasm.len() {
        let id = wasm[i];
        i += 1;
        let size = leb(wasm, &mut i);
        let end = i + size;
        if id == 2 {
            let n = leb(wasm, &mut i);
            let mut env = 0;
            for _ in 0..n {
                let l = leb(wasm, &mut i);
                let module = &wasm[i..i + l];
                i += l;
                let l = leb(wasm, &mut i);
                i += l;
                let kind = wasm[i];
                i += 1;
                if kind == 0 {
                    leb(wasm, &mut i);
                }
                env += usize::from(module == b"env");
            }
            return env;
        }
        i = end;
    }
    0
}

#[test]
fn a_missing_import_is_a_load_error_naming_it() {
    let wat = r#"(module
        (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
        (import "env" "proxy_teleport" (func (param i32) (result i32)))
        (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_1")))"#;
    let err = Module::from_bytes("bad", wat.as_bytes()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HarnessError::MissingImports { .. }), "{msg}");
    assert!(
        msg.contains("env::proxy_teleport") && msg.contains("wasi_snapshot_preview1::path_open"),
        "{msg}"
    );
    assert!(!msg.contains("proxy_log"), "{msg}");
}

#[test]
fn configuration_bytes_reach_the_module_and_false_rejects() {
    let host = Host::new();
    let m = module();
    let w = Worker::new(
        &host,
        &[PluginConfig::new(&m)
            .configuration("hello")
            .vm_configuration("vmcfg")],
    )
    .unwrap();
    assert!(w.logged(LogLevel::Info, "on_vm_start size=5 config=vmcfg"));
    assert!(w.logged(LogLevel::Info, "on_configure size=5 config=hello"));
    match Worker::new(&host, &[PluginConfig::new(&m).configuration("reject")]) {
        Err(HarnessError::ConfigRejected { logs, .. }) => {
            assert!(
                logs.iter()
                    .any(|l| l.level == LogLevel::Error && l.message.contains("field `config`"))
            )
        }
        other => panic!("expected ConfigRejected, got {:?}", other.err()),
    }
    assert!(matches!(
        Worker::new(&host, &[PluginConfig::new(&m).vm_configuration("reject")]),
        Err(HarnessError::VmStartRejected { .. })
    ));
}

#[test]
fn header_maps_lowercase_keep_duplicates_and_return_the_first_value() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let (_, view) = run(
        &mut w,
        "headers",
        &[
            ("X-Dup", "one"),
            ("x-dup", "two"),
            ("x-replace", "a"),
            ("x-replace", "b"),
            ("x-remove", "gone"),
        ],
    );
    let up = upstream(&view);
    assert_eq!(r(&view, "dup-first"), "one");
    assert_eq!(up.get_all("x-dup"), vec!["one", "two"]);
    assert_eq!(up.get_all("x-replace"), vec!["new"]);
    assert!(!up.contains("x-remove"));
    assert_eq!(r(&view, "missing"), "None");
    assert_eq!(r(&view, "count"), "10");
    assert_eq!(
        r(&view, "seen-by"),
        "t:9:true",
        "num_headers counts what the client sent"
    );

    let (_, view) = run(&mut w, "set-pairs", &[]);
    let up = upstream(&view);
    assert_eq!(up.get(":path").as_deref(), Some("/replaced"));
    assert!(up.contains("x-only") && !up.contains("x-cmd"));
}

#[test]
fn request_headers_outside_the_request_phase_answer_bad_argument_and_the_sdk_traps() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let (id, view) = run(&mut w, "late-read", &[]);
    assert!(view.upstream_request_complete);
    let err = w
        .send_response_headers(id, &[(":status", "200")], true)
        .unwrap_err();
    match &err {
        HarnessError::Trap {
            callback,
            last_logs,
            ..
        } => {
            assert_eq!(callback, "proxy_on_response_headers");
            assert!(
                last_logs
                    .iter()
                    .any(|l| l.message.contains("unexpected status: 2")),
                "{err}"
            );
        }
        other => panic!("expected a trap, got {other}"),
    }
    // Envoy does not call into a failed VM again.
    assert!(matches!(
        w.open_stream(),
        Err(HarnessError::VmFailed { .. })
    ));
}

#[test]
fn on_log_reads_every_map() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let view = w
        .exchange(
            &[
                (":method", "GET"),
                (":path", "/logged"),
                (":authority", "a"),
            ],
            None,
            &[(":status", "204")],
            None,
        )
        .unwrap();
    assert_eq!(view.status(), Some(204));
    assert!(
        w.logged(LogLevel::Info, "path=/logged status=204"),
        "{:?}",
        w.logs()
    );
    let names: Vec<&str> = w.history().iter().map(|c| c.callback).collect();
    let tail = &names[names.len() - 3..];
    assert_eq!(tail, ["proxy_on_done", "proxy_on_log", "proxy_on_delete"]);
}

#[test]
fn properties_are_encoded_as_envoy_does() {
    let host = Host::new();
    host.set_property(&["xds", "node", "metadata", "REGION"], "eu-west-1");
    let plugin = PluginConfig::new(&module())
        .name("props")
        .root_id("rid")
        .vm_id("vid");
    let mut w = Worker::new(&host, &[plugin]).unwrap();
    let id = w
        .open_stream_with(StreamOptions {
            source_address: "10.1.2.3:4567".into(),
            ..Default::default()
        })
        .unwrap();
    w.send_request_headers(
        id,
        &[
            (":method", "POST"),
            (":path", "/a/b?x=1"),
            (":authority", "h.example"),
            ("x-cmd", "props"),
        ],
        true,
    )
    .unwrap();
    let view = w.stream(id).unwrap();
    assert_eq!(r(&view, "source"), "10.1.2.3:4567");
    assert_eq!(
        r(&view, "source-port"),
        "8",
        "ints are 8 bytes little-endian"
    );
    assert_eq!(r(&view, "source-port-value"), "4567");
    assert_eq!(r(&view, "path"), "/a/b?x=1");
    assert_eq!(r(&view, "url-path"), "/a/b");
    assert_eq!(r(&view, "method"), "POST");
    assert_eq!(r(&view, "host"), "h.example");
    assert_eq!(r(&view, "root-id"), "rid");
    assert_eq!(r(&view, "vm-id"), "vid");
    assert_eq!(r(&view, "node"), "eu-west-1");
    assert_eq!(r(&view, "unknown"), "missing");
    assert_eq!(r(&view, "mark"), "set");
    assert_eq!(
        view.filter_state,
        vec![("gatewasm\0mark".to_string(), b"set".to_vec())]
    );
}

#[test]
fn metrics_follow_envoy_rules() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let (_, view) = run(&mut w, "metrics", &[]);
    assert_eq!(r(&view, "zero-delta"), "BadArgument");
    assert_eq!(r(&view, "negative-delta"), "BadArgument");
    assert_eq!(r(&view, "counter"), "2");
    assert_eq!(r(&view, "gauge"), "-5");
    assert_eq!(r(&view, "histogram-get"), "Err(BadArgument)");
    // 9999 has type bits 3: no metric type at all, BadArgument as in Envoy.
    assert_eq!(r(&view, "unknown-metric"), "Err(BadArgument)");
    assert_eq!(r(&view, "redefined-new-id"), "true");
    assert_eq!(host.counter("test_counter"), 2);
    assert_eq!(host.metric("test_gauge"), Some(MetricValue::Gauge(-5)));
    assert_eq!(
        host.metric("test_histogram"),
        Some(MetricValue::Histogram(vec![42, 7]))
    );
    // Metrics are process-wide by name: a second worker adds to the same counter.
    let mut w2 = worker(&host, "");
    run(&mut w2, "metrics", &[]);
    assert_eq!(host.counter("test_counter"), 4);
}

#[test]
fn foreign_functions_clear_route_cache_is_recorded_unknown_is_not_found() {
    let host = Host::new();
    host.register_foreign_function("echo_upper", |args| Ok(args.to_ascii_uppercase()));
    let mut w = worker(&host, "");
    let (_, view) = run(&mut w, "foreign", &[]);
    assert_eq!(r(&view, "clear"), "Ok(None)");
    assert_eq!(view.route_cache_clears, 1);
    assert_eq!(r(&view, "unknown-fn"), "Err(NotFound)");
    assert_eq!(r(&view, "echo"), "Ok(Some(\"ABC\"))");
    // Every call is counted by name, whatever it answered.
    for name in ["clear_route_cache", "no_such_function", "echo_upper"] {
        assert_eq!(host.foreign_calls(name), 1, "{name}");
    }
    assert_eq!(host.foreign_calls("verify_signature"), 0);
    // A removed built-in answers NotFound, and the call still counts.
    host.remove_foreign_function("clear_route_cache");
    let (_, view) = run(&mut w, "foreign", &[]);
    assert_eq!(r(&view, "clear"), "Err(NotFound)");
    assert_eq!(view.route_cache_clears, 0);
    assert_eq!(host.foreign_calls("clear_route_cache"), 2);
}

#[test]
fn time_is_virtual_for_the_abi_and_for_wasi() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let (_, v1) = run(&mut w, "time", &[]);
    w.advance(Duration::from_secs(90)).unwrap();
    let (_, v2) = run(&mut w, "time", &[]);
    let t1: u128 = r(&v1, "time").parse().unwrap();
    let t2: u128 = r(&v2, "time").parse().unwrap();
    assert_eq!(t1, 1_767_225_600_000_000_000);
    assert_eq!(t2 - t1, 90_000_000_000);
    assert_eq!(r(&v2, "wasi-time"), r(&v2, "time"));
    assert_eq!(r(&v1, "monotonic-ok"), "true");
}

#[test]
fn ticks_fire_when_the_virtual_clock_passes_the_period() {
    let host = Host::new();
    let mut w = worker(&host, "tick:1000");
    assert_eq!(w.tick_period(0), Duration::from_secs(1));
    w.advance(Duration::from_millis(999)).unwrap();
    assert_eq!(host.counter("test_ticks"), 0);
    w.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(host.counter("test_ticks"), 1);
    for _ in 0..5 {
        w.advance(Duration::from_secs(1)).unwrap();
    }
    assert_eq!(host.counter("test_ticks"), 6);
}

#[test]
fn wasi_stdout_stderr_env_random_and_log_level() {
    let host = Host::new();
    let plugin = PluginConfig::new(&module())
        .env("TEST_ENV", "from-vm-config")
        .log_level(LogLevel::Warn);
    let mut w = Worker::new(&host, &[plugin]).unwrap();
    let (_, view) = run(&mut w, "env", &[]);
    assert_eq!(r(&view, "env"), "from-vm-config");
    run(&mut w, "stdout", &[]);
    assert!(
        w.logs()
            .iter()
            .any(|l| l.level == LogLevel::Info && l.message == "hello on stdout")
    );
    assert!(
        w.logs()
            .iter()
            .any(|l| l.level == LogLevel::Error && l.message == "trouble on stderr")
    );
    let (_, view) = run(&mut w, "random", &[]);
    assert_eq!(r(&view, "random"), "1");
    let (_, view) = run(&mut w, "log-level", &[]);
    assert_eq!(r(&view, "log-level"), "Ok(Warn)");
    let (_, view) = run(&mut w, "effective", &[]);
    assert_eq!(r(&view, "effective-bad"), "BadArgument");
    // proxy_done from a stream: NotFound, as in Envoy, which the SDK turns into a panic.
    let id = w.open_stream().unwrap();
    let err = w
        .send_request_headers(
            id,
            &[(":method", "GET"), (":path", "/"), ("x-cmd", "done")],
            true,
        )
        .unwrap_err();
    assert!(matches!(err, HarnessError::Trap { .. }), "{err}");
    assert_eq!(w.done_calls(0), 1);
}

#[test]
fn shared_queues_deliver_on_queue_ready_to_the_registering_vm() {
    let host = Host::new();
    let mut owner = worker(&host, "");
    let mut other = worker(&host, "");
    let (_, view) = run(&mut other, "enqueue", &[("x-payload", "job-1")]);
    assert_eq!(r(&view, "resolved"), "true");
    assert_eq!(r(&view, "resolve-missing"), "None");
    assert_eq!(r(&view, "enqueue-bad"), "NotFound");
    assert_eq!(r(&view, "dequeue-bad"), "Err(NotFound)");
    assert_eq!(host.queue_len("", "test_queue"), Some(1));
    // The queue belongs to the first VM that registered it: `other` must not have drained it.
    assert!(!other.logged(LogLevel::Info, "dequeued"));
    owner.run_due().unwrap();
    assert!(owner.logged(LogLevel::Info, "dequeued job-1"));
    assert!(owner.logged(LogLevel::Info, "queue drained, empty=true"));
    assert_eq!(host.queue_len("", "test_queue"), Some(0));
}

#[test]
fn a_panic_is_a_trap_with_backtrace_and_the_panic_message() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let id = w.open_stream().unwrap();
    let err = w
        .send_request_headers(
            id,
            &[
                (":method", "GET"),
                (":path", "/"),
                (":authority", "a"),
                ("x-cmd", "panic"),
            ],
            true,
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HarnessError::Trap { .. }), "{text}");
    assert!(text.contains("boom in request headers"), "{text}");
    assert!(text.contains("wasm backtrace"), "{text}");
    match Worker::new(
        &host,
        &[PluginConfig::new(&module()).configuration("panic-configure")],
    ) {
        Err(HarnessError::Trap {
            callback,
            last_logs,
            ..
        }) => {
            assert_eq!(callback, "proxy_on_configure");
            assert!(
                last_logs
                    .iter()
                    .any(|l| l.message.contains("configure exploded"))
            );
        }
        other => panic!("expected a trap, got {:?}", other.err()),
    }
}

#[test]
fn fuel_is_reported_per_callback_and_is_deterministic() {
    // The same inputs on a fresh VM cost the same instructions (the allocator's state is part of
    // the input, so compare runs from the same starting point).
    let fuel = || {
        let host = Host::new();
        let mut w = worker(&host, "");
        run(&mut w, "headers", &[("x-dup", "1")]);
        w.history()
            .iter()
            .find(|c| c.callback == "proxy_on_request_headers")
            .map(|c| c.fuel)
            .unwrap()
    };
    let a = fuel();
    let b = fuel();
    assert!(a > 1000, "fuel {a}");
    assert_eq!(a, b);
}

#[test]
fn a_missing_artifact_names_just_build() {
    let err = Module::artifact("no-such-filter").unwrap_err().to_string();
    assert!(err.contains("no_such_filter.wasm does not exist"), "{err}");
    assert!(err.contains("just build"), "{err}");
}

#[test]
fn workers_and_hosts_can_move_to_threads() {
    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send::<Worker>();
    assert_send_sync::<Host>();
    assert_send_sync::<Module>();
}
