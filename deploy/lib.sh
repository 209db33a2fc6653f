# shellcheck shell=bash
# Shared functions of the deploy scripts (start.sh, stop.sh, test.sh, run.sh).
# Sourced, not executed: the caller has already set `set -euo pipefail`.
#
# Configuration (environment variables, defaults in brackets):
#   ENCORE_STATE_DIR   where the local stack keeps data, pid files and logs [deploy/state]
#   ENCORE_KAFKA_PORT  Tansu's Kafka port on 127.0.0.1 [9092]
#   ENCORE_PG_PORT     PostgreSQL's port on 127.0.0.1 [55432]
#   ENCORE_STORAGE     Tansu storage: "sqlite" (a libsql file in the state dir) or "memory" [sqlite]
#   ENCORE_TOPIC       the topic to create [music_streaming_data]
#   ENCORE_PARTITIONS  its partition count [4]
#   PG_BIN             directory of initdb/pg_ctl, when they are not found on their own
#   TANSU_BIN          path of the tansu binary, when it is not on PATH or in ~/.cargo/bin

# The variables below are read by the scripts that source this file.
# shellcheck disable=SC2034
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$DEPLOY_DIR")"

ENCORE_STATE_DIR="${ENCORE_STATE_DIR:-$DEPLOY_DIR/state}"
ENCORE_KAFKA_PORT="${ENCORE_KAFKA_PORT:-9092}"
ENCORE_PG_PORT="${ENCORE_PG_PORT:-55432}"
ENCORE_STORAGE="${ENCORE_STORAGE:-sqlite}"
ENCORE_TOPIC="${ENCORE_TOPIC:-music_streaming_data}"
ENCORE_PARTITIONS="${ENCORE_PARTITIONS:-4}"

# Listen and advertise on 127.0.0.1, never "localhost": clients connect to the advertised
# address, and localhost may resolve to ::1 where nothing listens.
ENCORE_BROKERS="127.0.0.1:${ENCORE_KAFKA_PORT}"
ENCORE_POSTGRES_URL="postgres://postgres@127.0.0.1:${ENCORE_PG_PORT}/postgres"

TANSU_INSTALL=(cargo install tansu --locked --features "dynostore,libsql")

say() { printf 'encore: %s\n' "$*" >&2; }
die() { printf 'encore: error: %s\n' "$*" >&2; exit 1; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# Runs a command as the postgres user when we are root (PostgreSQL refuses to run as root).
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Prints the path of the tansu binary, or nothing.
find_tansu() {
    local candidate
    for candidate in "${TANSU_BIN:-}" "$(command -v tansu || true)" \
        "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" "$HOME/.cargo/bin/tansu"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 0
}

# Prints the tansu binary, installing it first when missing. The default build has no storage
# engine, hence the features; the build takes 11–18 minutes on 2 cores.
ensure_tansu() {
    local tansu
    tansu="$(find_tansu)"
    if [[ -z "$tansu" ]]; then
        command -v cargo >/dev/null || die "tansu is missing and cargo is not installed (https://rustup.rs)"
        say "tansu not found: running ${TANSU_INSTALL[*]} (11–18 minutes on 2 cores)"
        "${TANSU_INSTALL[@]}" >&2
        tansu="$(find_tansu)"
        [[ -n "$tansu" ]] || die "tansu still not found after ${TANSU_INSTALL[*]}"
    fi
    printf '%s\n' "$tansu"
}

# Prints the directory holding initdb and pg_ctl, or nothing. Same search as encore-testkit:
# $PG_BIN, then PATH, then the newest /usr/lib/postgresql/<version>/bin.
find_pg_bin() {
    local dir
    local -a candidates=("${PG_BIN:-}")
    if command -v pg_ctl >/dev/null; then
        candidates+=("$(dirname "$(command -v pg_ctl)")")
    fi
    if [[ -d /usr/lib/postgresql ]]; then
        while IFS= read -r dir; do
            candidates+=("$dir/bin")
        done < <(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d | sort -t/ -k4 -rn)
    fi
    for dir in "${candidates[@]}"; do
        if [[ -n "$dir" && -x "$dir/pg_ctl" && -x "$dir/initdb" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 0
}

# Installs Debian packages "$@" with apt-get when we are root and have it; fails otherwise
# (the caller then says what is missing).
apt_install() {
    is_root && command -v apt-get >/dev/null || return 1
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# Prints the PostgreSQL binary directory, installing postgresql-15 with apt-get when missing.
ensure_pg_bin() {
    local dir
    dir="$(find_pg_bin)"
    if [[ -z "$dir" ]]; then
        say "PostgreSQL server binaries not found"
        if apt_install postgresql-15; then
            dir="$(find_pg_bin)"
        fi
        [[ -n "$dir" ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql-15 or set PG_BIN"
    fi
    if is_root; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server (PostgreSQL refuses root)"
    fi
    printf '%s\n' "$dir"
}

# OpenSSL's headers, which building librdkafka with TLS (Kafka security.protocol=SSL) needs.
ensure_openssl_dev() {
    if pkg-config --exists openssl 2>/dev/null; then
        return 0
    fi
    say "OpenSSL headers (libssl-dev) or pkg-config not found"
    apt_install libssl-dev pkg-config && pkg-config --exists openssl \
        || die "building encore needs OpenSSL's headers and pkg-config: install libssl-dev and pkg-config"
}

# libclang, which zstd-sys's build script loads (bindgen) when librdkafka is built with zstd,
# the codec that topics written with compression.type=zstd need.
ensure_libclang() {
    if compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null || [[ -n "${LIBCLANG_PATH:-}" ]]; then
        return 0
    fi
    say "libclang not found"
    apt_install libclang-dev || die "building encore needs libclang (for zstd): install libclang-dev or set LIBCLANG_PATH"
}

# socat, which terminates TLS in front of the test brokers (encore-testkit's Tansu::start_tls).
ensure_socat() {
    command -v socat >/dev/null && return 0
    say "socat not found"
    apt_install socat && command -v socat >/dev/null || die "the tests need socat: install it (apt-get install socat)"
}

ensure_sqlite3() {
    command -v sqlite3 >/dev/null && return 0
    say "sqlite3 not found"
    apt_install sqlite3 && command -v sqlite3 >/dev/null || die "the tests need sqlite3: install it (apt-get install sqlite3)"
}

# Succeeds when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits up to $2 seconds for 127.0.0.1:$1 to accept connections.
wait_for_port() {
    local port="$1" seconds="$2" waited=0
    until port_open "$port"; do
        sleep 0.2
        waited=$((waited + 1))
        ((waited < seconds * 5)) || return 1
    done
}

# Prints the pid stored in file $1 when that process is alive and its command line contains $2
# (a recycled pid belonging to another program does not count), or nothing.
live_pid() {
    local pid
    [[ -f "$1" ]] || return 0
    pid="$(cat "$1")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"; then
        printf '%s\n' "$pid"
    fi
    return 0
}

# The PostgreSQL cluster directory. The server runs as the postgres user, which must be able
# to reach it; a clone under /root is not reachable, so the stack then keeps its cluster in
# /var/tmp and remembers where in the state directory.
pg_cluster_dir() {
    local pointer="$ENCORE_STATE_DIR/pg.location" dir="$ENCORE_STATE_DIR/pg"
    if [[ -f "$pointer" ]]; then
        cat "$pointer"
        return 0
    fi
    if is_root && ! runuser -u postgres -- test -x "$ENCORE_STATE_DIR"; then
        dir="/var/tmp/encore-pg-$(printf '%s' "$ENCORE_STATE_DIR" | cksum | cut -d' ' -f1)"
    fi
    printf '%s\n' "$dir"
}

# Last lines of a log file, for error messages.
log_tail() { tail -n 20 "$1" 2>/dev/null || true; }

# Prints the first port from $1 upwards (at most 100 tried) on which nothing listens on
# 127.0.0.1, or fails. A port can still be taken between this check and its use.
free_port() {
    local port="$1" last=$(($1 + 100))
    while ((port < last)); do
        if ! port_open "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
        port=$((port + 1))
    done
    return 1
}

# Runs psql against the stack's Postgres with unaligned, tuples-only output and fields
# separated by the ASCII unit separator (titles may contain tabs or bars). Extra arguments go
# to psql (e.g. -c SQL, -v name=value; a script on stdin).
pg_sql() {
    PGCONNECT_TIMEOUT=5 psql "$ENCORE_POSTGRES_URL" -X -q -A -t -F $'\x1f' "$@"
}

# Prints "partition high_watermark" lines of topic $1 (the next offset to be written, i.e.
# the number of messages ever produced to that partition) read from Tansu's sqlite storage
# file, or nothing when that is not available (memory storage, no sqlite3, another layout).
# Read-only: the database is in WAL mode, so this reader never blocks the broker's writes.
topic_high_watermarks() {
    local topic="$1" db="$ENCORE_STATE_DIR/tansu/tansu.db"
    # Kafka topic names are [A-Za-z0-9._-]+, so the name can be put into the SQL text as is.
    [[ "$topic" =~ ^[A-Za-z0-9._-]+$ && -f "$db" ]] && command -v sqlite3 >/dev/null || return 0
    sqlite3 -readonly -cmd '.timeout 1000' -separator ' ' "$db" \
        "SELECT p.partition, w.high FROM watermark w JOIN topition p ON w.topition = p.id
         JOIN topic t ON p.topic = t.id WHERE t.name = '$topic' ORDER BY p.partition" 2>/dev/null || true
}
