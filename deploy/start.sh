#!/usr/bin/env bash
# Starts encore's local stack: a Tansu broker (Kafka protocol) and a PostgreSQL cluster, both on
# 127.0.0.1, with their data, pid files and logs in deploy/state/ (git-ignored), and creates the
# events topic. Idempotent: what is already running is left alone, so running it twice is safe.
#
# Configuration: see the variables at the top of deploy/lib.sh (ports, storage, topic,
# partitions). Stop everything with deploy/stop.sh.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "$ENCORE_STORAGE" in
    sqlite) STORAGE_URL="sqlite://tansu.db" ;; # relative to Tansu's working directory
    memory) STORAGE_URL="memory://tansu/" ;;
    *) die "ENCORE_STORAGE must be 'sqlite' or 'memory', not '$ENCORE_STORAGE'" ;;
esac
[[ "$ENCORE_PARTITIONS" =~ ^[1-9][0-9]*$ ]] || die "ENCORE_PARTITIONS must be a positive integer"

mkdir -p "$ENCORE_STATE_DIR"
TANSU="$(ensure_tansu)"
PG_BIN_DIR="$(ensure_pg_bin)"

start_tansu() {
    local pid_file="$ENCORE_STATE_DIR/tansu.pid" log="$ENCORE_STATE_DIR/tansu.log"
    local storage_file="$ENCORE_STATE_DIR/tansu.storage" pid listener
    pid="$(live_pid "$pid_file" tansu)"
    if [[ -n "$pid" ]]; then
        local running_storage
        running_storage="$(cat "$storage_file" 2>/dev/null || echo unknown)"
        if [[ "$running_storage" != "$ENCORE_STORAGE" ]]; then
            say "warning: tansu is already running with $running_storage storage; run deploy/stop.sh to switch to $ENCORE_STORAGE"
        fi
        say "tansu already running (pid $pid) on $ENCORE_BROKERS"
        return 0
    fi
    if port_open "$ENCORE_KAFKA_PORT"; then
        die "port $ENCORE_KAFKA_PORT is taken by another program: set ENCORE_KAFKA_PORT to a free port"
    fi
    listener="tcp://$ENCORE_BROKERS"
    mkdir -p "$ENCORE_STATE_DIR/tansu"
    # Tansu resolves sqlite:// paths against its working directory, so the database file lands
    # in state/tansu/. setsid detaches it from this shell's terminal and signals.
    (
        cd "$ENCORE_STATE_DIR/tansu"
        RUST_LOG="${RUST_LOG:-warn}" setsid "$TANSU" broker \
            --listener-url "$listener" \
            --advertised-listener-url "$listener" \
            --storage-engine "$STORAGE_URL" \
            </dev/null >>"$log" 2>&1 &
        echo $! >"$pid_file"
    )
    echo "$ENCORE_STORAGE" >"$storage_file"
    if ! wait_for_port "$ENCORE_KAFKA_PORT" 30; then
        log_tail "$log" >&2
        die "tansu did not start listening on $ENCORE_BROKERS within 30 s (log: $log)"
    fi
    say "tansu started (pid $(cat "$pid_file"), $ENCORE_STORAGE storage) on $ENCORE_BROKERS"
}

start_postgres() {
    local cluster data log
    cluster="$(pg_cluster_dir)"
    data="$cluster/data"
    if [[ "$cluster" == "$ENCORE_STATE_DIR/pg" ]]; then
        log="$ENCORE_STATE_DIR/postgres.log"
    else
        log="$cluster/postgres.log"
    fi
    if [[ ! -f "$data/PG_VERSION" ]]; then
        say "creating a PostgreSQL cluster in $cluster"
        mkdir -p "$cluster/socket"
        touch "$log"
        if is_root; then
            chown -R postgres: "$cluster" "$log"
        fi
        as_pg "$PG_BIN_DIR/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C \
            --no-instructions >"$cluster/initdb.log" 2>&1 ||
            { log_tail "$cluster/initdb.log" >&2; die "initdb failed (log: $cluster/initdb.log)"; }
        # Loopback only, and a private socket directory so no system path is needed.
        printf "\n# Written by deploy/start.sh\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" \
            "$cluster/socket" >>"$data/postgresql.conf"
        echo "$cluster" >"$ENCORE_STATE_DIR/pg.location"
    fi
    if as_pg "$PG_BIN_DIR/pg_ctl" status -D "$data" >/dev/null 2>&1; then
        say "postgres already running on 127.0.0.1:$ENCORE_PG_PORT"
        return 0
    fi
    if port_open "$ENCORE_PG_PORT"; then
        die "port $ENCORE_PG_PORT is taken by another program: set ENCORE_PG_PORT to a free port"
    fi
    as_pg "$PG_BIN_DIR/pg_ctl" start -D "$data" -l "$log" -w -t 60 -o "-p $ENCORE_PG_PORT" >/dev/null ||
        { log_tail "$log" >&2; die "postgres did not start (log: $log)"; }
    say "postgres started on 127.0.0.1:$ENCORE_PG_PORT (data: $data)"
}

create_topic() {
    local broker="tcp://$ENCORE_BROKERS" listing
    # `tansu topic list` prints the broker's metadata as JSON.
    listing="$("$TANSU" topic list --broker "$broker" 2>&1)" ||
        die "could not list topics on $ENCORE_BROKERS: $listing"
    if grep -q "\"name\":\"$ENCORE_TOPIC\"" <<<"$listing"; then
        say "topic $ENCORE_TOPIC already exists"
        return 0
    fi
    # Created explicitly: Tansu with file storage stalls on auto-creation.
    "$TANSU" topic create "$ENCORE_TOPIC" --partitions "$ENCORE_PARTITIONS" --broker "$broker" >&2 ||
        die "could not create topic $ENCORE_TOPIC on $ENCORE_BROKERS"
    say "topic $ENCORE_TOPIC created with $ENCORE_PARTITIONS partitions"
}

start_tansu
start_postgres
create_topic

cat <<EOF

encore local stack is up.
  Kafka (Tansu):  $ENCORE_BROKERS   topic $ENCORE_TOPIC
  PostgreSQL:     $ENCORE_POSTGRES_URL
  Logs:           $ENCORE_STATE_DIR/*.log

Use:  --brokers $ENCORE_BROKERS --topic $ENCORE_TOPIC --postgres $ENCORE_POSTGRES_URL
Stop: deploy/stop.sh
EOF
