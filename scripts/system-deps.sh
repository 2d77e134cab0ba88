#!/usr/bin/env bash
# The system services the tests start for themselves: PostgreSQL, Redis, Chromium for the console,
# nginx (the load balancer in front of replicas in tests/e2e/test_topology.py), and docker-compose,
# which checks deploy/compose.yaml (tests/unit/test_packaging.py; there is no Docker engine here).
# As root, install whatever is missing; otherwise say what to run and stop.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "==> installing system packages: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "These are missing. As root, run:" >&2
  echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y "${missing[@]}"
