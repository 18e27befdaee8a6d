#!/usr/bin/env bash
# Prints the packages of scripts/packages.txt that scripts/test.sh and .ci/run install (every line
# but the benchmark-only `bench:` ones), one per line.
set -euo pipefail
sed -e 's/#.*//' -e '/^[[:space:]]*bench:/d' -e 's/[[:space:]]//g' -e '/^$/d' "$(dirname "$0")/packages.txt"
