#!/bin/sh
# A stand-in for a static site generator: content/*.md -> public/*/index.html.
set -e
mkdir -p public
for f in content/*.md; do
  n=$(basename "$f" .md)
  mkdir -p "public/$n"
  { echo "<html><body>"; sed 's/^# \(.*\)/<h1>\1<\/h1>/' "$f"; echo "</body></html>"; } > "public/$n/index.html"
done
cp -r static/. public/
