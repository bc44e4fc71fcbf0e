#!/bin/sh
# A stand-in for `npm ci`: one directory per dependency named in package-lock.json.
set -e
mode=${1:-all}
for dep in $(sed -n 's/.*"node_modules\/\([a-z-]*\)".*/\1/p' package-lock.json); do
  case "$mode:$dep" in
    prod:dev-*) continue ;;
  esac
  mkdir -p "node_modules/$dep"
  echo "module.exports = '$dep'" > "node_modules/$dep/index.js"
  echo "{\"name\": \"$dep\"}" > "node_modules/$dep/package.json"
done
mkdir -p node_modules/.bin
ln -sf ../dev-tsc/index.js node_modules/.bin/tsc
