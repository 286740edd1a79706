#!/bin/sh
# Transpiles the plugin component with jco into core Wasm modules and a JavaScript
# `instantiate(getCoreModule, imports)` that takes every import, WASI included, from its caller
# (embed.mjs supplies them).
#
#   examples/embed-node/transpile.sh PLUGIN_WASM OUT_DIR
#
# jco comes from EMBED_NODE_PREFIX/node_modules (default: the repo's target/embed-node).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${EMBED_NODE_PREFIX:-$here/../../target/embed-node}
wasm=${1:?usage: transpile.sh PLUGIN_WASM OUT_DIR}
out=${2:?usage: transpile.sh PLUGIN_WASM OUT_DIR}
rm -rf "$out"
"$prefix/node_modules/.bin/jco" transpile "$wasm" -o "$out" --name webhooks_plugin \
	--instantiation async --no-typescript --quiet
