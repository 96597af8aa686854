#!/usr/bin/env bash
# scripts/lib/setup.sh: the shared bootstrap behind scripts/test, scripts/demo and .ci/run.
#
# Use from another bash script:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"
#     trap stop_private_pg EXIT        # stops a private cluster if setup_env started one
#     trap 'exit 130' INT
#     trap 'exit 143' TERM
#     setup_env
#
# Run directly (scripts/lib/setup.sh), it does the same setup, reports, and exits (stopping a
# private cluster it started): handy to check a machine.
#
# setup_env, run from the repo root (it cd's there):
#   1. finds a Python >= 3.11: python3.13, python3.12, python3.11, python3, in that order;
#   2. creates .venv if missing (or if its Python is broken), upgrades pip once, and runs
#      `pip install -e '.[dev]'` only when pyproject.toml changed since the last successful
#      install (stamp file: .venv/.installed-<sha256 of pyproject.toml>);
#   3. exports DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/postgres;
#   4. makes sure PostgreSQL answers at DATABASE_URL (probe: asyncpg connect + SELECT 1, 3 s):
#      a) starts the clusters listed by pg_lsclusters (Debian/Ubuntu) and waits up to 30 s;
#      b) else starts a private throwaway cluster in .pg/data (trust auth, listening on
#         127.0.0.1 only, port $LEDGER_SIDECAR_PG_PORT, unix socket in .pg/) and exports
#         DATABASE_URL=postgresql://postgres@127.0.0.1:<port>/postgres;
#         only done when DATABASE_URL was not set by the caller or already is that URL:
#         an explicit DATABASE_URL that does not answer is reported, never replaced;
#      c) else, on CI (CI=true) as root with apt-get: apt-get install postgresql, then a), b);
#      d) else prints what to do and exits 1.
#
# Environment:
#   DATABASE_URL                 the PostgreSQL to use (see above).
#   LEDGER_SIDECAR_PG_PORT       port of the private cluster (default 54329).
#   LEDGER_SIDECAR_NO_SYSTEM_PG  =1 skips step a): system clusters are never started. With
#                                DATABASE_URL unset (or set to the private URL) and unreachable,
#                                this goes straight to the private cluster of step b).
#   CI                           =true allows step c).
#
# After setup_env, LEDGER_SIDECAR_PG_STARTED=1 when this shell started a private cluster;
# stop_private_pg stops it (only that one, and only once), which is why callers trap it on
# EXIT instead of exec'ing into a long-running command.
#
# Two runs at once in the same checkout would share .pg/: a second one finds the first one's
# cluster reachable and uses it, but the first one stops it on exit.

set -euo pipefail

_LS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
_LS_DEFAULT_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres"
LEDGER_SIDECAR_PG_STARTED=0
_LS_PG_CTL=""
_LS_INITDB=""
_LS_PG_DATA=""
_LS_PG_TMPDIRS=()
_LS_PG_LAST_ERROR=""
_LS_URL_FROM_CALLER=0

_ls_say() { printf '==> %s\n' "$*" >&2; }
_ls_warn() { printf '==> warning: %s\n' "$*" >&2; }
_ls_err() { printf '==> error: %s\n' "$*" >&2; }

# Hide a password in a URL before printing it.
_ls_redact() { printf '%s' "$1" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#'; }

_ls_is_root() { [[ $(id -u) -eq 0 ]]; }

# --- Python and the virtualenv ----------------------------------------------------------------

_LS_PY_VERSION_OK='import sys; raise SystemExit(0 if sys.version_info >= (3, 11) else 1)'

_ls_find_python() {
    local cand path
    for cand in python3.13 python3.12 python3.11 python3; do
        path="$(command -v "$cand" 2>/dev/null)" || continue
        # pyenv shims exist for versions that are not active and fail when run: running the
        # candidate is the only real check.
        "$path" -c "$_LS_PY_VERSION_OK" >/dev/null 2>&1 || continue
        if "$path" -c 'import venv, ensurepip' >/dev/null 2>&1; then
            printf '%s\n' "$path"
            return 0
        fi
        _ls_warn "$cand is new enough but cannot create virtualenvs (Debian/Ubuntu: apt-get install python3-venv)"
    done
    return 1
}

# pip, quiet; its output (build-backend warnings and all) goes to .venv/pip.log and is shown
# only when pip fails, which exits.
_ls_pip() {
    if ! .venv/bin/python -m pip --quiet --no-input --disable-pip-version-check "$@" >.venv/pip.log 2>&1; then
        _ls_err "pip $* failed:"
        tail -n 60 .venv/pip.log >&2
        printf '    (full output: %s/.venv/pip.log)\n' "$_LS_ROOT" >&2
        exit 1
    fi
}

_ls_setup_venv() {
    if [[ -e .venv ]] && ! .venv/bin/python -c "$_LS_PY_VERSION_OK" >/dev/null 2>&1; then
        _ls_warn ".venv has no working Python >= 3.11; recreating it"
        rm -rf .venv
    fi

    if [[ ! -e .venv ]]; then
        local py
        if ! py="$(_ls_find_python)"; then
            _ls_err "no Python >= 3.11 found (tried python3.13, python3.12, python3.11, python3)."
            cat >&2 <<'EOF'
    Install one, then run this again:
      Debian 12 / Ubuntu 24.04:  sudo apt-get install python3 python3-venv   (3.11+)
      macOS (Homebrew):          brew install python@3.12
      any OS (pyenv):            pyenv install 3.12 && pyenv local 3.12
      or python.org:             https://www.python.org/downloads/
EOF
            exit 1
        fi
        _ls_say "creating .venv with $py ($("$py" -c 'import platform; print(platform.python_version())'))"
        "$py" -m venv .venv
    fi

    if [[ ! -e .venv/.pip-upgraded ]]; then
        _ls_say "upgrading pip in .venv"
        _ls_pip install --upgrade pip
        touch .venv/.pip-upgraded
    fi

    local sum stamp
    sum="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
    stamp=".venv/.installed-$sum"
    if [[ -e $stamp ]]; then
        _ls_say "dependencies up to date (pyproject.toml unchanged)"
        return 0
    fi
    local why="first install"
    if compgen -G '.venv/.installed-*' >/dev/null; then why="pyproject.toml changed"; fi
    _ls_say "installing ledger-sidecar with dev extras into .venv ($why)"
    _ls_pip install -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
}

# --- PostgreSQL -------------------------------------------------------------------------------

_LS_PG_PROBE='
import asyncio, os, sys

async def probe() -> None:
    import asyncpg
    conn = await asyncpg.connect(os.environ["DATABASE_URL"], timeout=3)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()

try:
    asyncio.run(asyncio.wait_for(probe(), 4))
except Exception as exc:
    msg = str(exc) or "no answer within 4 s"
    print(f"{type(exc).__name__}: {msg}")
    sys.exit(1)
'

# pg_reachable: exit 0 when PostgreSQL answers at $DATABASE_URL (3 s connect timeout).
# On failure the driver's message is kept in _LS_PG_LAST_ERROR.
pg_reachable() {
    local out
    if out="$(.venv/bin/python -c "$_LS_PG_PROBE" 2>&1)"; then
        return 0
    fi
    _LS_PG_LAST_ERROR="$(printf '%s' "$out" | tail -n 1)"
    return 1
}

_ls_private_url() {
    printf 'postgresql://postgres@127.0.0.1:%s/postgres' "${LEDGER_SIDECAR_PG_PORT:-54329}"
}

# May step b) replace DATABASE_URL? Only if the caller did not choose one, or chose ours.
_ls_url_is_ours() {
    [[ $_LS_URL_FROM_CALLER -eq 0 || $DATABASE_URL == "$(_ls_private_url)" ]]
}

# a) start the system clusters that pg_lsclusters lists as down, then wait for DATABASE_URL.
_ls_try_system_clusters() {
    if [[ ${LEDGER_SIDECAR_NO_SYSTEM_PG:-0} == 1 ]]; then
        _ls_say "LEDGER_SIDECAR_NO_SYSTEM_PG=1: leaving system PostgreSQL clusters alone"
        return 1
    fi
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    local listing
    listing="$(pg_lsclusters --no-header 2>/dev/null)" || return 1
    [[ -n $listing ]] || return 1

    local ver name port status started=0
    while read -r ver name port status _; do
        [[ -n ${ver:-} ]] || continue
        [[ $status == online* ]] && continue
        _ls_say "starting PostgreSQL cluster $ver/$name (port $port)"
        if pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start </dev/null; then
            started=1
        else
            _ls_warn "could not start cluster $ver/$name (ignored)"
        fi
    done <<<"$listing"
    [[ $started -eq 1 ]] || return 1

    local i
    for ((i = 0; i < 30; i++)); do
        pg_reachable && return 0
        # Every cluster is up yet DATABASE_URL still fails (other port, password auth...):
        # waiting longer will not help.
        if ((i >= 2)) && ! pg_lsclusters --no-header 2>/dev/null | awk '$4 !~ /^online/ { bad = 1 } END { exit !bad }'; then
            return 1
        fi
        sleep 1
    done
    return 1
}

# Sets _LS_INITDB and _LS_PG_CTL: from PATH, else the newest /usr/lib/postgresql/*/bin.
_ls_find_pg_binaries() {
    local initdb pg_ctl dir
    if initdb="$(command -v initdb 2>/dev/null)" && pg_ctl="$(command -v pg_ctl 2>/dev/null)"; then
        _LS_INITDB="$initdb"
        _LS_PG_CTL="$pg_ctl"
        return 0
    fi
    while read -r dir; do
        if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
            _LS_INITDB="$dir/initdb"
            _LS_PG_CTL="$dir/pg_ctl"
            return 0
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
    return 1
}

# Run a PostgreSQL server command as the cluster owner: initdb and postgres refuse root.
_ls_as_pg_owner() {
    if _ls_is_root; then
        # from /, so that the postgres user never needs access to the caller's directory
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# mktemp -d, owned by the cluster owner, removed by stop_private_pg.
_ls_pg_tmpdir() {
    local dir
    dir="$(mktemp -d "${TMPDIR:-/tmp}/ledger-sidecar-pg.XXXXXX")" || return 1
    if _ls_is_root; then chown postgres: "$dir" || return 1; fi
    printf '%s\n' "$dir"
}

# b) initdb + start a throwaway cluster; exports DATABASE_URL pointing at it.
_ls_start_private_pg() {
    # Runs inside `if`/`&&`, where set -e is off: every step checks for itself.
    local port="${LEDGER_SIDECAR_PG_PORT:-54329}"
    local base="$_LS_ROOT/.pg"
    mkdir -p "$base" || return 1

    if _ls_is_root; then
        if ! id -u postgres >/dev/null 2>&1; then
            _ls_say "creating system user postgres (initdb refuses to run as root)"
            useradd --system --user-group --no-create-home postgres || {
                _ls_err "useradd postgres failed"
                return 1
            }
        fi
        chown -R postgres: "$base" || return 1
        if ! (cd / && runuser -u postgres -- test -w "$base" -a -x "$base"); then
            # e.g. a checkout under /root (mode 700): the postgres user cannot reach .pg/
            base="$(_ls_pg_tmpdir)" || return 1
            _LS_PG_TMPDIRS+=("$base")
            _ls_say "the postgres user cannot reach $_LS_ROOT/.pg; using $base instead"
        fi
    fi

    local data="$base/data" sockdir="$base" log="$base/log"
    # unix socket paths are limited to ~107 bytes
    if ((${#sockdir} > 90)); then
        sockdir="$(_ls_pg_tmpdir)" || return 1
        _LS_PG_TMPDIRS+=("$sockdir")
    fi

    # A cluster left running by an earlier run that was killed: stop it, it is throwaway.
    if [[ -f $data/postmaster.pid ]] && _ls_as_pg_owner "$_LS_PG_CTL" -D "$data" status >/dev/null 2>&1; then
        _ls_say "stopping a private PostgreSQL left running in $data"
        _ls_as_pg_owner "$_LS_PG_CTL" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$data" || return 1

    _ls_say "creating a private PostgreSQL cluster in $data ($("$_LS_PG_CTL" --version))"
    if ! _ls_as_pg_owner "$_LS_INITDB" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C --no-sync >"$base/initdb.log" 2>&1; then
        _ls_err "initdb failed:"
        tail -n 20 "$base/initdb.log" >&2
        return 1
    fi
    cat >>"$data/postgresql.conf" <<EOF || return 1

# ledger-sidecar private test cluster (scripts/lib/setup.sh)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

    : >"$log" || return 1
    if _ls_is_root; then chown postgres: "$log" || return 1; fi
    _ls_say "starting it on 127.0.0.1:$port (log: $log)"
    if ! _ls_as_pg_owner "$_LS_PG_CTL" -D "$data" -l "$log" -w -t 30 start >/dev/null; then
        _ls_err "the private PostgreSQL did not start (port $port taken? set LEDGER_SIDECAR_PG_PORT). Log:"
        tail -n 20 "$log" >&2
        # it may be half up
        _ls_as_pg_owner "$_LS_PG_CTL" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
        return 1
    fi
    _LS_PG_DATA="$data"
    LEDGER_SIDECAR_PG_STARTED=1
    DATABASE_URL="$(_ls_private_url)"
    export DATABASE_URL

    local i
    for ((i = 0; i < 10; i++)); do
        pg_reachable && return 0
        sleep 1
    done
    _ls_err "the private PostgreSQL started but does not answer at $DATABASE_URL: $_LS_PG_LAST_ERROR"
    return 1
}

# stop_private_pg: stop the private cluster if (and only if) this shell started it. Idempotent;
# meant for `trap stop_private_pg EXIT`. Leaves .pg/log for a post-mortem.
stop_private_pg() {
    if [[ ${LEDGER_SIDECAR_PG_STARTED:-0} == 1 ]]; then
        LEDGER_SIDECAR_PG_STARTED=0
        _ls_say "stopping the private PostgreSQL"
        _ls_as_pg_owner "$_LS_PG_CTL" -D "$_LS_PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            _ls_warn "could not stop the private PostgreSQL in $_LS_PG_DATA"
    fi
    local dir
    for dir in "${_LS_PG_TMPDIRS[@]}"; do
        rm -rf "$dir"
    done
    _LS_PG_TMPDIRS=()
    return 0
}

_ls_can_apt_install() {
    [[ ${CI:-} == true ]] && _ls_is_root && command -v apt-get >/dev/null 2>&1
}

# a) then b): true when DATABASE_URL answers afterwards.
_ls_try_local_servers() {
    if _ls_try_system_clusters; then return 0; fi
    if _ls_url_is_ours && _ls_find_pg_binaries; then
        _ls_start_private_pg && return 0
        exit 1 # _ls_start_private_pg said why
    fi
    return 1
}

_ls_ensure_postgres() {
    local shown
    shown="$(_ls_redact "$DATABASE_URL")"
    if pg_reachable; then
        _ls_say "PostgreSQL is reachable at $shown"
        return 0
    fi
    _ls_say "PostgreSQL is not reachable at $shown ($_LS_PG_LAST_ERROR)"

    if _ls_try_local_servers; then
        _ls_say "PostgreSQL is reachable at $(_ls_redact "$DATABASE_URL")"
        return 0
    fi

    if ! _ls_find_pg_binaries && _ls_can_apt_install; then
        _ls_say "CI=true: installing PostgreSQL with apt-get"
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; then
            if _ls_try_local_servers; then
                _ls_say "PostgreSQL is reachable at $(_ls_redact "$DATABASE_URL")"
                return 0
            fi
        else
            _ls_warn "apt-get install postgresql failed"
        fi
    fi

    _ls_err "PostgreSQL is not reachable at $(_ls_redact "$DATABASE_URL")"
    printf '    last error: %s\n' "$_LS_PG_LAST_ERROR" >&2
    if ! _ls_url_is_ours && _ls_find_pg_binaries; then
        cat >&2 <<'EOF'
    DATABASE_URL was set by you, so no private cluster was started. Either start that
    server, or unset DATABASE_URL to let this script start a throwaway one in .pg/.
EOF
    else
        cat >&2 <<'EOF'
    Do one of:
      - install PostgreSQL (the server), then run this again; it starts a cluster by itself:
          Debian/Ubuntu:     sudo apt-get install postgresql
          macOS (Homebrew):  brew install postgresql@16
      - or set DATABASE_URL to a server that is running, e.g.
          DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME scripts/test
EOF
    fi
    exit 1
}

# promtool and amtool (Prometheus 2.42 and Alertmanager 0.25 on Debian 12) check the metrics,
# the alert rules and the Alertmanager configuration in the test suite; on CI as root they are
# installed with apt-get, elsewhere their absence is said once and those tests are skipped.
# Grafana's LogQL grammar for the dashboard tests (tests/logql: npm, pinned by its lock file);
# installed again only when the lock file is newer than what was installed.
_ls_ensure_logql_parser() {
    local dir="$_LS_ROOT/tests/logql"
    local stamp="$dir/node_modules/.package-lock.json"
    if [[ -f $stamp && ! $dir/package-lock.json -nt $stamp ]]; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        _ls_warn "npm not found: the LogQL parsing test is skipped (install Node.js and npm)"
        return 0
    fi
    _ls_say "installing the LogQL parser for the dashboard tests (npm ci in tests/logql)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null ||
        _ls_warn "npm ci in tests/logql failed: the LogQL parsing test is skipped"
}

ensure_test_tools() {
    _ls_ensure_logql_parser
    local missing=()
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if _ls_can_apt_install; then
        _ls_say "CI=true: installing ${missing[*]} (promtool, amtool) with apt-get"
        if apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${missing[@]}" >/dev/null; then
            return 0
        fi
        _ls_warn "apt-get install ${missing[*]} failed: their tests will be skipped"
        return 0
    fi
    _ls_warn "${missing[*]} not installed: the promtool/amtool tests are skipped (Debian: apt-get install ${missing[*]})"
}

# --- entry point ------------------------------------------------------------------------------

setup_env() {
    cd "$_LS_ROOT"
    _ls_setup_venv
    if [[ -n ${DATABASE_URL:-} ]]; then
        _LS_URL_FROM_CALLER=1
    else
        _LS_URL_FROM_CALLER=0
        DATABASE_URL="$_LS_DEFAULT_DATABASE_URL"
    fi
    export DATABASE_URL
    _ls_ensure_postgres
}

# Executed rather than sourced: set up, report, exit.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    trap stop_private_pg EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    setup_env
    _ls_say "ready: DATABASE_URL=$(_ls_redact "$DATABASE_URL")"
fi
