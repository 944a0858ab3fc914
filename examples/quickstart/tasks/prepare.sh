#!/usr/bin/env bash
# Writes its first argument into the run's private temp dir for the counters.
set -eu
printf '%s\n' "$1" > "$TMP_DIR/input.txt"
echo "prepared $(wc -c < "$TMP_DIR/input.txt") bytes for run $FEATHERFLOW_RUN_ID"
