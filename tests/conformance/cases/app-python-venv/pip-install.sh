#!/bin/sh
# A stand-in for `pip install -r`: one package directory per requirement line.
set -e
target=$1; shift
for req in "$@"; do
  grep -v '^#' "$req" | while IFS='=' read -r name _ version; do
    [ -n "$name" ] || continue
    mkdir -p "$target/lib/python3.12/site-packages/$name"
    echo "__version__ = '$version'" > "$target/lib/python3.12/site-packages/$name/__init__.py"
  done
done
