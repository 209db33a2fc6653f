#!/usr/bin/env bash
# Stops encore's local stack started by deploy/start.sh: Tansu (SIGTERM, then SIGKILL after
# 10 s) and PostgreSQL (fast shutdown: clients are disconnected, data is kept). Idempotent:
# what is not running is skipped. The data stays in deploy/state/; delete that directory for
# a fresh start.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop_tansu() {
    local pid_file="$ENCORE_STATE_DIR/tansu.pid" pid waited=0
    pid="$(live_pid "$pid_file" tansu)"
    if [[ -z "$pid" ]]; then
        say "tansu is not running"
        rm -f "$pid_file"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < 50)); do
        sleep 0.2
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "tansu (pid $pid) ignored SIGTERM for 10 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
    say "tansu stopped"
}

stop_postgres() {
    local data pg_bin
    data="$(pg_cluster_dir)/data"
    pg_bin="$(find_pg_bin)"
    if [[ -z "$pg_bin" || ! -f "$data/PG_VERSION" ]] ||
        ! as_pg "$pg_bin/pg_ctl" status -D "$data" >/dev/null 2>&1; then
        say "postgres is not running"
        return 0
    fi
    as_pg "$pg_bin/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null
    say "postgres stopped"
}

stop_tansu
stop_postgres
