// The embedding: the plugin component, transpiled by jco into core Wasm modules and a JavaScript
// `instantiate(getCoreModule, imports)` (`jco transpile --instantiation async`, see
// transpile.sh), instantiated with
// - `mainflux:webhooks/store`, `identity`, `settings` and `transforms` from JavaScript
//   (store.mjs, identity.mjs, `fixedSettings` and `noTransforms` below), and
// - WASI (clocks, random, cli, io, and `wasi:http/outgoing-handler` for deliveries) from
//   @bytecodealliance/preview2-shim, with an empty environment and no files, as the Rust host
//   grants it.
//
// As in the Rust host, every call runs in a fresh instance: the plugin keeps nothing between
// calls, all state is in the store. The core modules are compiled once.
//
// The npm packages are installed outside this folder (`make embed-demo` puts them in
// target/embed-node/node_modules); EMBED_NODE_PREFIX names that folder, by default the repo's
// target/embed-node.

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The repository's root. */
export const REPO = resolve(here, '..', '..');
/** Where the npm packages and the transpiled plugin are. */
export const PREFIX = resolve(process.env.EMBED_NODE_PREFIX ?? join(REPO, 'target', 'embed-node'));

/** Imports an installed package's module from PREFIX/node_modules. */
export async function importPackage(specifier) {
  const require = createRequire(join(PREFIX, 'package.json'));
  return import(pathToFileURL(require.resolve(specifier)).href);
}

/** The `settings` import: the operator's fixed delivery settings. */
export const fixedSettings = {
  // `delivery-settings: func() -> delivery-policy`; u64 is a BigInt in jco.
  deliverySettings: () => ({ retryScheduleMs: [1000n, 5000n], retentionMs: 86_400_000n }),
  // `claim-lease-ms: func() -> u64`: 0, one host serves this store.
  claimLeaseMs: () => 0n,
  // `webhook-quota: func() -> u32`: 0, no limit.
  webhookQuota: () => 0,
};

/**
 * The `transforms` import (world 0.1.2): this embedding runs no tenants' transforms, so it
 * refuses every component (`invalid`, which the plugin answers as 400 to an attach) and there
 * is never one to apply. A platform that runs them checks and runs each in a sandbox of its
 * own (EMBEDDING.md, section 2.5).
 */
export const noTransforms = {
  load: () => {
    throw { payload: { tag: 'invalid', val: 'this platform runs no transforms' } };
  },
  apply: () => {
    throw { payload: { tag: 'failed', val: 'this platform runs no transforms' } };
  },
  quota: () => 0,
};

/** A call's answer: `{ok}` or `{err}`, with `err` the WIT `error` value (`{tag, val}`). */
export function outcome(run) {
  try {
    return { ok: run() };
  } catch (e) {
    // jco throws a ComponentError whose `payload` is the `err` case of the export's result.
    if (e && Object.hasOwn(e, 'payload')) return { err: e.payload };
    throw e; // a trap
  }
}

/**
 * Loads the transpiled plugin from `pluginDir` (the output of transpile.sh) and answers a
 * function that runs one call in a fresh instance: `call((plugin) => plugin.api.viewWebhook(...))`.
 */
export async function loadPlugin({
  pluginDir = join(PREFIX, 'plugin'),
  store,
  identity,
  settings = fixedSettings,
  transforms = noTransforms,
}) {
  const entry = join(pluginDir, 'webhooks_plugin.js');
  if (!existsSync(entry)) throw new Error(`${entry} is missing: transpile the plugin first (transpile.sh, or make embed-demo)`);
  const { instantiate } = await import(pathToFileURL(entry).href);
  const { WASIShim } = await importPackage('@bytecodealliance/preview2-shim/instantiation');

  const compiled = new Map();
  const getCoreModule = (name) => {
    if (!compiled.has(name)) compiled.set(name, new WebAssembly.Module(readFileSync(join(pluginDir, name))));
    return compiled.get(name);
  };
  // No variables, no arguments, no preopened directories; network on, for wasi:http.
  const wasi = new WASIShim({ sandbox: { env: {}, args: [], preopens: {} } }).getImportObject();
  const imports = {
    ...wasi,
    'mainflux:webhooks/store': store,
    'mainflux:webhooks/identity': identity,
    'mainflux:webhooks/settings': settings,
    'mainflux:webhooks/transforms': transforms,
  };

  const instances = { count: 0 };
  const call = async (use) => {
    const plugin = await instantiate(getCoreModule, imports);
    instances.count++;
    return outcome(() => use(plugin));
  };
  call.instances = instances;
  return call;
}

/** JSON.stringify that prints BigInts as numbers and byte arrays as UTF-8 text. */
export function show(value) {
  return JSON.stringify(value, (_, v) => {
    if (typeof v === 'bigint') return Number(v);
    if (v instanceof Uint8Array) return Buffer.from(v).toString('utf8');
    return v;
  });
}
