#!/usr/bin/env bash
# The whole test suite: installs fuse3 and SeaweedFS when missing, checks formatting and lints,
# then runs unit and integration tests (real FUSE mounts against SeaweedFS on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
