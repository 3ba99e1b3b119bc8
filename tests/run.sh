#!/usr/bin/env bash
# The whole test suite: installs what is missing (tests/setup.sh), checks formatting and lints,
# runs unit and integration tests (real FUSE mounts against SeaweedFS on 127.0.0.1), then the
# mount(8)/fstab/systemd checks (systemd as PID 1 in systemd-nspawn), then the benchmark
# suite's quick smoke run (tests/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
bash tests/systemd/run.sh target/debug/bucketfs
# Benchmark smoke run: every workload on every system at small sizes; figures not asserted.
bash tests/bench/run.sh --quick
test -s target/bench/benchmarks-quick.md
