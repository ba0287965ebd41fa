#!/usr/bin/env bash
# Install the external programs that some tests need (Debian/Ubuntu, run as root):
# headless Chromium and its WebDriver for tests/reports/test_browser.py. No browser is
# downloaded at test time; .ci/run exports XSCALE_REQUIRE_EXTERNAL=1 after this script,
# so a test that would skip for lack of these programs fails instead.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium chromium-driver

chromium --version
chromedriver --version
