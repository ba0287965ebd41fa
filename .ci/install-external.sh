#!/usr/bin/env bash
# Install the external programs that some tests need (Debian/Ubuntu, run as root):
# headless Chromium and its WebDriver for tests/reports/test_browser.py, and MRtrix3
# (Debian package mrtrix3, 3.0.x: dwi2response, dwi2fod, sh2amp, sh2peaks, mrconvert) for
# tests/validation/test_sh_io_mrtrix.py, test_mrtrix*.py and the mrtrix-csd model. No
# browser is downloaded at test time; .ci/run exports XSCALE_REQUIRE_EXTERNAL=1 after this script,
# so a test that would skip for lack of these programs fails instead.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium chromium-driver mrtrix3

chromium --version
chromedriver --version
dwi2fod -version
