#!/usr/bin/env bash
# Container entry command for the fitguard server.
#
# 1. Refuses to start when the model repository is missing or a model file no longer matches the
#    SHA-256 recorded in the export manifest (a tampered or half-copied repository must never serve).
# 2. Execs tritonserver with the production flags: models fixed at start (no model-control API),
#    strict readiness, admin APIs (model repository, logging, trace, shared memory) behind a secret
#    header, optional TLS (or mutual TLS) on gRPC. Extra arguments are passed on to tritonserver.
# 3. Runs the watchdog beside it (`fitguard health --watch`): a canary image through the whole ensemble
#    every few seconds. Triton 2.51 keeps answering ready when a step's Python process died, so when a step
#    stays dead or hung for FITGUARD_FAIL_AFTER seconds (long enough for the readiness probe, which runs
#    the same check, to take the pod out of rotation) the watchdog stops the server and the container
#    exits 70, and the orchestrator restarts it. The watchdog serves /health and /metrics (canaries by
#    outcome) on HEALTH_PORT.
#
# Settings (environment):
#   MODEL_REPOSITORY            model repository (default /models)
#   HTTP_PORT GRPC_PORT METRICS_PORT   (default 8000 8001 8002)
#   BIND_ADDRESS                address for all three endpoints (default 0.0.0.0)
#   FITGUARD_ADMIN_KEY          value of the fitguard-admin-key header that unlocks the admin APIs;
#                               unset = a random key nobody knows, i.e. the APIs are closed
#   FITGUARD_VERIFY_MANIFEST    1 (default) verifies checksums before start; 0 skips (not advised)
#   GRPC_TLS_CERT GRPC_TLS_KEY  PEM server certificate and key: turns TLS on for gRPC
#   GRPC_TLS_CLIENT_CA          PEM CA that client certificates must chain to: mutual TLS
#   EXIT_TIMEOUT_SECS           seconds to drain in-flight requests on SIGTERM (default 30)
#   LOG_VERBOSE                 tritonserver --log-verbose level (default 0)
#   TRITONSERVER                server binary (default tritonserver, on PATH in the NGC image)
#   TRITON_BACKEND_DIRECTORY    --backend-directory, when not the binary's default
#   PYTHON                      interpreter that has the fitguard package (default python3)
#   HEALTH_PORT                 the watchdog's /health and /metrics (default 8003)
#   FITGUARD_WATCHDOG           1 (default) runs the watchdog; 0 execs tritonserver alone
#   FITGUARD_CANARY_INTERVAL    seconds between canaries (default 2)
#   FITGUARD_CANARY_TIMEOUT     seconds a canary may take before the step counts as hung (default 5)
#   FITGUARD_FAIL_AFTER         seconds a step may stay dead or hung before the container exits (default 15)
set -euo pipefail

log() { printf 'fitguard-entrypoint: %s\n' "$*" >&2; }

MODEL_REPOSITORY="${MODEL_REPOSITORY:-/models}"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
BIND_ADDRESS="${BIND_ADDRESS:-0.0.0.0}"
TRITONSERVER="${TRITONSERVER:-tritonserver}"
PYTHON="${PYTHON:-python3}"
ADMIN_HEADER="fitguard-admin-key"
# health, metadata, model-config, statistics and inference stay open: clients read the model's
# metadata and config on connect. Everything that changes or reveals server internals is restricted.
RESTRICTED_APIS="model-repository,logging,trace,shared-memory"

if [[ ! -d "${MODEL_REPOSITORY}" ]]; then
    log "model repository ${MODEL_REPOSITORY} does not exist: mount it at /models (read-only) or use the server-baked image"
    exit 64
fi

if [[ "${FITGUARD_VERIFY_MANIFEST:-1}" != "0" ]]; then
    if ! "${PYTHON}" - "${MODEL_REPOSITORY}" <<'PY'
import sys

from fitguard.manifest import RepositoryIntegrityError, verify_repository

try:
    manifest = verify_repository(sys.argv[1])
except RepositoryIntegrityError as exc:
    sys.exit(f"fitguard-entrypoint: {exc}")
print(f"fitguard-entrypoint: {len(manifest.get('files', {}))} model files match the manifest", file=sys.stderr)
PY
    then
        log "refusing to start: ${MODEL_REPOSITORY} does not match its manifest (see the lines above)"
        exit 65
    fi
else
    log "FITGUARD_VERIFY_MANIFEST=0: model files are NOT checked against the manifest"
fi

if [[ -z "${FITGUARD_ADMIN_KEY:-}" ]]; then
    # No key configured: lock the admin APIs with a random key that is never printed.
    FITGUARD_ADMIN_KEY="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
fi

args=(
    "--model-repository=${MODEL_REPOSITORY}"
    "--model-control-mode=none"
    "--strict-readiness=true"
    "--exit-on-error=true"
    "--exit-timeout-secs=${EXIT_TIMEOUT_SECS:-30}"
    "--log-verbose=${LOG_VERBOSE:-0}"
    "--http-address=${BIND_ADDRESS}"
    "--http-port=${HTTP_PORT}"
    "--grpc-address=${BIND_ADDRESS}"
    "--grpc-port=${GRPC_PORT}"
    "--metrics-address=${BIND_ADDRESS}"
    "--metrics-port=${METRICS_PORT}"
    "--http-restricted-api=${RESTRICTED_APIS}:${ADMIN_HEADER}=${FITGUARD_ADMIN_KEY}"
    "--grpc-restricted-protocol=${RESTRICTED_APIS}:${ADMIN_HEADER}=${FITGUARD_ADMIN_KEY}"
)

if [[ -n "${GRPC_TLS_CERT:-}" || -n "${GRPC_TLS_KEY:-}" ]]; then
    for f in "${GRPC_TLS_CERT:-}" "${GRPC_TLS_KEY:-}"; do
        if [[ -z "${f}" || ! -r "${f}" ]]; then
            log "gRPC TLS needs GRPC_TLS_CERT and GRPC_TLS_KEY, both readable PEM files (got '${f}')"
            exit 66
        fi
    done
    args+=("--grpc-use-ssl=true" "--grpc-server-cert=${GRPC_TLS_CERT}" "--grpc-server-key=${GRPC_TLS_KEY}")
    if [[ -n "${GRPC_TLS_CLIENT_CA:-}" ]]; then
        if [[ ! -r "${GRPC_TLS_CLIENT_CA}" ]]; then
            log "GRPC_TLS_CLIENT_CA=${GRPC_TLS_CLIENT_CA} is not a readable PEM file"
            exit 66
        fi
        args+=("--grpc-use-ssl-mutual=true" "--grpc-root-cert=${GRPC_TLS_CLIENT_CA}")
    fi
fi

if [[ -n "${TRITON_BACKEND_DIRECTORY:-}" ]]; then
    args+=("--backend-directory=${TRITON_BACKEND_DIRECTORY}")
fi

log "starting ${TRITONSERVER} on ${MODEL_REPOSITORY} (http ${HTTP_PORT}, grpc ${GRPC_PORT}, metrics ${METRICS_PORT})"
if [[ "${FITGUARD_WATCHDOG:-1}" == "0" ]]; then
    exec "${TRITONSERVER}" "${args[@]}" "$@"
fi

"${TRITONSERVER}" "${args[@]}" "$@" &
server=$!
"${PYTHON}" -m fitguard.cli health --watch --url "127.0.0.1:${HTTP_PORT}" \
    --interval "${FITGUARD_CANARY_INTERVAL:-2}" --timeout "${FITGUARD_CANARY_TIMEOUT:-5}" \
    --fail-after "${FITGUARD_FAIL_AFTER:-15}" --host "${BIND_ADDRESS}" --port "${HEALTH_PORT:-8003}" &
watchdog=$!
# `docker stop` / the kubelet send SIGTERM to this shell: the server drains (EXIT_TIMEOUT_SECS) and exits.
trap 'kill -TERM "${server}" 2>/dev/null || true' TERM INT
set +e
while true; do
    wait -n "${server}" "${watchdog}"
    if ! kill -0 "${server}" 2>/dev/null; then
        wait "${server}"
        code=$?
        kill -TERM "${watchdog}" 2>/dev/null
        wait "${watchdog}" 2>/dev/null
        exit "${code}"
    fi
    if ! kill -0 "${watchdog}" 2>/dev/null; then
        log "a step stayed dead or hung (the watchdog's lines above): stopping ${TRITONSERVER} so the container is restarted"
        kill -KILL "${server}" 2>/dev/null
        wait "${server}" 2>/dev/null
        exit 70
    fi
done
