/**
 * Errors, retries and streams at the edges a healthy server does not show: connection refused, a server
 * that never answers, a stream cut short, Retry-After as a date or too long to wait. Scripted loopback
 * servers play the other side; no Ozwell server is needed.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  APIConnectionError,
  APIError,
  APITimeoutError,
  DEFAULT_BASE_URL,
  InternalServerError,
  OzwellClient,
  StreamInterruptedError,
  parseRetryAfter,
  retryDelay,
} from '../src/index.js';
import { FakeServer, SilentServer, freePort, partialStream, respond, sse } from './fake-server.js';

const CHUNK = {
  id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'm',
  choices: [{ index: 0, delta: { role: 'assistant', content: 'Hel' }, finish_reason: null }],
};
const COMPLETION = {
  id: 'chatcmpl-2', object: 'chat.completion', created: 1, model: 'm',
  choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop', logprobs: null }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
};
const MESSAGES = [{ role: 'user' as const, content: 'Hi' }];
const ERROR_BODY = JSON.stringify({ error: { message: 'busy', type: 'server_error', param: null, code: null } });

async function withServer<T>(server: FakeServer | SilentServer, body: (url: string) => Promise<T>): Promise<T> {
  const url = await server.start();
  try {
    return await body(url);
  } finally {
    await server.close();
  }
}

const seconds = (since: number) => (performance.now() - since) / 1000;

test('defaults come from the environment', () => {
  const saved = { key: process.env['OZWELL_API_KEY'], url: process.env['OZWELL_BASE_URL'] };
  try {
    delete process.env['OZWELL_API_KEY'];
    delete process.env['OZWELL_BASE_URL'];
    const bare = new OzwellClient();
    assert.deepEqual([bare.apiKey, bare.baseURL, bare.maxRetries, bare.timeout], [null, DEFAULT_BASE_URL, 2, 600_000]);
    assert.equal(DEFAULT_BASE_URL, 'http://127.0.0.1:8000/v1');
    process.env['OZWELL_API_KEY'] = 'ozw_env';
    process.env['OZWELL_BASE_URL'] = 'http://example.test:9/v1/';
    const fromEnv = new OzwellClient();
    assert.deepEqual([fromEnv.apiKey, fromEnv.baseURL], ['ozw_env', 'http://example.test:9/v1']);
    const given = new OzwellClient({ apiKey: 'ozw_arg', baseURL: 'http://h:1/v1', timeout: 3000, maxRetries: 0 });
    assert.deepEqual([given.apiKey, given.baseURL, given.timeout, given.maxRetries], ['ozw_arg', 'http://h:1/v1', 3000, 0]);
  } finally {
    for (const [name, value] of [['OZWELL_API_KEY', saved.key], ['OZWELL_BASE_URL', saved.url]] as const) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
});

test('a refused connection is retried with backoff, then thrown', async () => {
  const client = new OzwellClient({ baseURL: `http://127.0.0.1:${await freePort()}/v1`, apiKey: 'k', maxRetries: 1 });
  const started = performance.now();
  const error = await client.models.list().then(() => null, (e: unknown) => e);
  const elapsed = seconds(started);
  assert.ok(error instanceof APIConnectionError && !(error instanceof APITimeoutError), String(error));
  assert.ok(elapsed >= 0.37 && elapsed < 3, `elapsed ${elapsed}`); // one backoff: 0.5 s less up to a quarter
});

test('a server that never answers times out', async () => {
  await withServer(new SilentServer(), async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k', timeout: 300, maxRetries: 0 });
    const started = performance.now();
    await assert.rejects(client.chat.completions.create({ model: 'm', messages: MESSAGES }), APITimeoutError);
    const elapsed = seconds(started);
    assert.ok(elapsed >= 0.25 && elapsed < 5, `elapsed ${elapsed}`);
    // a per-call timeout overrides the client's
    const patient = new OzwellClient({ baseURL: url, apiKey: 'k', timeout: 60_000, maxRetries: 0 });
    const again = performance.now();
    await assert.rejects(patient.models.list({ timeout: 200 }), APITimeoutError);
    assert.ok(seconds(again) < 5);
  });
});

test('a cut stream throws and is not retried', async () => {
  const server = new FakeServer([partialStream([sse(CHUNK)]), respond(200, JSON.stringify(COMPLETION))]);
  await withServer(server, async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k', maxRetries: 2 });
    const stream = await client.chat.completions.create({ model: 'm', messages: MESSAGES, stream: true });
    const received: Array<string | null | undefined> = [];
    await assert.rejects(async () => {
      for await (const chunk of stream) received.push(chunk.choices[0]?.delta.content);
    }, StreamInterruptedError);
    assert.deepEqual(received, ['Hel']); // what came, then the error instead of a quiet end
    assert.equal(server.requests.length, 1); // never retried once a byte has arrived
  });
});

test('a cut Responses stream throws, also mid-event', async () => {
  const created = {
    type: 'response.created', sequence_number: 0,
    response: { id: 'resp_1', object: 'response', created_at: 1, status: 'in_progress', model: 'm', output: [] },
  };
  await withServer(new FakeServer([partialStream([`event: response.created\n${sse(created)}`, 'data: {"type":"resp'])]), async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k' });
    const kinds: string[] = [];
    await assert.rejects(async () => {
      for await (const event of await client.responses.create({ model: 'm', input: 'Hi', stream: true })) kinds.push(event.type);
    }, StreamInterruptedError);
    assert.deepEqual(kinds, ['response.created']);
  });
});

test('an error sent in the stream throws APIError', async () => {
  const error = { error: { message: 'The engine failed.', type: 'server_error', param: null, code: 'boom' } };
  await withServer(new FakeServer([partialStream([sse(CHUNK), sse(error), 'data: [DONE]\n\n'])]), async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k' });
    const stream = await client.chat.completions.create({ model: 'm', messages: MESSAGES, stream: true });
    await assert.rejects(async () => {
      for await (const _ of stream) {
        // drain
      }
    }, (e: unknown) => e instanceof APIError && e.message === 'The engine failed.' && e.code === 'boom' && e.type === 'server_error');
  });
});

test('Retry-After as an HTTP date is waited', async () => {
  const when = new Date(Date.now() + 2000).toUTCString(); // whole seconds: 1 to 2 s from now
  const server = new FakeServer([respond(503, ERROR_BODY, { 'Retry-After': when }), respond(200, JSON.stringify(COMPLETION))]);
  await withServer(server, async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k', maxRetries: 1 });
    const started = performance.now();
    const completion = await client.chat.completions.create({ model: 'm', messages: MESSAGES });
    const elapsed = seconds(started);
    assert.equal(completion.choices[0]?.message.content, 'ok');
    assert.equal(server.requests.length, 2);
    assert.ok(elapsed >= 0.9 && elapsed < 3.5, `elapsed ${elapsed}`);
  });
});

test('a Retry-After of a minute or more falls back to the backoff', async () => {
  const server = new FakeServer([respond(500, ERROR_BODY, { 'Retry-After': '120' }), respond(200, JSON.stringify(COMPLETION))]);
  await withServer(server, async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k', maxRetries: 1 });
    const started = performance.now();
    await client.chat.completions.create({ model: 'm', messages: MESSAGES });
    const elapsed = seconds(started);
    assert.ok(elapsed >= 0.37 && elapsed < 2, `elapsed ${elapsed}`); // the first backoff, not two minutes
  });
  const failing = new FakeServer([respond(500, ERROR_BODY)]);
  await withServer(failing, async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k', maxRetries: 0 });
    await assert.rejects(client.models.list(), (e: unknown) => e instanceof InternalServerError && e.status === 500 && e.message.includes('busy'));
    assert.equal(failing.requests.length, 1);
  });
});

test('an upload from a stream is sent chunked and not retried', async () => {
  const server = new FakeServer([respond(503, ERROR_BODY)]);
  await withServer(server, async (url) => {
    const client = new OzwellClient({ baseURL: url, apiKey: 'k', maxRetries: 2 });
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('streamed bytes'));
        controller.close();
      },
    });
    await assert.rejects(client.files.create({ file: stream, filename: 's.txt', purpose: 'user_data' }), InternalServerError);
    assert.equal(server.requests.length, 1);
    assert.match(server.requests[0] ?? '', /transfer-encoding: chunked/i);
    assert.match(server.requests[0] ?? '', /filename="s\.txt"[\s\S]*streamed bytes/);
  });
});

test('the backoff schedule', () => {
  for (const [retriesDone, ceiling] of [[0, 0.5], [1, 1], [2, 2], [3, 4], [4, 8], [9, 8]] as const) {
    const delays = Array.from({ length: 200 }, () => retryDelay(retriesDone, null));
    assert.ok(delays.every((d) => d >= 0.75 * ceiling && d <= ceiling), `${retriesDone}: ${Math.min(...delays)}..${Math.max(...delays)}`);
    assert.ok(new Set(delays).size > 1); // jittered
  }
  assert.equal(retryDelay(0, new Headers({ 'Retry-After': '3' })), 3);
  assert.equal(retryDelay(0, new Headers({ 'retry-after-ms': '250' })), 0.25);
  assert.ok(retryDelay(0, new Headers({ 'Retry-After': '60' })) <= 0.5);
  assert.equal(parseRetryAfter(new Headers({ 'Retry-After': 'Wed, 21 Oct 2015 07:28:00 GMT' }), Date.parse('Wed, 21 Oct 2015 07:27:50 GMT')), 10);
  assert.equal(parseRetryAfter(new Headers({ 'Retry-After': 'soon' })), null);
});
