#!/usr/bin/env bash
# Runs encore-flow as one timely cluster across hosts: process p on the host of line p of the
# hostfile, over ssh for remote hosts and directly for this machine's addresses. `--help`
# explains the options; README.md ("Across hosts") the setup.
#
# Design
#  * Every process gets the same encore-flow flags (those after `--`) plus
#    `-n <lines> -p <p> -h <hostfile> -w <W>`. timely binds the address of its own hostfile
#    line and connects to the others', so nothing here assumes `localhost`: a line names the
#    address a process listens on, and where the launcher runs it.
#  * Local or remote: a host is local when it resolves to a loopback address (127.0.0.0/8,
#    ::1) or to an address of one of this machine's interfaces; everything else goes over
#    `ssh -o BatchMode=yes` (never a password prompt from a background process).
#  * A remote process is run by a small bash wrapper (REMOTE_SCRIPT) that gets the hostfile's
#    text as an argument, writes it to a temporary file there, and starts encore-flow in the
#    remote directory. ssh cannot deliver a signal, so the wrapper watches its stdin: the
#    launcher keeps the ssh's stdin open (a FIFO) and closes it to ask for a stop; at EOF the
#    wrapper sends SIGINT to encore-flow (then SIGTERM and SIGKILL if it does not exit).
#    A dropped connection closes that stdin too, so no remote process outlives the launcher.
#  * Every child runs in its own session (setsid): a Ctrl-C in the terminal reaches only the
#    launcher, which then stops them all in order. Bash makes background commands ignore
#    SIGINT; each child resets that (`trap - INT`) so SIGINT works as encore-flow expects.
#  * Output: each process's stdout and stderr, line by line, prefixed `[p<i> <host>] `, on the
#    launcher's stdout (and in <log-dir>/p<i>.log); the launcher's own lines go to stderr,
#    prefixed `launch: `.
#  * The first process to exit non-zero stops the run: the launcher waits two seconds (its
#    peers then exit too, "lost a peer process"), names the process(es) that failed first
#    with their host, status and last log line, stops the others and exits 1.
#  * A launcher killed with SIGKILL still stops its processes: local ones get SIGINT from the
#    kernel (setpriv --pdeathsig, where util-linux has it), remote ones see their stdin close.
#  * Metrics (--metrics-port) listen on each host's loopback unless --metrics-host names
#    another address: the endpoint answers anyone who reaches it, so exposing it is a choice.
#  * Limits: the flags appear in the launcher's log lines and in `ps` on every host, so keep
#    the password out of `--postgres URL`: encore-flow reads it from PGPASSWORD, which local
#    processes inherit from the launcher; remote ones need it set on their host (or
#    `-o SendEnv=PGPASSWORD` with `AcceptEnv PGPASSWORD` in that host's sshd). The same holds
#    for PGSSLMODE/PGSSLROOTCERT/PGSSLCERT/PGSSLKEY. Files named in the flags (`sslrootcert=PATH`
#    in the URL, `--kafka-config FILE`, `ssl.ca.location=PATH`) must exist at that path on
#    every host; `--kafka-config` keeps a SASL password off the command line.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$DEPLOY_DIR")"

say() { printf 'launch: %s\n' "$*" >&2; }
die() {
    printf 'launch: error: %s\n' "$*" >&2
    exit 2
}

usage() {
    cat <<EOF
Usage: deploy/launch.sh [OPTIONS] HOSTFILE -- ENCORE-FLOW-FLAGS...

Runs encore-flow as one cluster of N processes, N being the number of lines of HOSTFILE
(one host:port per line, the file encore-flow's -h takes; empty lines and lines starting
with # are ignored; IPv6 as [addr]:port). Process p runs on the host of line p and listens
on that address: directly when the host is this machine (127.0.0.0/8, ::1, or an address
of one of its interfaces), otherwise over ssh. Each process gets the flags after --
followed by -n N -p p -h HOSTFILE -w W (so do not pass -n/-p/-h/-w yourself).

Options:
  -w, --workers W      worker threads per process [1]
      --bin PATH       encore-flow binary for local processes
                       [\$CARGO_TARGET_DIR/release/encore-flow (CARGO_TARGET_DIR as for
                        cargo, default target/ in the repository), else encore-flow on PATH]
      --remote-bin PATH
                       encore-flow binary on the remote hosts [the absolute path of --bin]
      --remote-dir DIR directory a remote process runs in; relative paths in the flags
                       (e.g. --input events.jsonl) are resolved there [the current directory]
      --ssh CMD        the ssh program [ssh]; it is run as CMD -o BatchMode=yes [-o OPT...] HOST COMMAND
  -o, --ssh-option OPT an ssh option (repeatable), e.g. -o User=encore -o Port=2222
      --always-ssh     use ssh for every host, local ones included (to check the ssh setup)
      --log-dir DIR    also write process p's prefixed lines to DIR/p<p>.log (appended)
      --metrics-port PORT
                       add --metrics-addr 127.0.0.1:PORT+p to process p: every process serves
                       Prometheus metrics on its own port, even when several share a host,
                       on its host's loopback only (Kafka input only)
      --metrics-host HOST
                       with --metrics-port, bind HOST instead, to let Prometheus scrape from
                       elsewhere: "hostfile" for each process's own hostfile address (the
                       network the cluster talks on), or an address for every process, e.g.
                       0.0.0.0 (every interface); the endpoint has no authentication
      --grace SECONDS  after SIGINT, how long a process may take to exit before SIGTERM [60]
      --dry-run        print the command of every process (local, or the exact ssh command)
                       and exit without running anything
  -h, --help           this help

Running, stopping, exit status:
  Every output line of process p is printed as "[p<p> <host>] <line>" on stdout; the
  launcher's own lines go to stderr as "launch: ...". Ctrl-C (SIGINT or SIGTERM to the
  launcher) sends SIGINT to every process: with Kafka input each commits its current epoch
  and exits 0 (a file-input run, which has nothing to commit, is simply interrupted); after
  --grace seconds SIGTERM, then SIGKILL. When a process exits non-zero, the launcher stops
  all the others the same way, says which process failed (host, exit status or signal, last
  log line) and exits 1. It exits 0 only when every process exits 0 (e.g. --until-caught-up,
  or a clean Ctrl-C stop); 2 for a usage error (bad flags or hostfile, missing binary).
  RUST_LOG, when set, is passed to every process (local and remote).

What a remote host needs:
  * sshd accepting a key-based login for this user (BatchMode: no password prompt; use
    ~/.ssh/config or -o for users, ports and keys), and bash and mktemp;
  * the encore-flow binary at --remote-bin (built for that host), and --remote-dir;
  * any file named in the flags (e.g. --input FILE) at the same path, relative to
    --remote-dir; --output-dir is written by process 0 only, on its host;
  * the other hosts reachable on their hostfile ports, its own port free to bind.
  The hostfile itself is sent along: the remote wrapper writes it to a temporary file
  (removed when the process ends) and passes that to -h.

Examples:
  printf '10.0.0.1:2101\n10.0.0.2:2101\n' > hosts
  deploy/launch.sh -w 4 hosts -- --brokers 10.0.0.9:9092 --topic music_streaming_data \\
      --postgres postgres://encore@10.0.0.9/encore
  deploy/launch.sh hosts --dry-run -- --input /data/events.jsonl --output-dir /data/out
EOF
}

# --- arguments -----------------------------------------------------------------------------
WORKERS=1
BIN=""
REMOTE_BIN=""
REMOTE_DIR="$PWD"
SSH="ssh"
SSH_OPTIONS=()
ALWAYS_SSH=0
LOG_DIR=""
METRICS_PORT=""
METRICS_HOST=""
GRACE=60
DRY_RUN=0
HOSTFILE=""
FLOW_ARGS=()
SEEN_SEPARATOR=0

# Option $1 takes a value: there must be a next argument.
need_value() { (($# >= 2)) || die "$1 needs a value (see --help)"; }

while (($#)); do
    arg="$1"
    # --name=value is the same as --name value.
    if [[ "$arg" == --*=* ]]; then
        set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
        arg="$1"
    fi
    case "$arg" in
    -h | --help)
        usage
        exit 0
        ;;
    -w | --workers) need_value "$@" && WORKERS="$2" && shift 2 ;;
    --bin) need_value "$@" && BIN="$2" && shift 2 ;;
    --remote-bin) need_value "$@" && REMOTE_BIN="$2" && shift 2 ;;
    --remote-dir) need_value "$@" && REMOTE_DIR="$2" && shift 2 ;;
    --ssh) need_value "$@" && SSH="$2" && shift 2 ;;
    -o | --ssh-option) need_value "$@" && SSH_OPTIONS+=(-o "$2") && shift 2 ;;
    --always-ssh) ALWAYS_SSH=1 && shift ;;
    --log-dir) need_value "$@" && LOG_DIR="$2" && shift 2 ;;
    --metrics-port) need_value "$@" && METRICS_PORT="$2" && shift 2 ;;
    --metrics-host) need_value "$@" && METRICS_HOST="$2" && shift 2 ;;
    --grace) need_value "$@" && GRACE="$2" && shift 2 ;;
    --dry-run) DRY_RUN=1 && shift ;;
    --)
        shift
        FLOW_ARGS=("$@")
        SEEN_SEPARATOR=1
        break
        ;;
    -*) die "unknown option '$arg' (see --help; encore-flow's own flags go after --)" ;;
    *)
        [[ -z "$HOSTFILE" ]] || die "one hostfile only, got '$HOSTFILE' and '$arg' (encore-flow's flags go after --)"
        HOSTFILE="$arg"
        shift
        ;;
    esac
done

[[ -n "$HOSTFILE" ]] || die "no hostfile given (usage: deploy/launch.sh [OPTIONS] HOSTFILE -- ENCORE-FLOW-FLAGS; see --help)"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive number, got '$WORKERS'"
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds, got '$GRACE'"
[[ -z "$METRICS_HOST" || -n "$METRICS_PORT" ]] || die "--metrics-host needs --metrics-port"
if [[ -n "$METRICS_HOST" ]]; then
    METRICS_HOST="${METRICS_HOST#\[}" METRICS_HOST="${METRICS_HOST%\]}"
    [[ "$METRICS_HOST" =~ ^[A-Za-z0-9._:%-]+$ ]] ||
        die "--metrics-host must be an address, a host name or 'hostfile', got '$METRICS_HOST'"
fi
if ! ((SEEN_SEPARATOR)) || ((${#FLOW_ARGS[@]} == 0)); then
    die "no encore-flow flags: put them after --, e.g. -- --input events.jsonl --output-dir out (see --help)"
fi
for arg in "${FLOW_ARGS[@]}"; do
    if [[ -n "$METRICS_PORT" && "$arg" == --metrics-addr* ]]; then
        die "--metrics-port sets each process's --metrics-addr: do not pass --metrics-addr too"
    fi
    case "$arg" in
    -[nphw]* | --processes | --processes=* | --process | --process=* | --hostfile | --hostfile=* | --workers | --workers=*)
        die "'$arg' after --: the launcher sets -n, -p, -h and -w itself (use -w before -- for workers)"
        ;;
    esac
done

# --- the hostfile --------------------------------------------------------------------------
[[ -e "$HOSTFILE" ]] || die "hostfile '$HOSTFILE' does not exist"
[[ -f "$HOSTFILE" && -r "$HOSTFILE" ]] || die "hostfile '$HOSTFILE' is not a readable file"
HOSTFILE_ABS="$(cd "$(dirname "$HOSTFILE")" && pwd)/$(basename "$HOSTFILE")"

# ADDRESSES[p] is line p as written (host:port), HOSTS[p] its host (IPv6 without brackets).
# The lines kept are those encore-flow keeps: trimmed, neither empty nor starting with #.
ADDRESSES=()
HOSTS=()
line_number=0
declare -A SEEN_ADDRESS=()
while IFS= read -r line || [[ -n "$line" ]]; do
    line_number=$((line_number + 1))
    line="${line%$'\r'}"
    line="${line#"${line%%[![:space:]]*}"}"
    line="${line%"${line##*[![:space:]]}"}"
    [[ -z "$line" || "$line" == \#* ]] && continue
    if [[ "$line" =~ ^\[([0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?)\]:([0-9]+)$ ]]; then
        host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[3]}"
    elif [[ "$line" =~ ^([A-Za-z0-9][A-Za-z0-9._-]*):([0-9]+)$ ]]; then
        host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}"
    else
        die "hostfile $HOSTFILE line $line_number: expected host:port (IPv6 as [address]:port), got '$line'"
    fi
    if ((${#port} > 5 || 10#$port < 1 || 10#$port > 65535)); then
        die "hostfile $HOSTFILE line $line_number: port $port is not in 1-65535"
    fi
    [[ -z "${SEEN_ADDRESS[$line]:-}" ]] ||
        die "hostfile $HOSTFILE line $line_number: $line is already line ${SEEN_ADDRESS[$line]} (each process needs its own address)"
    SEEN_ADDRESS[$line]="$line_number"
    ADDRESSES+=("$line")
    HOSTS+=("$host")
done <"$HOSTFILE"
PROCESSES=${#ADDRESSES[@]}
((PROCESSES > 0)) || die "hostfile $HOSTFILE names no process (one host:port line per process)"
if [[ -n "$METRICS_PORT" ]]; then
    if ! [[ "$METRICS_PORT" =~ ^[1-9][0-9]{0,4}$ ]] || ((METRICS_PORT + PROCESSES - 1 > 65535)); then
        die "--metrics-port must be a port from which $PROCESSES ports fit below 65536, got '$METRICS_PORT'"
    fi
fi

# --- local or remote -----------------------------------------------------------------------
# The addresses of this machine's interfaces (iproute2, else the kernel's tables).
local_addresses() {
    if command -v ip >/dev/null; then
        ip -o addr show 2>/dev/null | awk '{split($4, a, "/"); print a[1]}'
    else
        awk '/\/32 host LOCAL/ {print prev} {prev = $2}' /proc/net/fib_trie 2>/dev/null
        awk '{a = ""; for (i = 1; i <= 32; i += 4) a = a (i > 1 ? ":" : "") substr($1, i, 4); print a}' \
            /proc/net/if_inet6 2>/dev/null
    fi
}
LOCAL_ADDRESSES=" $(local_addresses | tr '\n' ' ') "

# Succeeds when host $1 is this machine: it resolves to a loopback address or to an address
# of a local interface. A name that does not resolve here is taken as remote (ssh may know it).
is_local() {
    local host="$1" address
    ((ALWAYS_SSH)) && return 1
    while IFS= read -r address; do
        address="${address%%%*}"
        case "$address" in
        127.* | ::1 | ::ffff:127.*) return 0 ;;
        esac
        [[ -n "$address" && "$LOCAL_ADDRESSES" == *" $address "* ]] && return 0
    done < <(getent ahosts "$host" 2>/dev/null | awk '{print $1}' | sort -u)
    return 1
}

LOCAL=()
any_local=0
any_remote=0
for ((p = 0; p < PROCESSES; p++)); do
    if is_local "${HOSTS[$p]}"; then
        LOCAL[p]=1
        any_local=1
    else
        LOCAL[p]=0
        any_remote=1
    fi
done

# --- the binaries --------------------------------------------------------------------------
# Where cargo put it: CARGO_TARGET_DIR (relative to the repository, where cargo ran) or target/.
BUILT="${CARGO_TARGET_DIR:-target}"
[[ "$BUILT" == /* ]] || BUILT="$REPO_DIR/$BUILT"
BUILT="$BUILT/release/encore-flow"
if [[ -z "$BIN" ]]; then
    if [[ -x "$BUILT" ]]; then
        BIN="$BUILT"
    else
        BIN="$(command -v encore-flow || true)"
        ((any_local)) && [[ -z "$BIN" ]] &&
            die "no encore-flow binary: build it (cargo build --release --bin encore-flow) or give --bin PATH"
        BIN="${BIN:-$BUILT}"
    fi
fi
[[ "$BIN" == */* ]] || BIN="$(command -v "$BIN" || printf '%s' "$BIN")"
[[ "$BIN" == /* ]] || BIN="$PWD/$BIN"
if ((any_local)) && ! ((DRY_RUN)); then
    [[ -e "$BIN" ]] || die "encore-flow binary $BIN does not exist (cargo build --release --bin encore-flow, or --bin PATH)"
    [[ -f "$BIN" && -x "$BIN" ]] || die "encore-flow binary $BIN is not an executable file"
fi
REMOTE_BIN="${REMOTE_BIN:-$BIN}"
((any_remote)) && [[ "$REMOTE_BIN" != /* ]] && die "--remote-bin must be an absolute path, got '$REMOTE_BIN'"
if ((any_remote)) && ! ((DRY_RUN)); then
    command -v "${SSH%% *}" >/dev/null || die "the ssh program '$SSH' was not found (needed for the remote hosts)"
fi

# --- the commands --------------------------------------------------------------------------
# POSIX single quotes: what ssh's remote login shell (sh, bash, dash...) reads back as $1.
shell_quote() {
    local text="$1"
    printf "'%s'" "${text//\'/\'\\\'\'}"
}

# Runs on a remote host as `bash -c REMOTE_SCRIPT encore-launch DIR BIN HOSTS GRACE RUST_LOG
# FLAGS...`. Exits with encore-flow's status (128+n when it was killed by signal n). The
# watcher job reads stdin until EOF (the launcher's stop, or a dropped connection), then sends
# SIGINT, SIGTERM after GRACE seconds and SIGKILL 10 s later, sleeping a second at a time so
# that nothing of it outlives encore-flow by more than that; when encore-flow ends first, the
# watcher, still reading, is killed. No comments inside: the text travels in the command line.
# shellcheck disable=SC2016 # expanded on the remote host
REMOTE_SCRIPT='dir=$1 bin=$2 hosts=$3 grace=$4 rust_log=$5
shift 5
where=$(hostname 2>/dev/null || echo "the remote host")
cd "$dir" 2>/dev/null || { echo "launch: cannot cd to $dir on $where" >&2; exit 126; }
[ -x "$bin" ] || { echo "launch: no executable $bin on $where" >&2; exit 127; }
[ -z "$rust_log" ] || export RUST_LOG="$rust_log"
hostfile=$(mktemp "${TMPDIR:-/tmp}/encore-hosts.XXXXXX") || exit 1
trap "rm -f \"$hostfile\"" EXIT
printf "%s\n" "$hosts" >"$hostfile"
exec 3<&0
( trap - INT QUIT; exec "$bin" "$@" -h "$hostfile" </dev/null 3<&- ) &
pid=$!
{ while read -r _; do :; done
  for signal in INT TERM KILL; do
    kill -$signal "$pid" 2>/dev/null || exit 0
    n=0; [ $signal = INT ] && limit=$grace || limit=10
    while kill -0 "$pid" 2>/dev/null && [ $n -lt "$limit" ]; do sleep 1; n=$((n + 1)); done
  done; } <&3 >/dev/null 2>&1 &
watcher=$!
exec 3<&-
status=0
wait "$pid" || status=$?
kill "$watcher" 2>/dev/null
exit "$status"'

# COMMAND: the argument vector that runs process $1 (local: encore-flow itself; remote: ssh);
# FLAGS: the encore-flow flags in it but for -h and -w.
build_command() {
    local p="$1" hosts remote arg metrics_host
    local -a flags=("${FLOW_ARGS[@]}")
    if [[ -n "$METRICS_PORT" ]]; then
        # Loopback unless asked: the endpoint answers anyone who can reach it.
        metrics_host="${METRICS_HOST:-127.0.0.1}"
        [[ "$metrics_host" == hostfile ]] && metrics_host="${HOSTS[$p]}"
        [[ "$metrics_host" == *:* ]] && metrics_host="[$metrics_host]"
        flags+=(--metrics-addr "$metrics_host:$((METRICS_PORT + p))")
    fi
    flags+=(-n "$PROCESSES" -p "$p")
    FLAGS=("${flags[@]}")
    if ((LOCAL[p])); then
        COMMAND=("$BIN" "${flags[@]}" -h "$HOSTFILE_ABS" -w "$WORKERS")
        return 0
    fi
    hosts="$(printf '%s\n' "${ADDRESSES[@]}")"
    remote="bash -c $(shell_quote "$REMOTE_SCRIPT") encore-launch"
    for arg in "$REMOTE_DIR" "$REMOTE_BIN" "$hosts" "$GRACE" "${RUST_LOG:-}" "${flags[@]}" -w "$WORKERS"; do
        remote+=" $(shell_quote "$arg")"
    done
    read -r -a COMMAND <<<"$SSH"
    COMMAND+=(-o BatchMode=yes "${SSH_OPTIONS[@]}" "${HOSTS[$p]}" "$remote")
}

if ((DRY_RUN)); then
    for ((p = 0; p < PROCESSES; p++)); do
        build_command "$p"
        if ((LOCAL[p])); then
            printf '# p%s on %s (local)\n' "$p" "${HOSTS[$p]}"
        else
            printf '# p%s on %s (ssh): in %s runs %s %s -h <the hostfile, sent along> -w %s\n' \
                "$p" "${HOSTS[$p]}" "$REMOTE_DIR" "$REMOTE_BIN" "${FLAGS[*]}" "$WORKERS"
        fi
        line=""
        for arg in "${COMMAND[@]}"; do
            if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
                line+=" $arg"
            else
                line+=" $(shell_quote "$arg")"
            fi
        done
        printf '%s\n' "${line# }"
    done
    exit 0
fi

# --- running -------------------------------------------------------------------------------
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/encore-launch.XXXXXX")"
[[ -z "$LOG_DIR" ]] || mkdir -p "$LOG_DIR" || die "cannot create --log-dir $LOG_DIR"
PIDS=()         # PIDS[p]: encore-flow (local) or ssh (remote)
PREFIXERS=()    # PREFIXERS[p]: the job prefixing p's lines (done once all are printed)
STOP_FDS=()     # STOP_FDS[p]: the write end of a remote process's stdin
declare -A STATUS=()
STOPPED=0
STOP_REQUESTED=0

log_of() { printf '%s/p%s.log' "${LOG_DIR:-$RUN_DIR}" "$1"; }

# A local encore-flow gets SIGINT from the kernel if the launcher dies without stopping it
# (SIGKILL, OOM killer): it commits its epoch and exits, as on Ctrl-C, instead of running on
# unattended. setpriv (util-linux) sets that parent-death signal and execs the program.
ORPHAN_SIGNAL=()
if command -v setpriv >/dev/null 2>&1 && setpriv --help 2>&1 | grep -q -- --pdeathsig; then
    ORPHAN_SIGNAL=(setpriv --pdeathsig INT)
fi

# Starts process $1 in the background, its output through a prefixing job.
start_process() {
    local p="$1" fd out="$RUN_DIR/p$1.out" stdin="$RUN_DIR/p$1.in" log
    log="$(log_of "$p")"
    build_command "$p"
    mkfifo "$out"
    # The prefixer ignores INT/TERM so it prints the last lines of a stopping process. Every
    # child closes the stdin pipes of the remote processes started before it: a copy left
    # open would keep that remote process from ever seeing the EOF that stops it.
    (
        for fd in "${STOP_FDS[@]}"; do exec {fd}>&-; done
        trap '' INT TERM
        sed -u "s/^/[p$p ${HOSTS[$p]}] /" <"$out" | tee -a "$log"
    ) &
    PREFIXERS[p]=$!
    if ((LOCAL[p])); then
        (
            for fd in "${STOP_FDS[@]}"; do exec {fd}>&-; done
            trap - INT QUIT
            exec setsid "${ORPHAN_SIGNAL[@]}" "${COMMAND[@]}" </dev/null >"$out" 2>&1
        ) &
        PIDS[p]=$!
    else
        mkfifo "$stdin"
        (
            for fd in "${STOP_FDS[@]}"; do exec {fd}>&-; done
            trap - INT QUIT
            exec setsid "${COMMAND[@]}" <"$stdin" >"$out" 2>&1
        ) &
        PIDS[p]=$!
        exec {fd}>"$stdin"
        STOP_FDS[p]="$fd"
    fi
    if ((LOCAL[p])); then
        say "p$p on ${HOSTS[$p]} (local, pid ${PIDS[$p]}): ${COMMAND[*]}"
    else
        say "p$p on ${HOSTS[$p]} (ssh, pid ${PIDS[$p]}): $REMOTE_BIN ${FLAGS[*]} -h <hostfile> -w $WORKERS in $REMOTE_DIR"
    fi
}

# Collects the exit status of process $1 into STATUS, once its lines are all printed.
collect() {
    local status=0
    [[ -n "${STATUS[$1]:-}" ]] && return 0
    wait "${PIDS[$1]}" 2>/dev/null || status=$?
    wait "${PREFIXERS[$1]}" 2>/dev/null || true
    STATUS[$1]="$status"
}

running() { [[ -z "${STATUS[$1]:-}" ]] && kill -0 "${PIDS[$1]}" 2>/dev/null; }

# How process $1 ended, e.g. "p1 on 10.0.0.2 exited with status 1".
describe() {
    local p="$1" status="${STATUS[$1]}" what
    if ((status > 128)); then
        what="was killed by SIG$(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128)))"
        ((LOCAL[p])) || what="ended with status $status (killed by SIG$(kill -l $((status - 128)) 2>/dev/null || echo '?'))"
    elif ((status == 255)) && ! ((LOCAL[p])); then
        what="exited with status 255 (ssh could not run it: see its lines)"
    else
        what="exited with status $status"
    fi
    printf 'p%s on %s %s' "$p" "${HOSTS[$p]}" "$what"
}

last_line() { tail -n 1 "$(log_of "$1")" 2>/dev/null || true; }

# Asks process $1 to stop: SIGINT (local), or EOF on its stdin (remote: the wrapper sends SIGINT).
ask_to_stop() {
    local p="$1" fd
    if ((LOCAL[p])); then
        kill -INT "${PIDS[$p]}" 2>/dev/null || true
    elif [[ -n "${STOP_FDS[$p]:-}" ]]; then
        fd="${STOP_FDS[$p]}"
        exec {fd}>&-
        STOP_FDS[p]=""
    fi
}

# Waits up to $1 seconds for every process to exit; fails if some are still running.
wait_all() {
    local ticks=$(($1 * 5)) p alive
    while :; do
        alive=0
        for ((p = 0; p < ${#PIDS[@]}; p++)); do
            running "$p" && alive=1
        done
        ((alive)) || return 0
        ((ticks-- > 0)) || return 1
        sleep 0.2 || true
    done
}

# Stops every process still running: SIGINT, SIGTERM after --grace seconds, SIGKILL 10 s later.
stop_all() {
    local p
    local -a alive=()
    for ((p = 0; p < ${#PIDS[@]}; p++)); do
        running "$p" && alive+=("$p")
    done
    if ((${#alive[@]})); then
        say "stopping ${alive[*]/#/p} (SIGINT: with Kafka input each commits its current epoch and exits)"
        for p in "${alive[@]}"; do ask_to_stop "$p"; done
        if ! wait_all "$GRACE"; then
            say "still running $GRACE s after SIGINT: SIGTERM"
            for p in "${alive[@]}"; do running "$p" && kill -TERM "${PIDS[$p]}" 2>/dev/null; done
            if ! wait_all 10; then
                say "still running 10 s after SIGTERM: SIGKILL"
                for p in "${alive[@]}"; do running "$p" && kill -KILL "${PIDS[$p]}" 2>/dev/null; done
                wait_all 5 || true
            fi
        fi
        for p in "${alive[@]}"; do
            collect "$p"
            say "$(describe "$p")"
        done
    fi
}

# Runs once, on every way out: nothing the launcher started is left running.
finish() {
    ((STOPPED)) && return 0
    STOPPED=1
    trap '' INT TERM HUP
    stop_all
    rm -rf "$RUN_DIR"
}
trap finish EXIT
trap 'STOP_REQUESTED=1' INT TERM HUP

say "$PROCESSES processes × $WORKERS worker(s), hostfile $HOSTFILE_ABS"
for ((p = 0; p < PROCESSES; p++)); do
    start_process "$p"
done

# --- until Ctrl-C, a failure, or every process done ----------------------------------------
FAILED=""
while ((STOP_REQUESTED == 0)); do
    any_alive=0
    for ((p = 0; p < PROCESSES; p++)); do
        [[ -n "${STATUS[$p]:-}" ]] && continue
        if running "$p"; then
            any_alive=1
            continue
        fi
        collect "$p"
        if [[ "${STATUS[$p]}" != 0 ]]; then
            FAILED="$p"
            break 2
        fi
        say "$(describe "$p")"
    done
    ((any_alive)) || break
    sleep 0.2 || true # interrupted by Ctrl-C: the trap has set STOP_REQUESTED
done

if [[ -n "$FAILED" ]]; then
    # The peers of a failed process exit within a second or two ("lost a peer process"). Name
    # as the cause every process that ended otherwise; the first one seen when all merely lost
    # a peer.
    sleep 2
    CAUSES=()
    for ((p = 0; p < PROCESSES; p++)); do
        [[ -z "${STATUS[$p]:-}" ]] && running "$p" && continue
        collect "$p"
        [[ "${STATUS[$p]}" == 0 ]] && continue
        [[ "$(last_line "$p")" == *"lost a peer process"* ]] || CAUSES+=("$p")
    done
    ((${#CAUSES[@]})) || CAUSES=("$FAILED")
    for p in "${CAUSES[@]}"; do
        say "failed: $(describe "$p"); last line: $(last_line "$p")"
    done
    for ((p = 0; p < PROCESSES; p++)); do
        if [[ -n "${STATUS[$p]:-}" && " ${CAUSES[*]} " != *" $p "* ]]; then
            say "then $(describe "$p")"
        fi
    done
    finish
    exit 1
fi

finish
for ((p = 0; p < PROCESSES; p++)); do
    [[ "${STATUS[$p]}" == 0 ]] || exit 1
done
say "all $PROCESSES processes exited 0"
