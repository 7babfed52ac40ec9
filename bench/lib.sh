# bench/lib.sh - the one way bench/ starts redis-servers, replicas, sentinels and proxies. Sourced by every bench
# script (`source "$ROOT/bench/lib.sh"`); bench/serve.sh offers it to programs in other languages (bench/clients.py).
#
# The shell twin of tests/src (lib.rs RedisServer and Proxy, sentinel.rs Sentinel): the same redis-server arguments
# and the same Sentinel configuration, but on the fixed ports a script is given (BASE_PORT), so that a port that is
# taken stops the run (port_free_or_die) instead of moving it.
#
# Everything binds to 127.0.0.1. Every process started with `start` (so by every start_* function) is recorded by
# PID in STARTED and stopped by the one EXIT trap set here: SIGTERM in reverse order of start, SIGKILL after 5 s.
#
# Set by the script, before it starts anything:
#   BENCH_WORK            the directory for logs (NAME.log), configs and the servers' files (required by start_*)
#   BENCH_WORK_REMOVE=1   remove BENCH_WORK at exit (default: keep it)
#   SRV_PIN=(...)         a command prefix for every process started, e.g. (taskset -c 1) (default: none)
#   PORT_HINT             what the refusal of a taken port suggests (default: set BASE_PORT)
#   PORT_TAKEN_STATUS     the exit status of that refusal (default 1)
#   bench_on_exit         a function, if defined: run at exit once everything is stopped, with BENCH_STOPPED (how
#                         many processes were still running) set
# `log` (a message on stderr) may be redefined by the script; `die` logs "ERROR: ..." and exits 1.
#
# Functions:
#   install_if_missing COMMAND[:PACKAGE]...   apt-get install the packages of missing commands (root only)
#   port_open PORT | port_free_or_die PORT... | wait_for SECONDS COMMAND... | wait_port PORT [SECONDS]
#   cli PORT ARGS... (redis-cli, 5 s bound) | ping_ok PORT | set_ok PORT
#   start NAME COMMAND...                     any process, logs to BENCH_WORK/NAME.log; sets LAST_PID
#   start_redis PORT [ARGS...]                redis-server, no persistence; waits for PING
#   start_replica PORT MASTER_PORT [ARGS...]  start_redis ... --replicaof; waits until its link is up
#   start_sentinel PORT MASTER_PORT DOWN_AFTER_MS [EXTRA_CONFIG_LINES]   monitors "mymaster", quorum 2; waits for PING
#   sentinel_log PORT                         the path of that sentinel's log
#   proxy_config FILE LISTEN_PORT "SERVER_PORT..." [EXTRA_JSON_MEMBERS]   a proxy config for servers on 127.0.0.1
#   start_proxy BINARY CONFIG PORT            a proxy (log: BENCH_WORK/<CONFIG without .json>.log); waits until
#                                             it forwards a SET on PORT
#   stop_pid PID [SIGNAL] | stop_all [SIGNAL] stop started processes now (default SIGTERM, then SIGKILL after 5 s)
# shellcheck shell=bash

PATH=$PATH:/usr/sbin:/sbin
STARTED=()
SRV_PIN=()
LAST_PID=

log() { echo "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install_if_missing() { # COMMAND[:PACKAGE]...: installs (apt-get, as root) the packages of the commands missing
    local spec pkg need=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null && continue
        pkg=${spec#*:}
        [[ " ${need[*]} " == *" $pkg "* ]] || need+=("$pkg")
    done
    ((${#need[@]})) || return 0
    [ "$(id -u)" = 0 ] || die "missing packages: ${need[*]} (run as root, or apt-get install them)"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${need[@]}" >&2; } ||
        die "apt-get install ${need[*]} failed"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free_or_die() { # PORT...: exits (PORT_TAKEN_STATUS) when something listens on one of them
    local port
    for port in "$@"; do
        if port_open "$port"; then
            log "ERROR: 127.0.0.1:$port is in use; refusing to run (${PORT_HINT:-set BASE_PORT})"
            exit "${PORT_TAKEN_STATUS:-1}"
        fi
    done
}
wait_for() { # SECONDS COMMAND...: runs the command every 0.1 s until it succeeds (0) or SECONDS pass (1)
    local tries=$(($1 * 10)); shift
    while ((tries-- > 0)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$@"; }
ping_ok() { [ "$(cli "$1" ping 2>/dev/null)" = PONG ]; }
set_ok() { [ "$(cli "$1" set __bench_ready 1 2>/dev/null)" = OK ]; }
wait_port() { wait_for "${2:-10}" ping_ok "$1"; } # PORT [SECONDS]: until something answers PING there

start() { # NAME COMMAND...: a background process (pinned with SRV_PIN), output to BENCH_WORK/NAME.log; sets LAST_PID
    local name=$1; shift
    "${SRV_PIN[@]}" "$@" >"$BENCH_WORK/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
}

start_redis() { # PORT [ARGS...]: as tests/src/lib.rs starts one, plus a dump file of its own and no sync delay
    local port=$1; shift
    start "redis-$port" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        --dir "$BENCH_WORK" --dbfilename "dump-$port.rdb" --repl-diskless-sync yes --repl-diskless-sync-delay 0 "$@"
    wait_port "$port" 10 || die "redis-server :$port does not answer (see $BENCH_WORK/redis-$port.log)"
}

start_replica() { # PORT MASTER_PORT [ARGS...]: a replica, returned once its link to the master is up
    local port=$1 master=$2; shift 2
    start_redis "$port" --replicaof 127.0.0.1 "$master" "$@"
    wait_for 20 sh -c "redis-cli -h 127.0.0.1 -p $port info replication | grep -q master_link_status:up" ||
        die "replica :$port did not sync with :$master"
}

sentinel_log() { echo "$BENCH_WORK/sentinel-$1/sentinel.log"; }
start_sentinel() { # PORT MASTER_PORT DOWN_AFTER_MS [EXTRA]: tests/src/sentinel.rs's configuration, in a fresh dir
    local port=$1 master=$2 down_after=$3 extra=${4:-} dir=$BENCH_WORK/sentinel-$1
    rm -rf "$dir" && mkdir -p "$dir"
    cat >"$dir/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
daemonize no
loglevel notice
logfile $dir/sentinel.log
dir $dir
sentinel resolve-hostnames yes
sentinel monitor mymaster 127.0.0.1 $master 2
sentinel down-after-milliseconds mymaster $down_after
sentinel failover-timeout mymaster 5000
sentinel parallel-syncs mymaster 2
$extra
EOF
    start "sentinel-$port/stdout" redis-server "$dir/sentinel.conf" --sentinel
    wait_port "$port" 10 || die "sentinel :$port does not answer (see $dir/sentinel.log)"
}

proxy_config() { # FILE LISTEN_PORT "SERVER_PORT..." [EXTRA]: the proxy's servers on 127.0.0.1, listening there
    local servers=() port
    for port in $3; do servers+=("{\"host\": \"127.0.0.1\", \"port\": $port}"); done
    local IFS=,
    printf '{ "servers": [%s], "listen_port": %s, "bind_address": "127.0.0.1"%s }\n' "${servers[*]}" "$2" \
        "${4:+, $4}" >"$1"
}

start_proxy() { # BINARY CONFIG PORT: returned once it forwards a SET on PORT; sets LAST_PID
    local name
    name=$(basename "$2" .json)
    start "$name" "$1" "$2"
    wait_for 15 set_ok "$3" || die "$name :$3 does not forward a SET (see $BENCH_WORK/$name.log)"
}

stop_pids() { # SIGNAL PID...: signals them, waits up to 5 s for each, then SIGKILLs it
    local signal=$1 pid late=(); shift
    { # bash's notices of a job killed by a signal ("Killed") go to /dev/null with the errors of kill and wait
        for pid in "$@"; do kill -"$signal" "$pid" || true; done
        for pid in "$@"; do
            for _ in $(seq 50); do kill -0 "$pid" || break; sleep 0.1; done
            if kill -0 "$pid"; then late+=("$pid"); kill -KILL "$pid" || true; fi
            wait "$pid" || true
        done
    } 2>/dev/null
    for pid in "${late[@]}"; do log "pid $pid ignored SIG$signal; SIGKILL"; done
}
stop_pid() { # PID [SIGNAL]: stops one started process now
    local pid=$1 i
    stop_pids "${2:-TERM}" "$pid"
    for i in "${!STARTED[@]}"; do [ "${STARTED[i]}" = "$pid" ] && unset 'STARTED[i]'; done
    STARTED=("${STARTED[@]}")
}
stop_all() { # [SIGNAL]: stops every started process, the last started first
    local reversed=() i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do reversed+=("${STARTED[i]}"); done
    if ((${#reversed[@]})); then stop_pids "${1:-TERM}" "${reversed[@]}"; fi
    STARTED=()
}

bench_cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    # shellcheck disable=SC2034 # for bench_on_exit
    BENCH_STOPPED=${#STARTED[@]}
    stop_all TERM
    declare -F bench_on_exit >/dev/null && bench_on_exit
    [ "${BENCH_WORK_REMOVE:-0}" = 1 ] && [ -n "${BENCH_WORK:-}" ] && rm -rf "$BENCH_WORK"
    exit "$status"
}
trap bench_cleanup EXIT
trap 'log interrupted; exit 130' INT TERM
