// The `mainflux:webhooks/store` import in JavaScript: an in-memory ordered map over byte keys.
//
// Keys and values are bytes (Uint8Array). Inside, a key is held as a latin1 string, one
// character per byte: JavaScript compares strings by UTF-16 code units, which for code points
// 0-255 is exactly bytewise unsigned order, so the sorted array of those strings is the store's
// key order.
//
// The functions have the shapes jco gives the WIT (`jco transpile`):
// - `list<u8>` is a Uint8Array (an array of numbers is accepted too);
// - `option<T>` is the value or `undefined`/`null`;
// - records are objects with camelCase fields (`entry` is `{key, value}`);
// - variants are `{tag, val}` with the WIT case name as `tag` (`{tag: 'put', val: {key, value}}`);
// - an import returning `result<T, E>` returns the ok value, and gives the error case by
//   throwing an object whose own `payload` property is the `E` value (jco's `ComponentError`
//   shape); a thrown `Error` without `payload` is a trap, not an error case.

/** A store error to throw from an import: jco lowers `payload` as the `err` case. */
export class StoreError extends Error {
  constructor(payload) {
    super(payload.tag === 'conflict' ? `guard ${payload.val} failed` : `store unavailable: ${payload.val}`);
    this.name = 'StoreError';
    // An own property: jco's getErrorPayload looks for exactly this.
    this.payload = payload;
  }
}

const toKey = (bytes) =>
  (bytes instanceof Uint8Array ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length) : Buffer.from(bytes)).toString('latin1');
const toBytes = (key) => new Uint8Array(Buffer.from(key, 'latin1'));
const copy = (bytes) => Uint8Array.from(bytes);
const sameBytes = (a, b) => a.length === b.length && a.every((byte, i) => byte === b[i]);

export class MemoryStore {
  /** Sorted keys (latin1 strings). */
  #keys = [];
  /** Key (latin1 string) to value (Uint8Array). */
  #values = new Map();
  /** How many calls each function served, and how many commits a guard refused. */
  calls = { get: 0, getMany: 0, scan: 0, scanPrefixes: 0, commit: 0, conflicts: 0 };
  /** A backend outage to play: the next call of `fn` fails with `unavailable(text)`. */
  #outage = null;

  /** Makes the next call of `fn` ('get', 'getMany', 'scan', 'scanPrefixes' or 'commit') fail as unavailable. */
  failNext(fn, text) {
    this.#outage = { fn, text };
  }

  // Arrow-function fields, so `store.get` can be handed to jco as a plain function.

  /** `get: func(key) -> result<option<list<u8>>, store-error>` */
  get = (key) => {
    this.calls.get++;
    this.#maybeFail('get');
    const value = this.#values.get(toKey(key));
    return value === undefined ? undefined : copy(value);
  };

  /** `get-many: func(keys: list<key>) -> result<list<option<list<u8>>>, store-error>` */
  getMany = (keys) => {
    this.calls.getMany++;
    this.#maybeFail('getMany');
    return keys.map((key) => {
      const value = this.#values.get(toKey(key));
      return value === undefined ? undefined : copy(value);
    });
  };

  /** `scan: func(prefix, after: option<key>, limit: u32, reverse: bool) -> result<list<entry>, store-error>` */
  scan = (prefix, after, limit, reverse) => {
    this.calls.scan++;
    this.#maybeFail('scan');
    return this.#range(prefix, after, limit, reverse);
  };

  /** `scan-prefixes: func(prefixes: list<key>, limit: u32) -> result<list<list<entry>>, store-error>` */
  scanPrefixes = (prefixes, limit) => {
    this.calls.scanPrefixes++;
    this.#maybeFail('scanPrefixes');
    return prefixes.map((prefix) => this.#range(prefix, null, limit, false));
  };

  /** Up to `limit` entries under `prefix`, strictly after `after` in the scan's direction. */
  #range(prefix, after, limit, reverse) {
    const keys = this.#keys;
    const p = toKey(prefix);
    // The keys starting with the prefix are one run [lo, hi) of the sorted keys.
    const lo = this.#lowerBound(p);
    const hi = this.#partition((k) => k < p || k.startsWith(p));
    const entries = [];
    if (limit === 0) return entries;
    const a = after === undefined || after === null ? null : toKey(after);
    if (!reverse) {
      // Strictly after `a`: the first key greater than it.
      let i = a === null ? lo : Math.max(lo, this.#partition((k) => k <= a));
      for (; i < hi && entries.length < limit; i++) entries.push(this.#entry(keys[i]));
    } else {
      // Strictly before `a` in ascending order: the last key less than it.
      let i = (a === null ? hi : Math.min(hi, this.#lowerBound(a))) - 1;
      for (; i >= lo && entries.length < limit; i--) entries.push(this.#entry(keys[i]));
    }
    return entries;
  }

  /** `commit: func(guards: list<condition>, ops: list<op>) -> result<_, store-error>` */
  commit = (guards, ops) => {
    this.calls.commit++;
    this.#maybeFail('commit');
    // Every guard against the state before the ops; the first that fails is the answer.
    guards.forEach((guard, index) => {
      if (!this.#holds(guard)) {
        this.calls.conflicts++;
        throw new StoreError({ tag: 'conflict', val: index });
      }
    });
    for (const op of ops) {
      switch (op.tag) {
        case 'put':
          this.#put(toKey(op.val.key), copy(op.val.value));
          break;
        case 'delete':
          this.#delete(toKey(op.val));
          break;
        default:
          throw new TypeError(`unknown op ${JSON.stringify(op.tag)}`);
      }
    }
  };

  /** The number of stored keys. */
  get size() {
    return this.#keys.length;
  }

  #holds(guard) {
    switch (guard.tag) {
      case 'absent':
        return !this.#values.has(toKey(guard.val));
      case 'present':
        return this.#values.has(toKey(guard.val));
      case 'equals': {
        const held = this.#values.get(toKey(guard.val.key));
        return held !== undefined && sameBytes(held, guard.val.value);
      }
      default:
        throw new TypeError(`unknown condition ${JSON.stringify(guard.tag)}`);
    }
  }

  #maybeFail(fn) {
    if (this.#outage?.fn === fn) {
      const { text } = this.#outage;
      this.#outage = null;
      throw new StoreError({ tag: 'unavailable', val: text });
    }
  }

  #entry(key) {
    return { key: toBytes(key), value: copy(this.#values.get(key)) };
  }

  #put(key, value) {
    if (!this.#values.has(key)) this.#keys.splice(this.#lowerBound(key), 0, key);
    this.#values.set(key, value);
  }

  #delete(key) {
    if (this.#values.delete(key)) this.#keys.splice(this.#lowerBound(key), 1);
  }

  /** The first index whose key is not less than `key`. */
  #lowerBound(key) {
    return this.#partition((k) => k < key);
  }

  /** The first index where `pred` (true, then false over the sorted keys) is false. */
  #partition(pred) {
    let lo = 0;
    let hi = this.#keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pred(this.#keys[mid])) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
