// The demo: the plugin embedded in Node.js, driven through its exports from webhook creation to
// a real delivery over wasi:http to a local receiver.
//
//   node examples/embed-node/demo.mjs [REGISTRY_JSON]
//
// Each step prints the call and its answer, and checks it; any mismatch exits non-zero. The last
// line is `delivered` when the message reached the receiver.

import { fork } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { REPO, loadPlugin, show } from './embed.mjs';
import { RegistryIdentity } from './identity.mjs';
import { MemoryStore } from './store.mjs';

const registryPath = process.argv[2] ?? join(REPO, 'examples', 'registry.json');
const ADMIN = 'alice-secret-token'; // admin of plant-a
const VIEWER = 'bob-secret-token'; // viewer in plant-a
const THING = '5e0a1a44-0000-4000-8000-000000000001'; // in plant-a
const GROUP = '211e4567-e89b-12d3-a456-426614174000'; // plant-a
const HEADER = ['X-Demo-Key', 'embed-node-42'];
// UTF-8 with a multi-byte character: the receiver must get these bytes exactly.
const PAYLOAD = Buffer.from('{"temperature":21.5,"unit":"°C","n":[1,2,3]}', 'utf8');

let failures = 0;
function check(what, condition, detail = '') {
  if (condition) {
    console.log(`  ok: ${what}`);
  } else {
    failures++;
    console.log(`  MISMATCH: ${what}${detail ? ` (${detail})` : ''}`);
  }
}

function ok(answer, name) {
  check(`${name} answers ok`, 'ok' in answer, show(answer.err));
  if (!('ok' in answer)) finish();
  return answer.ok;
}

// The receiver, in its own process, and the requests it reports.
const receiver = fork(fileURLToPath(new URL('./receiver.mjs', import.meta.url)), [], { stdio: 'inherit' });
const received = [];
let onReceived = null;
const port = await new Promise((resolve, reject) => {
  receiver.on('message', (message) => {
    if (message.port) return resolve(message.port);
    received.push(message);
    onReceived?.();
  });
  receiver.on('error', reject);
  receiver.on('exit', (code) => reject(new Error(`receiver exited with ${code}`)));
});
const receiverUrl = `http://127.0.0.1:${port}/hooks/embed-node?source=demo`;
console.log(`receiver listening on 127.0.0.1:${port} (process ${receiver.pid})`);

function finish() {
  receiver.kill();
  if (failures > 0) {
    console.log(`${failures} mismatch(es)`);
    process.exit(1);
  }
  process.exit(0);
}

const store = new MemoryStore();
const identity = RegistryIdentity.load(registryPath);
const call = await loadPlugin({ store, identity });
const json = (text) => JSON.parse(text);
const utf8 = (text) => new TextEncoder().encode(text);

// 1. create-webhooks
const createBody = JSON.stringify([
  { name: 'embed-node demo', url: receiverUrl, headers: { [HEADER[0]]: HEADER[1] }, metadata: { via: 'jco' } },
]);
console.log(`\ncreate-webhooks(${ADMIN}, ${THING}, ${createBody})`);
let answer = await call((plugin) => plugin.api.createWebhooks(ADMIN, THING, utf8(createBody)));
console.log(`  -> ${show(answer)}`);
const created = json(ok(answer, 'create-webhooks'));
check('one webhook created', Array.isArray(created) && created.length === 1);
const webhook = created[0];
check('its thing, group, url and header', webhook.thing_id === THING && webhook.group_id === GROUP &&
  webhook.url === receiverUrl && webhook.headers?.[HEADER[0]] === HEADER[1], show(webhook));

// The error cases both ways: an identity error thrown by JavaScript, and a store conflict.
console.log(`\ncreate-webhooks(${VIEWER}, ...) (a viewer may not create)`);
answer = await call((plugin) => plugin.api.createWebhooks(VIEWER, THING, utf8(createBody)));
console.log(`  -> ${show(answer)}`);
check('refused as forbidden', answer.err?.tag === 'forbidden');

console.log(`\ncreate-webhooks(${ADMIN}, ...) again (the name is taken: a guard of the commit fails)`);
const conflictsBefore = store.calls.conflicts;
answer = await call((plugin) => plugin.api.createWebhooks(ADMIN, THING, utf8(createBody)));
console.log(`  -> ${show(answer)}`);
check('refused as conflict', answer.err?.tag === 'conflict');
check('after the store answered conflict(i)', store.calls.conflicts === conflictsBefore + 1);

// 2. list-thing-webhooks
console.log(`\nlist-thing-webhooks(${ADMIN}, ${THING}, [["limit", "5"]])`);
answer = await call((plugin) => plugin.api.listThingWebhooks(ADMIN, THING, [['limit', '5']]));
console.log(`  -> ${show(answer)}`);
const page = json(ok(answer, 'list-thing-webhooks'));
check('the page holds the webhook', page.total === 1 && page.limit === 5 && page.webhooks?.[0]?.id === webhook.id);

// 3. view-webhook, and the same with the store's `get` failing
console.log(`\nview-webhook(${ADMIN}, ${webhook.id})`);
answer = await call((plugin) => plugin.api.viewWebhook(ADMIN, webhook.id));
console.log(`  -> ${show(answer)}`);
const viewed = json(ok(answer, 'view-webhook'));
check('the same webhook', viewed.id === webhook.id && viewed.url === receiverUrl && viewed.metadata?.via === 'jco');

console.log(`\nview-webhook(${ADMIN}, ${webhook.id}) with store.get failing as unavailable`);
const getsBefore = store.calls.get;
store.failNext('get', 'demo outage');
answer = await call((plugin) => plugin.api.viewWebhook(ADMIN, webhook.id));
console.log(`  -> ${show(answer)}`);
check('refused as unavailable, with the store\'s text', answer.err?.tag === 'unavailable' && answer.err.val.includes('demo outage'));
check('the error case of store.get reached the plugin', store.calls.get > getsBefore);

// 4. events.on-message
const messageId = randomUUID();
const message = {
  id: messageId,
  thingId: THING,
  payload: new Uint8Array(PAYLOAD),
  contentType: 'application/json',
  subtopic: '',
  receivedMs: BigInt(Date.now()),
};
console.log(`\non-message(${show(message)})`);
answer = await call((plugin) => plugin.events.onMessage(message));
console.log(`  -> ${show(answer)}`);
const accepted = ok(answer, 'on-message');
check('one delivery, to the webhook', accepted.messageId === messageId && accepted.duplicate === false &&
  accepted.deliveries.length === 1 && accepted.deliveries[0].webhookId === webhook.id);
const deliveryId = accepted.deliveries[0]?.id;

console.log(`\non-message(the same id again)`);
answer = await call((plugin) => plugin.events.onMessage(message));
console.log(`  -> ${show(answer)}`);
const repeat = ok(answer, 'on-message');
check('a duplicate, nothing recorded', repeat.duplicate === true && repeat.deliveries.length === 0);

// 5. events.due
console.log('\ndue(10)');
answer = await call((plugin) => plugin.events.due(10));
console.log(`  -> ${show(answer)}`);
const due = ok(answer, 'due');
check('the delivery is due', due.length === 1 && due[0].id === deliveryId && due[0].webhookId === webhook.id);

// 6. attempts.deliver: the real POST through wasi:http (preview2-shim), the delivery given with
// its webhook as `due` answered it, so the plugin reads both in one store call
console.log(`\nattempts.deliver([{ id: "${deliveryId}", webhookId: "${webhook.id}" }])`);
const started = performance.now();
answer = await call((plugin) => plugin.attempts.deliver(due));
console.log(`  -> ${show(answer)} in ${Math.round(performance.now() - started)} ms`);
const outcomes = ok(answer, 'deliver');
check('delivered, status 200', outcomes.length === 1 && outcomes[0].id === deliveryId &&
  outcomes[0].status === 'delivered' && outcomes[0].statusCode === 200 && outcomes[0].error === undefined);

// What the receiver got.
if (received.length === 0) {
  await new Promise((resolve) => {
    onReceived = resolve;
    setTimeout(resolve, 5000);
  });
}
console.log(`\nthe receiver got ${received.length} request(s)`);
const request = received[0];
if (request) {
  const body = Buffer.from(request.body, 'base64');
  console.log(`  ${request.method} ${request.url}`);
  for (const [name, value] of Object.entries(request.headers)) console.log(`  ${name}: ${value}`);
  console.log(`  body: ${body.toString('utf8')}`);
  check('one POST to the webhook\'s path and query', received.length === 1 && request.method === 'POST' &&
    request.url === '/hooks/embed-node?source=demo');
  check('the exact payload bytes', body.equals(PAYLOAD), `${body.length} bytes`);
  check(`the custom header ${HEADER[0]}`, request.headers[HEADER[0].toLowerCase()] === HEADER[1]);
} else {
  check('the receiver got the request', false);
}

// 7. list-deliveries
console.log(`\nlist-deliveries(${ADMIN}, ${webhook.id}, [])`);
answer = await call((plugin) => plugin.api.listDeliveries(ADMIN, webhook.id, []));
console.log(`  -> ${show(answer)}`);
const log = json(ok(answer, 'list-deliveries'));
const entry = log.deliveries?.[0];
check('the delivery is logged as delivered', log.deliveries?.length === 1 && entry.id === deliveryId &&
  entry.status === 'delivered', show(entry));

console.log(`\n${call.instances.count} calls, each in a fresh instance; the store holds ${store.size} keys; store calls ${show(store.calls)}`);
if (failures === 0 && request && Buffer.from(request.body, 'base64').equals(PAYLOAD)) console.log('delivered');
finish();
