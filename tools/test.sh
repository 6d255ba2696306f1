#!/usr/bin/env bash
# The test suite on a fresh machine; the same script CI runs (.ci/run).
set -euo pipefail
exec bash "$(dirname "$0")/../.ci/run"
