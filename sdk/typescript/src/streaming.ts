/**
 * Server-sent event streams. A stream must reach its end marker ([DONE] for chat and completions, a
 * final `response.*` event for the Responses API); one that stops short throws StreamInterruptedError
 * instead of ending quietly. An `error` sent in-band throws APIError.
 */

import { createParser, type EventSourceMessage } from 'eventsource-parser';

import { APIError, APITimeoutError, StreamInterruptedError } from './errors.js';

export const RESPONSE_FINAL_EVENTS: ReadonlySet<string> = new Set(['response.completed', 'response.incomplete', 'response.failed']);

/** An async iterable of parsed events; iterate it once. `abort()` (or `break`) releases the connection. */
export class Stream<T> implements AsyncIterable<T> {
  readonly response: globalThis.Response;
  private readonly controller: AbortController;
  private readonly finalEvents: ReadonlySet<string> | null;
  private consumed = false;

  constructor(response: globalThis.Response, controller: AbortController, finalEvents: ReadonlySet<string> | null = null) {
    this.response = response;
    this.controller = controller;
    this.finalEvents = finalEvents; // null: the stream ends with data: [DONE]
  }

  /** Stops reading and closes the connection. */
  abort(): void {
    this.controller.abort();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.consumed) throw new Error('A stream can be iterated only once.');
    this.consumed = true;
    const body = this.response.body;
    if (body === null) throw new StreamInterruptedError('The stream has no body.');
    const pending: EventSourceMessage[] = [];
    const parser = createParser({ onEvent: (event) => pending.push(event) });
    const decoder = new TextDecoder();
    const reader = body.getReader();
    let done = false;
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (cause) {
          if (this.controller.signal.aborted && this.controller.signal.reason instanceof APITimeoutError) {
            throw this.controller.signal.reason;
          }
          throw new StreamInterruptedError(`The stream was cut: ${String(cause)}`, { cause });
        }
        if (chunk.done) break;
        parser.feed(decoder.decode(chunk.value, { stream: true }));
        while (pending.length > 0) {
          const event = pending.shift() as EventSourceMessage;
          if (event.data === '[DONE]') {
            done = true;
            continue;
          }
          const item = this.handle(event);
          if (this.finalEvents !== null && this.finalEvents.has((item as { type?: string }).type ?? '')) done = true;
          yield item;
        }
      }
    } finally {
      // Leaving early (break, return, or an error) closes the connection.
      if (!done) this.controller.abort();
      reader.releaseLock();
    }
    if (!done) {
      throw new StreamInterruptedError('The stream ended before it was complete: the server or the network cut it.');
    }
  }

  private handle(event: EventSourceMessage): T {
    let payload: unknown;
    try {
      payload = JSON.parse(event.data);
    } catch {
      throw new APIError(`The server sent an event that is not JSON: ${JSON.stringify(event.data.slice(0, 200))}`);
    }
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      throw new APIError(`The server sent an unexpected event: ${JSON.stringify(event.data.slice(0, 200))}`);
    }
    const record = payload as Record<string, unknown>;
    const kind = record['type'] ?? event.event;
    if (kind === 'error' || (this.finalEvents === null && 'error' in record && !('choices' in record))) {
      const error = (record['error'] ?? record) as Record<string, unknown>;
      const message = typeof error['message'] === 'string' ? error['message'] : 'The server reported an error in the stream.';
      throw new APIError(message, { body: { error } });
    }
    return payload as T;
  }
}
