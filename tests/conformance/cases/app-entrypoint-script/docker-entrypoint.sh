#!/bin/sh
set -e
if [ "$1" = postgres ]; then echo init; fi
exec "$@"
