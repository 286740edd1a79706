// A webhook receiver for the demo, run as a child process (`fork`): preview2-shim's outgoing
// HTTP on Node blocks the calling thread until the response arrives (its I/O runs in a worker
// thread the main thread waits on with Atomics.wait), so a receiver on the demo's own event loop
// would never get to answer.
//
// It listens on 127.0.0.1 on an ephemeral port, tells its parent `{port}`, answers every request
// 200 and reports it to the parent as `{method, url, headers, body}` (body in base64). It stops
// when the parent goes away, and in any case after a minute.

import { createServer } from 'node:http';

if (!process.send) {
  console.error('receiver.mjs runs as a child process of demo.mjs');
  process.exit(2);
}

const server = createServer((request, response) => {
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    process.send({
      method: request.method,
      url: request.url,
      headers: request.headers,
      body: Buffer.concat(chunks).toString('base64'),
    });
    response.writeHead(200, { 'content-type': 'text/plain' });
    response.end('ok');
  });
});

server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
process.on('disconnect', () => process.exit(0));
setTimeout(() => process.exit(0), 60_000).unref();
