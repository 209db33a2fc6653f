#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (Tansu via cargo install;
# PostgreSQL 15 server binaries, OpenSSL headers, socat and sqlite3 via apt-get when root), then runs
# the whole workspace's tests.
# The tests start their own Tansu brokers and PostgreSQL clusters on free ports (encore-testkit),
# so no stack needs to be running, and a running deploy/start.sh stack is not disturbed.
# Extra arguments go to `cargo test` (e.g. `deploy/test.sh -p encore-testkit`).
# Exit status: that of `cargo test`.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_openssl_dev
ensure_libclang
ensure_socat
ensure_sqlite3
# Exported so the test harness uses exactly the binaries found (or installed) here.
TANSU_BIN="$(ensure_tansu)"
PG_BIN="$(ensure_pg_bin)"
export TANSU_BIN PG_BIN
say "tansu: $TANSU_BIN; postgres binaries: $PG_BIN"

cd "$REPO_DIR"
if [[ $# -eq 0 ]]; then
    set -- --workspace
fi
exec cargo test "$@"
