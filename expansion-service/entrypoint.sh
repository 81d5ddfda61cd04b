#!/bin/sh
# The entrypoint of the InferBridge image (expansion-service/Dockerfile).
#
#   IMAGE [FLAG...]              the expansion service: inferbridge-expansion-service FLAG...
#                                (every flag may also be set by its INFERBRIDGE_* variable)
#   IMAGE worker-pool [ARG...]   Beam's Python worker pool on $INFERBRIDGE_WORKER_POOL_PORT (default
#                                50000), for runners that start Python workers through an
#                                EXTERNAL environment (e.g. Flink worker-pool sidecars)
#   IMAGE --id=... --control_endpoint=... (Beam's SDK container arguments), IMAGE --worker_pool
#                                Beam's boot launcher, /opt/apache/beam/boot, as in Beam's own
#                                Python SDK images: DOCKER environments, Dataflow custom containers
set -eu

if [ "${1:-}" = "worker-pool" ]; then
  shift
  # Beam's worker pool stops on KeyboardInterrupt; make SIGTERM (docker stop, Kubernetes) do the
  # same, since as PID 1 it would otherwise ignore SIGTERM.
  exec python -c 'import signal, sys
signal.signal(signal.SIGTERM, signal.default_int_handler)
from apache_beam.runners.worker import worker_pool_main
worker_pool_main.main(sys.argv)' \
    --service_port="${INFERBRIDGE_WORKER_POOL_PORT:-50000}" "$@"
fi

for arg in "$@"; do
  case "$arg" in
    --control_endpoint=* | --provision_endpoint=* | --worker_pool) exec /opt/apache/beam/boot "$@" ;;
  esac
done

exec inferbridge-expansion-service "$@"
