#!/usr/bin/env bash
# Interop for `exthost mcp` (issue 15): exthost serving its hosted tools as one
# MCP server, driven by MCP clients nobody on the team wrote, installed from
# the package registries into a fresh temp prefix.
#
#   bash scripts/interop-serve.sh
#   EXTHOST=target/release/exthost EXAMPLES=target/release/examples \
#     bash scripts/interop-serve.sh
#   INTEROP_SKIP_INSPECTOR=1 bash scripts/interop-serve.sh   # no npm step
#
# Needs: built binaries (default target/debug/exthost and
# target/debug/examples/{mock_extension,mcp_server}: `cargo build --bin exthost
# --examples`; this script never runs cargo), python3 with venv, node + npx,
# curl, and the PyPI and npm registries. Not run in CI. The binaries are copied
# into a `mktemp -d` prefix (so a rebuild during the run does not matter and so
# that leftover processes can be found by path); everything is removed on exit
# (INTEROP_KEEP=1 keeps the prefix, logs included). Only pids this script
# started are ever killed.
#
# Checks (each prints PASS/FAIL; a summary at the end; exit 1 on any FAIL):
#   1. stdio, official Python SDK (`pip install mcp` into a venv):
#      mcp.ClientSession over stdio_client(StdioServerParameters(command=
#      exthost, args=["mcp","--config",CFG])): initialize; list_tools has
#      n_echo (native mock_extension), m_echo and m_image (mcp_server, prefix
#      m_); n_echo and m_echo (with structuredContent) answer; m_image has an
#      image block with mimeType image/png; m_fail gives isError true; an
#      unknown tool is an error (JSON-RPC invalid params); m_sleep with a
#      progress_callback gets the upstream's "sleeping N ms" progress message;
#      an m_sleep abandoned after 1 s (SDK 2.x sends notifications/cancelled)
#      is recorded as cancelled by mcp_server ($MCP_CANCEL_LOG), and the
#      session still answers afterwards.
#      Then the client closes stdin: exthost must exit 0 and no
#      mock_extension/mcp_server process from the prefix may be left (ps).
#   2. Streamable HTTP, same SDK (streamable_http_client in SDK 2.x,
#      streamablehttp_client in 1.x) with `Authorization: Bearer <token>`,
#      exthost started with `--listen 127.0.0.1:0 --token-file F` (the URL is
#      read from its "exthost: serving MCP at ..." stderr line); the same
#      checks; curl without the token and with a wrong one -> 401; SIGTERM ->
#      exit 0 and no process left.
#   3. MCP Inspector CLI (npm `@modelcontextprotocol/inspector`, installed
#      with `npm install --prefix`) over stdio, exthost given as an mcpServers
#      entry of the inspector's config file (the inspector takes `--config`
#      for itself): `mcp-inspector --cli --config inspector.json --server
#      exthost --method tools/list` lists n_echo and m_echo; `--method
#      tools/call --tool-name m_echo --tool-arg text=inspected` echoes; no
#      process left.
#
# Verified 2026-11-29 against the debug build of 84f3725 plus the uncommitted
# MCP-serve work in the tree then: 40 passed, 0 failed (about 50 s), with
#   - mcp 2.3.0 from PyPI (with mcp-types 2.3.0, httpx2 2.16.2, anyio 4.16.0)
#     on Python 3.11.7; it negotiated protocol 2025-11-25 with exthost;
#   - @modelcontextprotocol/inspector 0.15.0 from npm on Node 20.20.2.
# The client is written for both SDK lines (1.x camelCase fields and
# streamablehttp_client(headers=); 2.x snake_case fields and
# streamable_http_client(http_client=)), but only 2.3.0 has been run.
# Negative check: with EXTHOST pointing at a stub that exits 1 at once, every
# client check FAILs and the script exits 1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC_EXTHOST=${EXTHOST:-$ROOT/target/debug/exthost}
SRC_EXAMPLES=${EXAMPLES:-$ROOT/target/debug/examples}
[[ $SRC_EXTHOST = /* ]] || SRC_EXTHOST=$PWD/$SRC_EXTHOST
[[ $SRC_EXAMPLES = /* ]] || SRC_EXAMPLES=$PWD/$SRC_EXAMPLES

PASSED=0
FAILED=0
pass() { echo "PASS $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }

PREFIX=$(mktemp -d "${TMPDIR:-/tmp}/exthost-interop-serve.XXXXXX")
STARTED_PIDS=()
cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    if [[ ${INTEROP_KEEP:-0} = 1 ]]; then
        echo "kept $PREFIX"
    else
        rm -rf "$PREFIX"
    fi
}
trap cleanup EXIT

for f in "$SRC_EXTHOST" "$SRC_EXAMPLES/mock_extension" "$SRC_EXAMPLES/mcp_server"; do
    [[ -x $f ]] || { echo "missing $f (build with: cargo build --bin exthost --examples)" >&2; exit 2; }
done
mkdir -p "$PREFIX/bin"
cp "$SRC_EXTHOST" "$SRC_EXAMPLES/mock_extension" "$SRC_EXAMPLES/mcp_server" "$PREFIX/bin/"
EXTHOST=$PREFIX/bin/exthost

CFG=$PREFIX/exthost.toml
cat >"$CFG" <<EOF
[services.native]
command = "$PREFIX/bin/mock_extension"
env = { MOCK_PREFIX = "n_" }

[services.up]
kind = "mcp"
command = "$PREFIX/bin/mcp_server"
prefix = "m_"
env = { MCP_CANCEL_LOG = "$PREFIX/cancelled.log" }
EOF

# Processes of the prefix's extension binaries still alive (none expected).
leftovers() {
    ps -eo pid=,args= | grep -F -e "$PREFIX/bin/exthost" -e "$PREFIX/bin/mock_extension" -e "$PREFIX/bin/mcp_server" \
        | grep -v -F "grep" || true
}
check_no_leftovers() { # $1 = label
    local left="" i
    for i in $(seq 1 30); do # give a just-stopped child up to 3 s to be reaped
        left=$(leftovers)
        [[ -z $left ]] && break
        sleep 0.1
    done
    if [[ -z $left ]]; then pass "$1: no exthost/mock_extension/mcp_server process left"; else fail "$1: processes left: $left"; fi
}

# ---------------------------------------------------------------- installs
echo "== installing the Python SDK (pip install mcp) into $PREFIX/venv"
python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check mcp >"$PREFIX/pip.log" 2>&1 \
    || { cat "$PREFIX/pip.log" >&2; echo "pip install mcp failed" >&2; exit 2; }
PY=$PREFIX/venv/bin/python
SDK_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("mcp"))')
echo "mcp (Python SDK) $SDK_VERSION, $("$PY" --version)"

# ---------------------------------------------------------------- the client
cat >"$PREFIX/client.py" <<'PYEOF'
"""Drives `exthost mcp` with the official MCP Python SDK; prints PASS/FAIL lines."""
import importlib.metadata
import inspect
import os
import sys

import anyio
import mcp
from mcp import ClientSession

MODE = sys.argv[1]  # "stdio" or "http"
LABEL = f"sdk-{MODE}"
failures = 0


def report(ok, name, detail=""):
    global failures
    if ok:
        print(f"PASS {LABEL}: {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {LABEL}: {name}: {detail}", flush=True)


def field(obj, camel, snake):
    """A model field: camelCase in SDK 1.x, snake_case in 2.x."""
    for name in (snake, camel):
        if hasattr(obj, name):
            return getattr(obj, name)
    raise AttributeError(f"{type(obj).__name__} has neither {camel} nor {snake}")


def is_error(result):
    return field(result, "isError", "is_error")


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


def dump(result):
    try:
        return result.model_dump_json(by_alias=True, exclude_none=True)[:600]
    except Exception:  # noqa: BLE001
        return repr(result)[:600]


async def checks(session):
    init = await session.initialize()
    info = field(init, "serverInfo", "server_info")
    version = field(init, "protocolVersion", "protocol_version")
    report(bool(info.name), "initialize", repr(init))
    print(f"  server {info.name} {info.version}, protocol {version}", flush=True)

    listed = await session.list_tools()
    names = [t.name for t in listed.tools]
    print(f"  tools: {' '.join(names)}", flush=True)
    want = {"n_echo", "m_echo", "m_image", "m_fail", "m_sleep"}
    report(want <= set(names), "tools/list has n_echo, m_echo, m_image, m_fail, m_sleep", names)
    schemas = [field(t, "inputSchema", "input_schema") for t in listed.tools]
    schemas_ok = bool(schemas) and all(isinstance(s, dict) and s.get("type") == "object" for s in schemas)
    report(schemas_ok, "every tool has an object input schema")

    r = await session.call_tool("n_echo", {"text": "hi native"})
    report(not is_error(r) and any("hi native" in t for t in texts(r)), "n_echo (native) echoes", dump(r))

    r = await session.call_tool("m_echo", {"text": "hi mcp", "structured": True})
    report(not is_error(r) and texts(r) == ["hi mcp"], "m_echo (MCP upstream) echoes", dump(r))
    report((field(r, "structuredContent", "structured_content") or {}).get("text") == "hi mcp", "m_echo structuredContent kept", dump(r))

    r = await session.call_tool("m_image", {})
    images = [c for c in r.content if getattr(c, "type", None) == "image"]
    report(not is_error(r) and any(field(c, "mimeType", "mime_type") == "image/png" and c.data for c in images),
           "m_image has an image/png block", dump(r))
    kinds = [c.type for c in r.content]
    report(kinds == ["image", "audio", "text", "resource_link", "resource"],
           "m_image keeps all five block kinds in order", kinds)

    r = await session.call_tool("m_fail", {"message": "boom"})
    report(is_error(r) is True and any("boom" in t for t in texts(r)), "m_fail -> isError true", dump(r))

    try:
        r = await session.call_tool("no_such_tool", {})
    except Exception as e:  # noqa: BLE001  (McpError in SDK 1.x, MCPError in 2.x)
        err = getattr(e, "error", None)
        code = getattr(err, "code", None) if err is not None else getattr(e, "code", None)
        report(code == -32602, "unknown tool -> invalid params error (-32602)", f"{type(e).__name__}: {e} code={code}")
    else:
        report(False, "unknown tool -> error", "answered " + dump(r))

    if "progress_callback" in inspect.signature(session.call_tool).parameters:
        seen = []

        async def on_progress(progress, total, message):
            seen.append((progress, total, message))

        r = await session.call_tool("m_sleep", {"ms": 300}, progress_callback=on_progress)
        report(texts(r) == ["slept 300"], "m_sleep answers", dump(r))
        report(any(m == "sleeping 300 ms" for (_, _, m) in seen), "m_sleep progress message reaches the client", seen)
    else:
        print(f"SKIP {LABEL}: call_tool has no progress_callback in this SDK version", flush=True)

    # Cancellation: SDK 2.x sends notifications/cancelled when the caller
    # abandons a request; exthost must pass it on to the MCP upstream, which
    # records it in $MCP_CANCEL_LOG. (SDK 1.x sends nothing; skipped there.)
    cancel_log = os.environ.get("CANCEL_LOG")
    if int(importlib.metadata.version("mcp").split(".")[0]) >= 2 and cancel_log:
        ms = 9001 if MODE == "stdio" else 9002
        with anyio.move_on_after(1.0) as scope:
            await session.call_tool("m_sleep", {"ms": ms})
        report(scope.cancelled_caught, "m_sleep abandoned after 1 s", "it answered")
        line = f"cancelled sleep {ms}"
        found = False
        for _ in range(50):
            try:
                with open(cancel_log) as f:
                    found = line in f.read().splitlines()
            except FileNotFoundError:
                pass
            if found:
                break
            await anyio.sleep(0.1)
        report(found, "client cancellation reaches the MCP upstream", f"no '{line}' in {cancel_log}")
        r = await session.call_tool("m_echo", {"text": "after cancel"})
        report(texts(r) == ["after cancel"], "session usable after a cancellation", dump(r))
    else:
        print(f"SKIP {LABEL}: cancellation (SDK 1.x does not send notifications/cancelled)", flush=True)


async def main():
    if MODE == "stdio":
        from mcp import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await checks(session)
    else:
        url, token = sys.argv[2], sys.argv[3]
        headers = {"Authorization": f"Bearer {token}"}
        import mcp.client.streamable_http as sh

        if hasattr(sh, "streamablehttp_client"):  # SDK 1.x
            async with sh.streamablehttp_client(url, headers=headers) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await checks(session)
        else:  # SDK 2.x: headers go on the HTTP client
            from mcp.shared._httpx_utils import create_mcp_http_client

            async with create_mcp_http_client(headers=headers) as http:
                async with sh.streamable_http_client(url, http_client=http) as (read, write, *_):
                    async with ClientSession(read, write) as session:
                        await checks(session)


def innermost(e):
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


try:
    anyio.run(main)
except Exception as e:  # noqa: BLE001
    import traceback

    traceback.print_exception(e, file=sys.stderr)
    inner = innermost(e)
    report(False, "session", f"{type(inner).__name__}: {inner}")
sys.exit(1 if failures else 0)
PYEOF

# Runs the client and folds its PASS/FAIL lines into the totals.
run_client() { # args: client args...
    local out rc=0
    out=$(CANCEL_LOG=$PREFIX/cancelled.log timeout 120 "$PY" "$PREFIX/client.py" "$@" 2>"$PREFIX/client-$1.err") || rc=$?
    echo "$out"
    PASSED=$((PASSED + $(grep -c '^PASS' <<<"$out" || true)))
    FAILED=$((FAILED + $(grep -c '^FAIL' <<<"$out" || true)))
    if [[ $rc -ne 0 ]] && ! grep -q '^FAIL' <<<"$out"; then
        fail "sdk-$1: client exited $rc (stderr: $(tail -5 "$PREFIX/client-$1.err"))"
    fi
}

# ---------------------------------------------------------------- 1. stdio
echo "== 1. stdio: Python SDK stdio_client -> exthost mcp --config CFG"
# A wrapper records exthost's exit status once the SDK closes its stdin.
cat >"$PREFIX/exthost-wrap.sh" <<EOF
#!/usr/bin/env bash
"$EXTHOST" "\$@" 2>>"$PREFIX/exthost-stdio.err"
echo \$? >"$PREFIX/exthost-stdio.rc"
EOF
chmod +x "$PREFIX/exthost-wrap.sh"
run_client stdio "$PREFIX/exthost-wrap.sh" mcp --config "$CFG"
for i in $(seq 1 50); do [[ -s $PREFIX/exthost-stdio.rc ]] && break; sleep 0.1; done
rc=$(cat "$PREFIX/exthost-stdio.rc" 2>/dev/null || echo "none (killed by the SDK after its grace period?)")
if [[ $rc = 0 ]]; then pass "stdio: exthost exited 0 at end of stdin"; else fail "stdio: exthost exit status $rc (stderr tail: $(tail -5 "$PREFIX/exthost-stdio.err"))"; fi
check_no_leftovers "stdio"

# ---------------------------------------------------------------- 2. HTTP
echo "== 2. Streamable HTTP: Python SDK streamable HTTP client -> exthost mcp --listen 127.0.0.1:0 --token-file"
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$TOKEN" >"$PREFIX/token"
chmod 600 "$PREFIX/token"
"$EXTHOST" mcp --config "$CFG" --listen 127.0.0.1:0 --token-file "$PREFIX/token" \
    </dev/null >"$PREFIX/exthost-http.out" 2>"$PREFIX/exthost-http.err" &
HTTP_PID=$!
STARTED_PIDS+=("$HTTP_PID")
URL=""
for i in $(seq 1 100); do
    URL=$(sed -n 's/.*exthost: serving MCP at \(http:[^ ]*\).*/\1/p' "$PREFIX/exthost-http.err" | head -1)
    [[ -n $URL ]] && break
    kill -0 "$HTTP_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $URL ]]; then
    fail "http: exthost never printed 'serving MCP at' (stderr: $(tail -5 "$PREFIX/exthost-http.err"))"
else
    pass "http: exthost serving at $URL"
    run_client http "$URL" "$TOKEN"

    INIT='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL" \
        -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -d "$INIT" || true)
    if [[ $code = 401 ]]; then pass "http: no token -> 401"; else fail "http: no token -> HTTP $code, expected 401"; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL" -H "Authorization: Bearer wrong$TOKEN" \
        -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -d "$INIT" || true)
    if [[ $code = 401 ]]; then pass "http: wrong token -> 401"; else fail "http: wrong token -> HTTP $code, expected 401"; fi
fi
if kill -0 "$HTTP_PID" 2>/dev/null; then
    kill -TERM "$HTTP_PID"
    rc=0
    for i in $(seq 1 100); do kill -0 "$HTTP_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$HTTP_PID" 2>/dev/null; then
        fail "http: exthost still running 10 s after SIGTERM"
        kill -KILL "$HTTP_PID" 2>/dev/null || true
    fi
    wait "$HTTP_PID" || rc=$?
    if [[ $rc = 0 ]]; then pass "http: exthost exited 0 on SIGTERM"; else fail "http: exthost exit status $rc after SIGTERM (stderr tail: $(tail -5 "$PREFIX/exthost-http.err"))"; fi
else
    rc=0; wait "$HTTP_PID" || rc=$?
    fail "http: exthost exited early with status $rc (stderr tail: $(tail -5 "$PREFIX/exthost-http.err"))"
fi
check_no_leftovers "http"

# ---------------------------------------------------------------- 3. Inspector
if [[ ${INTEROP_SKIP_INSPECTOR:-0} = 1 ]]; then
    echo "== 3. MCP Inspector CLI: skipped (INTEROP_SKIP_INSPECTOR=1)"
elif ! command -v npm >/dev/null; then
    fail "inspector: npm not found"
else
    echo "== 3. MCP Inspector CLI (npm @modelcontextprotocol/inspector) over stdio"
    if npm install --prefix "$PREFIX/npm" --no-audit --no-fund --loglevel=error \
        @modelcontextprotocol/inspector >"$PREFIX/npm.log" 2>&1; then
        INSPECTOR_VERSION=$(node -p "require('$PREFIX/npm/node_modules/@modelcontextprotocol/inspector/package.json').version")
        echo "@modelcontextprotocol/inspector $INSPECTOR_VERSION, node $(node --version)"
        INSPECTOR=$PREFIX/npm/node_modules/.bin/mcp-inspector
        # The inspector reads `--config` itself, so exthost goes in as an
        # `mcpServers` entry of the inspector's own config file: the same
        # entry a desktop client would use.
        printf '{"mcpServers": {"exthost": {"command": "%s", "args": ["mcp", "--config", "%s"]}}}\n' \
            "$EXTHOST" "$CFG" >"$PREFIX/inspector.json"
        out=$(cd "$PREFIX" && timeout 120 "$INSPECTOR" --cli --config "$PREFIX/inspector.json" --server exthost \
            --method tools/list 2>"$PREFIX/inspector-list.err") || true
        if grep -q '"name": *"n_echo"' <<<"$out" && grep -q '"name": *"m_echo"' <<<"$out"; then
            pass "inspector: tools/list has n_echo and m_echo"
        else
            fail "inspector: tools/list: $(head -c 400 <<<"$out") $(tail -5 "$PREFIX/inspector-list.err")"
        fi
        out=$(cd "$PREFIX" && timeout 120 "$INSPECTOR" --cli --config "$PREFIX/inspector.json" --server exthost \
            --method tools/call --tool-name m_echo --tool-arg text=inspected 2>"$PREFIX/inspector-call.err") || true
        if grep -q '"text": *"inspected"' <<<"$out" && grep -q '"isError": *false' <<<"$out"; then
            pass "inspector: tools/call m_echo echoes"
        else
            fail "inspector: tools/call m_echo: $(head -c 400 <<<"$out") $(tail -5 "$PREFIX/inspector-call.err")"
        fi
        check_no_leftovers "inspector"
    else
        fail "inspector: npm install failed: $(tail -5 "$PREFIX/npm.log")"
    fi
fi

echo
echo "interop-serve: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
