// Runs the store conformance cases (tests/conformance/store.json) on the JavaScript store of
// store.mjs, each case on a fresh, empty store, calling it exactly as jco does (bytes as
// Uint8Array, variants as {tag, val}, errors thrown with a `payload`).
//
//   node examples/embed-node/store-conformance.mjs [CASES_JSON]
//
// Prints one line per case and a closing `N passed, N failed`; exits non-zero on any mismatch.
//
// The file's format: {"cases": [{"name", "steps": [STEP...]}]}, a STEP being one store call
// and its expected answer, `{"ok": ...}` or `{"conflict": INDEX}`:
//   {"get": KEY, "expect": ...}            {"get-many": [KEY...], "expect": ...}
//   {"scan": {"prefix", "after", "limit", "reverse"}, "expect": {"ok": [[KEY, VALUE]...]}}
//   {"scan-prefixes": {"prefixes": [KEY...], "limit"}, "expect": {"ok": [[[KEY, VALUE]...]...]}}
//   {"commit": {"guards": [{"absent": KEY} | {"present": KEY} | {"equals": [KEY, VALUE]}...],
//               "ops": [{"put": [KEY, VALUE]} | {"delete": KEY}...]}, "expect": ...}
// Keys and values are strings of code points 0-255, one byte each (latin1).

import { readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { isDeepStrictEqual } from 'node:util';

import { MemoryStore } from './store.mjs';
import { REPO } from './embed.mjs';

const path = process.argv[2] ?? join(REPO, 'tests', 'conformance', 'store.json');

/** A file string to bytes; refuses a character above 0xff, which is no byte. */
function bytes(text) {
  if (typeof text !== 'string') throw new TypeError(`expected a byte string, got ${JSON.stringify(text)}`);
  for (const char of text) {
    if (char.codePointAt(0) > 0xff) throw new TypeError(`${JSON.stringify(text)} has a character above 0xff`);
  }
  return new Uint8Array(Buffer.from(text, 'latin1'));
}
const nullable = (text) => (text === null || text === undefined ? undefined : bytes(text));
/** Bytes (or none) back to the file's form. */
const text = (value) => (value === undefined || value === null ? null : Buffer.from(value).toString('latin1'));

function single(object, kinds, what) {
  const keys = Object.keys(object);
  if (keys.length !== 1 || !kinds.includes(keys[0])) {
    throw new TypeError(`${what}: expected one of ${kinds.join(', ')}, got ${JSON.stringify(object)}`);
  }
  return [keys[0], object[keys[0]]];
}

function condition(guard) {
  const [tag, arg] = single(guard, ['absent', 'present', 'equals'], 'guard');
  if (tag === 'equals') return { tag, val: { key: bytes(arg[0]), value: bytes(arg[1]) } };
  return { tag, val: bytes(arg) };
}

function op(write) {
  const [tag, arg] = single(write, ['put', 'delete'], 'op');
  if (tag === 'put') return { tag, val: { key: bytes(arg[0]), value: bytes(arg[1]) } };
  return { tag, val: bytes(arg) };
}

/** Runs one step; answers it in the file's form: `{ok: ...}`, `{conflict: i}` or `{unavailable: text}`. */
function run(store, step) {
  const call = Object.keys(step).filter((key) => key !== 'expect');
  if (call.length !== 1) throw new TypeError(`a step names one call: ${JSON.stringify(step)}`);
  const arg = step[call[0]];
  try {
    switch (call[0]) {
      case 'get':
        return { ok: text(store.get(bytes(arg))) };
      case 'get-many':
        return { ok: store.getMany(arg.map(bytes)).map(text) };
      case 'scan': {
        const entries = store.scan(bytes(arg.prefix), nullable(arg.after), arg.limit, arg.reverse);
        return { ok: entries.map(({ key, value }) => [text(key), text(value)]) };
      }
      case 'scan-prefixes': {
        const answers = store.scanPrefixes(arg.prefixes.map(bytes), arg.limit);
        return { ok: answers.map((entries) => entries.map(({ key, value }) => [text(key), text(value)])) };
      }
      case 'commit':
        store.commit(arg.guards.map(condition), arg.ops.map(op));
        return { ok: null };
      default:
        throw new TypeError(`unknown call ${JSON.stringify(call[0])}`);
    }
  } catch (e) {
    if (e && Object.hasOwn(e, 'payload')) return { [e.payload.tag]: e.payload.val };
    throw e;
  }
}

const { cases } = JSON.parse(readFileSync(path, 'utf8'));
console.log(`store conformance: ${cases.length} cases from ${relative(process.cwd(), path) || path}`);
let passed = 0;
let failed = 0;
for (const { name, steps } of cases) {
  const store = new MemoryStore();
  let mismatch = null;
  for (const [index, step] of steps.entries()) {
    let got;
    try {
      got = run(store, step);
    } catch (e) {
      got = { threw: String(e) };
    }
    if (!isDeepStrictEqual(got, step.expect)) {
      mismatch = `step ${index + 1} ${JSON.stringify(step)}: got ${JSON.stringify(got)}`;
      break;
    }
  }
  if (mismatch === null) {
    passed++;
    console.log(`ok    ${name} (${steps.length} steps)`);
  } else {
    failed++;
    console.log(`FAIL  ${name}: ${mismatch}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
