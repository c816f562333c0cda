#!/usr/bin/env bash
# Start (or install, then start) what the tests talk to: Redis on 127.0.0.1:6379, PostgreSQL on :5432, and
# the system Chromium that the chat page tests drive through Playwright (never a downloaded browser).
set -euo pipefail

apt_ready=0
apt_install() {
  if [ "$apt_ready" = 0 ]; then apt-get update -qq; apt_ready=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG); then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
fi
echo "redis: $(redis-cli -h 127.0.0.1 -p 6379 ping)"

if ! (command -v pg_isready >/dev/null && pg_isready -h 127.0.0.1 -p 5432 -q); then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi
if pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "postgres: up"
else
  echo "postgres: not available; SQL tests on PostgreSQL will be skipped"
fi

if [ ! -x /usr/bin/chromium ]; then apt_install chromium; fi
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo missing)"
