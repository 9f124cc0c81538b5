#!/usr/bin/env bash
# Interop: exthost's MCP host against third-party MCP servers from the package
# registries, over stdio and over Streamable HTTP.
#
#   bash scripts/interop.sh                 # builds exthost (release) first
#   EXTHOST=target/debug/exthost bash scripts/interop.sh
#
# Needs node + npm, python3 (with venv) and the npm and PyPI registries. Not
# run in CI. Everything is installed into a fresh `mktemp -d` prefix that is
# removed on exit (INTEROP_KEEP=1 keeps it, for a look at the logs).
#
# What it does:
#   1. installs @modelcontextprotocol/server-everything and
#      @modelcontextprotocol/server-filesystem (npm install --prefix) and
#      mcp-server-time (python3 -m venv + pip) into the prefix;
#   2. builds exthost (`cargo build --release --bin exthost`) unless $EXTHOST
#      is set;
#   3. stdio: one config with the three servers; `exthost tools` (text and
#      --json) and `exthost call`s: everything's `echo`, `get-tiny-image`
#      (--json, an image block) and `get-env` (env with ${VAR:-default}),
#      time's `get_current_time` {"timezone":"UTC"} and a bad timezone
#      (isError), filesystem's `list_directory`; then that no server process
#      from the prefix is left;
#   4. Streamable HTTP: server-everything `streamableHttp` on PORT, and
#      `exthost tools` / `exthost call` against url = http://127.0.0.1:PORT/mcp.
#      server-everything binds *:PORT (express `app.listen(PORT)`, no host
#      option), so this phase runs in a private network namespace
#      (`unshare -rn`, `ip link set lo up`), where only loopback exists. When
#      that is not possible it warns and binds *:PORT on a free port anyway.
# It prints PASS/FAIL per check and a summary, and exits 1 if any check failed.
#
# Verified by hand (2026-11-29, before the MCP host existed, so no exthost step
# has been run yet):
#   - the installs: server-everything 2026.8.31 and server-filesystem 2026.8.31
#     (npm, Node 20; bins `mcp-server-everything`, `mcp-server-filesystem` in
#     node_modules/.bin), mcp-server-time 2026.10.19 (pip; bin
#     `mcp-server-time`, only option `--local-timezone TZ`);
#   - each stdio server driven by hand with initialize / tools/list /
#     tools/call, using the exact commands and args written below:
#       `mcp-server-everything stdio`: `echo {message}` -> "Echo: <message>",
#         `get-sum {a,b}` -> "The sum of 2 and 3 is 5.", `get-tiny-image` ->
#         text + image/png, `get-env` -> the env as JSON text; it sends
#         tools/list_changed right after initialize;
#       `mcp-server-time`: `get_current_time {timezone}` -> JSON text with
#         "timezone" and "datetime" + structuredContent; a bad timezone ->
#         isError: true, "Invalid timezone";
#       `mcp-server-filesystem DIR...` (allowed roots as args):
#         `list_directory {path}` -> "[FILE] hello.txt" lines;
#   - `PORT=N mcp-server-everything streamableHttp` under `unshare -rn` after
#     `ip link set lo up`: listens on *:N (logs "MCP Streamable HTTP Server
#     listening on port N" to stderr), endpoint /mcp, and answers an
#     initialize POST with an SSE body and an mcp-session-id header.
#   - the whole script, both HTTP paths (namespace, and the *:PORT fallback),
#     with a throwaway Python stand-in for `exthost tools|call` (plain MCP
#     client; text output = the text blocks, --json = the whole result,
#     isError = exit 4 with the text on stderr): 16 passed, 0 failed; and with
#     a stub that always fails: 12 FAIL lines, exit 1, prefix removed, no
#     server process left.
# Run against the real exthost (debug build of 3e4019a, 2026-11-29): 16 of 16
# passed; then tightened: exact exit codes (isError 4, unknown tool 2, bad
# arguments 1), an `mcpServers` JSON check, and per-phase output file names.
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SCRIPT")/.." && pwd)

# Package versions verified above; override with e.g. EVERYTHING_VERSION=latest.
EVERYTHING_VERSION=${EVERYTHING_VERSION:-2026.8.31}
FILESYSTEM_VERSION=${FILESYSTEM_VERSION:-2026.8.31}
TIME_VERSION=${TIME_VERSION:-2026.10.19}
CALL_TIMEOUT_SECS=${CALL_TIMEOUT_SECS:-120}

STARTED_PIDS=()
N=0

log() { printf '%s\n' "interop: $*" >&2; }

# record PASS|FAIL NAME: one line in the results file and on stdout.
record() {
    printf '%s %s\n' "$1" "$2" >>"$RESULTS"
    printf '%s %s\n' "$1" "$2"
}

# check NAME WANT PATTERN... -- COMMAND...
# Runs COMMAND (stdout and stderr to one file, under a timeout). PASS when its
# exit status matches WANT (an exact status such as `0` or `4`, or `nonzero`)
# and every extended regexp PATTERN occurs in its output.
check() {
    local name=$1 want=$2
    shift 2
    local patterns=()
    while [[ $1 != -- ]]; do
        patterns+=("$1")
        shift
    done
    shift
    N=$((N + 1))
    # The HTTP phase re-executes this script (N starts again at 0): a phase
    # tag keeps its outputs from overwriting the stdio phase's.
    local out="$WORK/check-${CHECK_TAG:-main}-$N.out" rc=0 ok=1 why=()
    timeout "$CALL_TIMEOUT_SECS" "$@" >"$out" 2>&1 || rc=$?
    if [[ $want =~ ^[0-9]+$ && $rc != "$want" ]]; then
        ok=0
        why+=("exit status $rc, wanted $want")
    elif [[ $want == nonzero && $rc == 0 ]]; then
        ok=0
        why+=("exit status 0, wanted non-zero")
    fi
    local p
    for p in "${patterns[@]}"; do
        if ! grep -qE -- "$p" "$out"; then
            ok=0
            why+=("no match for /$p/")
        fi
    done
    if ((ok)); then
        record PASS "$name"
    else
        record FAIL "$name"
        printf '    command: %s\n' "$*"
        for p in "${why[@]}"; do printf '    %s\n' "$p"; done
        printf '    output (last 20 lines of %s):\n' "$out"
        tail -n 20 "$out" | sed 's/^/      | /'
    fi
}

kill_started() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            sleep 0.5
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}

# wait_for_line FILE REGEXP SECS PID: waits until FILE has a line matching
# REGEXP, or fails when PID exits or SECS pass.
wait_for_line() {
    local file=$1 re=$2 secs=$3 pid=$4 i
    for ((i = 0; i < secs * 10; i++)); do
        grep -qE -- "$re" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# The Streamable HTTP phase. Runs inside the network namespace when there is
# one (the script re-executes itself with `__http_phase`), else directly.
# Uses PREFIX, WORK, RESULTS and EXTHOST from the environment.
http_phase() {
    local port=$1
    local server_log="$WORK/everything-http.log"
    log "starting server-everything (streamableHttp) on port $port"
    PORT=$port "$PREFIX/npm/node_modules/.bin/mcp-server-everything" streamableHttp \
        >"$server_log" 2>&1 </dev/null &
    local pid=$!
    STARTED_PIDS+=("$pid")
    if ! wait_for_line "$server_log" "listening on port $port" 30 "$pid"; then
        record FAIL "http: server-everything listens on port $port"
        tail -n 20 "$server_log" | sed 's/^/      | /'
        kill_started
        return 0
    fi
    record PASS "http: server-everything listens on port $port"

    local config="$WORK/http.toml"
    cat >"$config" <<EOF
services_dir = "$WORK/http-run"
logs_dir = "$WORK/logs"

[services.remote]
kind = "mcp"
url = "http://127.0.0.1:$port/mcp"
headers = { X-Interop-Check = "\${INTEROP_HEADER:-exthost-interop}" }
handshake_timeout = "30s"
EOF
    check "http: exthost tools lists echo and get-sum" 0 '\becho\b' '\bget-sum\b' -- \
        "$EXTHOST" tools --config "$config"
    check "http: exthost call echo" 0 'Echo: over streamable http' -- \
        "$EXTHOST" call --config "$config" echo '{"message":"over streamable http"}'
    check "http: exthost call get-sum" 0 'The sum of 2 and 3 is 5' -- \
        "$EXTHOST" call --config "$config" get-sum '{"a":2,"b":3}'
    check "http: exthost call --json get-tiny-image (image/png)" 0 'image/png' -- \
        "$EXTHOST" call --config "$config" get-tiny-image '{}' --json
    kill_started
}

if [[ ${1:-} == __http_phase ]]; then
    # Inside `unshare -rn`: only a loopback device, down until we raise it.
    RESULTS=${RESULTS:?} PREFIX=${PREFIX:?} WORK=${WORK:?} EXTHOST=${EXTHOST:?}
    trap kill_started EXIT
    CHECK_TAG=http
    ip link set lo up
    http_phase 3001
    exit 0
fi

PREFIX=$(mktemp -d "${TMPDIR:-/tmp}/exthost-interop.XXXXXX")
PREFIX=$(readlink -f "$PREFIX")
WORK="$PREFIX/work"
RESULTS="$WORK/results"
mkdir -p "$WORK" "$WORK/logs"
: >"$RESULTS"
export PREFIX WORK RESULTS

cleanup() {
    kill_started
    if [[ ${INTEROP_KEEP:-} == 1 ]]; then
        log "kept $PREFIX"
    else
        rm -rf "$PREFIX"
    fi
}
trap cleanup EXIT

# 1. Installs.
log "installing into $PREFIX"
if npm install --prefix "$PREFIX/npm" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION" \
    "@modelcontextprotocol/server-filesystem@$FILESYSTEM_VERSION" >"$WORK/npm.log" 2>&1; then
    record PASS "install: npm server-everything@$EVERYTHING_VERSION server-filesystem@$FILESYSTEM_VERSION"
else
    record FAIL "install: npm server-everything@$EVERYTHING_VERSION server-filesystem@$FILESYSTEM_VERSION"
    tail -n 20 "$WORK/npm.log" >&2
fi
time_spec=mcp-server-time
[[ $TIME_VERSION == latest ]] || time_spec="mcp-server-time==$TIME_VERSION"
if python3 -m venv "$PREFIX/venv" >"$WORK/pip.log" 2>&1 &&
    "$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check "$time_spec" \
        >>"$WORK/pip.log" 2>&1; then
    record PASS "install: pip $time_spec"
else
    record FAIL "install: pip $time_spec"
    tail -n 20 "$WORK/pip.log" >&2
fi
EVERYTHING_BIN="$PREFIX/npm/node_modules/.bin/mcp-server-everything"
FILESYSTEM_BIN="$PREFIX/npm/node_modules/.bin/mcp-server-filesystem"
TIME_BIN="$PREFIX/venv/bin/mcp-server-time"

# 2. exthost.
if [[ -n ${EXTHOST:-} ]]; then
    EXTHOST=$(readlink -f "$EXTHOST")
else
    log "building exthost (cargo build --release --bin exthost)"
    (cd "$ROOT" && cargo build --release --bin exthost)
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target="$ROOT/$target"
    EXTHOST="$target/release/exthost"
fi
[[ -x $EXTHOST ]] || {
    log "no exthost binary at $EXTHOST"
    exit 1
}
export EXTHOST
log "exthost: $EXTHOST"

# 3. stdio servers.
FILES="$PREFIX/files"
mkdir -p "$FILES/subdir"
echo "hello from exthost interop" >"$FILES/hello.txt"

STDIO_CONFIG="$WORK/stdio.toml"
cat >"$STDIO_CONFIG" <<EOF
services_dir = "$WORK/run"
logs_dir = "$WORK/logs"

[services.everything]
kind = "mcp"
command = "$EVERYTHING_BIN"
args = ["stdio"]
env = { INTEROP_MARK = "\${INTEROP_MARK_VALUE:-marked-by-exthost}" }
handshake_timeout = "30s"

[services.time]
kind = "mcp"
command = "$TIME_BIN"
handshake_timeout = "30s"

[services.filesystem]
kind = "mcp"
command = "$FILESYSTEM_BIN"
args = ["$FILES"]
handshake_timeout = "30s"
EOF

check "stdio: exthost tools lists all three servers' tools" 0 \
    '\becho\b' '\bget_current_time\b' '\blist_directory\b' -- \
    "$EXTHOST" tools --config "$STDIO_CONFIG"
check "stdio: exthost tools --json" 0 \
    '"name": ?"get_current_time"' '"name": ?"list_directory"' '"parameters"' -- \
    "$EXTHOST" tools --config "$STDIO_CONFIG" --json
check "stdio: everything echo" 0 'Echo: hello interop' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" echo '{"message":"hello interop"}'
check "stdio: everything get-tiny-image --json (image/png)" 0 'image/png' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" get-tiny-image '{}' --json
check "stdio: everything get-env sees env with \${VAR:-default}" 0 \
    'INTEROP_MARK[^A-Za-z0-9]+marked-by-exthost' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" get-env '{}'
check "stdio: time get_current_time UTC" 0 'UTC' 'datetime' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" get_current_time '{"timezone":"UTC"}'
check "stdio: time bad timezone is a tool error (isError, exit 4)" 4 'Invalid timezone' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" get_current_time '{"timezone":"Not/AZone"}'
check "stdio: filesystem list_directory" 0 '\[FILE\] hello\.txt' '\[DIR\] subdir' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" list_directory "{\"path\":\"$FILES\"}"

check "stdio: unknown tool is exit 2" 2 'unknown tool' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" no-such-tool '{}'
check "stdio: arguments that are not a JSON object are exit 1" 1 'bad arguments' -- \
    "$EXTHOST" call --config "$STDIO_CONFIG" echo '[1,2]'

# The same three servers from a Claude Desktop style `mcpServers` file, with
# client-specific keys (ignored with a warning).
CLAUDE_CONFIG="$WORK/claude_desktop_config.json"
cat >"$CLAUDE_CONFIG" <<EOF
{
  "globalShortcut": "",
  "mcpServers": {
    "everything": {
      "command": "$EVERYTHING_BIN", "args": ["stdio"],
      "env": {"INTEROP_MARK": "\${INTEROP_MARK_VALUE:-marked-by-json}"},
      "alwaysAllow": ["echo"], "autoApprove": [], "timeout": 60
    },
    "time": {"command": "$TIME_BIN", "disabled": false, "alwaysAllow": []},
    "filesystem": {"type": "stdio", "command": "$FILESYSTEM_BIN", "args": ["$FILES"], "alwaysAllow": []}
  }
}
EOF
check "json: mcpServers file lists all three servers' tools" 0 \
    '\becho\b' '\bget_current_time\b' '\blist_directory\b' 'ignoring a key .*alwaysAllow' -- \
    "$EXTHOST" tools --config "$CLAUDE_CONFIG"
check "json: mcpServers get-env sees env with \${VAR:-default}" 0 \
    'INTEROP_MARK[^A-Za-z0-9]+marked-by-json' -- \
    "$EXTHOST" call --config "$CLAUDE_CONFIG" get-env '{}'

# No server process from this prefix may outlive exthost. Any found are
# reported and then killed (they are this run's, matched by its unique prefix).
sleep 0.5
left=$(pgrep -f -- "$PREFIX/" || true)
if [[ -z $left ]]; then
    record PASS "stdio: no server process left after exthost exits"
else
    record FAIL "stdio: no server process left after exthost exits"
    for pid in $left; do
        printf '    left: %s\n' "$(ps -o pid=,args= -p "$pid" || true)"
        kill -KILL "$pid" 2>/dev/null || true
    done
fi

# 4. Streamable HTTP.
if command -v unshare >/dev/null && command -v ip >/dev/null &&
    unshare -rn true 2>/dev/null; then
    log "HTTP phase in a private network namespace (unshare -rn)"
    if ! unshare -rn bash "$SCRIPT" __http_phase; then
        record FAIL "http: the network-namespace phase ran to its end"
    fi
else
    log "WARNING: no unshare -rn here: server-everything will bind *:PORT (all interfaces)"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    http_phase "$port"
fi

# Summary.
passed=$(grep -c '^PASS' "$RESULTS" || true)
failed=$(grep -c '^FAIL' "$RESULTS" || true)
echo
echo "interop summary:"
sed 's/^/  /' "$RESULTS"
echo "$passed passed, $failed failed"
if ((failed > 0)); then
    [[ ${INTEROP_KEEP:-} == 1 ]] || log "run again with INTEROP_KEEP=1 to keep the logs"
    exit 1
fi
