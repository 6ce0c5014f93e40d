#!/usr/bin/env bash
# Install the system Chromium that tests/test_browser.py drives through Playwright (Debian/Ubuntu).
# Idempotent: does nothing when /usr/bin/chromium exists. Playwright's own browser download
# (`playwright install`) is not used: the test launches this chromium via executable_path.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    echo "bootstrap_browser: $CHROMIUM already installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap_browser: $CHROMIUM is missing and this script is not running as root." >&2
    echo "  install it with: sudo apt-get update && sudo apt-get install -y chromium" >&2
    echo "  (tests/test_browser.py is skipped without it, except when CI is set, where it fails)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap_browser: no apt-get here; install Chromium with your package manager and set" >&2
    echo "  TOOLKIT_CHROMIUM=/path/to/chromium for tests/test_browser.py" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium
echo "bootstrap_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
