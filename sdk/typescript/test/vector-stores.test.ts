/**
 * The vector store poll helpers against scripted servers: they wait as the server's `openai-poll-after-ms`
 * says unless told an interval, stop at a settled status, and reject with PollTimeoutError at `maxWaitMs`;
 * the paths they poll are the spec's. No Ozwell server is needed.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { OzwellClient, PollTimeoutError } from '../src/index.js';
import { FakeServer, respond } from './fake-server.js';

const file = (status: string, hintMs?: number) => respond(200, JSON.stringify({
  id: 'file-1', object: 'vector_store.file', usage_bytes: 0, created_at: 1, vector_store_id: 'vs_1', status, last_error: null,
}), hintMs === undefined ? {} : { 'openai-poll-after-ms': String(hintMs) });
const batch = (inProgress: number) => respond(200, JSON.stringify({
  id: 'vsfb_1', object: 'vector_store.files_batch', created_at: 1, vector_store_id: 'vs_1', status: inProgress ? 'in_progress' : 'completed',
  file_counts: { in_progress: inProgress, completed: 1 - inProgress, failed: 0, cancelled: 0, total: 1 },
}), { 'openai-poll-after-ms': '50' });

async function withServer<T>(server: FakeServer, body: (client: OzwellClient) => Promise<T>): Promise<T> {
  const url = await server.start();
  try {
    return await body(new OzwellClient({ baseURL: url, apiKey: 'k' }));
  } finally {
    await server.close();
  }
}

test('a file poll waits as the server hints and stops once settled', async () => {
  const server = new FakeServer([file('in_progress', 50), file('in_progress', 50), file('failed')]);
  await withServer(server, async (client) => {
    const started = performance.now();
    const settled = await client.vectorStores.files.poll('vs_1', 'file-1');
    const elapsed = performance.now() - started;
    assert.equal(settled.status, 'failed');
    assert.ok(elapsed >= 90 && elapsed < 900, String(elapsed)); // two waits of 50 ms, not the 1 s default
  });
  assert.equal(server.requests.length, 3);
  assert.ok(server.requests[0]?.startsWith('GET /v1/vector_stores/vs_1/files/file-1 HTTP/1.1'));
});

test('pollIntervalMs overrides the hint, and maxWaitMs rejects with PollTimeoutError', async () => {
  await withServer(new FakeServer([file('in_progress', 5000), file('completed')]), async (client) => {
    const started = performance.now();
    assert.equal((await client.vectorStores.files.poll('vs_1', 'file-1', { pollIntervalMs: 20 })).status, 'completed');
    assert.ok(performance.now() - started < 2000);
  });
  await withServer(new FakeServer([file('in_progress', 50)]), async (client) => {
    const started = performance.now();
    await assert.rejects(client.vectorStores.files.poll('vs_1', 'file-1', { maxWaitMs: 300 }), PollTimeoutError);
    assert.ok(performance.now() - started >= 250);
  });
});

test('a batch poll waits until none of its files is in progress', async () => {
  const server = new FakeServer([batch(1), batch(1), batch(0)]);
  await withServer(server, async (client) => {
    const done = await client.vectorStores.fileBatches.poll('vs_1', 'vsfb_1');
    assert.deepEqual([done.status, done.file_counts.in_progress], ['completed', 0]);
  });
  assert.equal(server.requests.length, 3);
  assert.ok(server.requests[0]?.startsWith('GET /v1/vector_stores/vs_1/file_batches/vsfb_1 HTTP/1.1'));
});
