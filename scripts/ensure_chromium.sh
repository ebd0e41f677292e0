#!/bin/sh
# Installs Debian's chromium for the test that renders OUT/report.html headless (tests/test_report.py).
# The same command as checked by hand on Debian 12 (recommends included: fonts).
# Idempotent: does nothing when a chromium is on PATH. Installs with apt-get when running as root or
# under CI (CI=true, with sudo if not root); otherwise only says how, and the test skips locally.
set -eu

for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done

if [ "$(id -u)" = "0" ]; then
    SUDO=""
elif [ "${CI:-}" = "true" ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
else
    echo "ensure_chromium: no chromium on PATH; 'apt-get install chromium' to run the report rendering test" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no apt-get here; install chromium by hand" >&2
    [ "${CI:-}" = "true" ] && exit 1
    exit 0
fi

echo "ensure_chromium: installing chromium with apt-get" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null 2>&1
