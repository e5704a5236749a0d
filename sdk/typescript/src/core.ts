/** The HTTP core: options, the request with its retries and timeout, and error mapping. */

import { APIConnectionError, APIError, APITimeoutError, OzwellError, statusError } from './errors.js';
import { hasRateLimit, parseRateLimit, retryDelay, shouldRetry, type RateLimitInfo } from './ratelimit.js';
import { Stream } from './streaming.js';
import type { RequestOptions } from './types.js';
import type { UploadBody } from './uploads.js';
import { VERSION } from './version.js';

export const DEFAULT_BASE_URL = 'http://127.0.0.1:8000/v1';
export const DEFAULT_TIMEOUT_MS = 600_000;
export const DEFAULT_MAX_RETRIES = 2;

export interface ClientOptions {
  /** Defaults to the OZWELL_API_KEY environment variable (none: no Authorization header, for `ozwell serve --no-auth`). */
  apiKey?: string | null | undefined;
  /** Defaults to OZWELL_BASE_URL, then http://127.0.0.1:8000/v1. */
  baseURL?: string | null | undefined;
  /** Milliseconds a request may take before APITimeoutError (for a stream: until its response begins). Default 600000. */
  timeout?: number | undefined;
  /** Retries on 408, 409, 429, 5xx and connection errors. Default 2. */
  maxRetries?: number | undefined;
  defaultHeaders?: Record<string, string> | undefined;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch | undefined;
}

export interface FinalRequest {
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined> | undefined;
  upload?: UploadBody;
  stream?: boolean;
  options?: RequestOptions | undefined;
}

function env(name: string): string | undefined {
  const value = typeof process !== 'undefined' ? process.env?.[name] : undefined;
  return value === undefined || value === '' ? undefined : value;
}

const sleep = (seconds: number) => new Promise<void>((resolve) => setTimeout(resolve, seconds * 1000));

export class APIClient {
  readonly apiKey: string | null;
  readonly baseURL: string;
  readonly timeout: number;
  readonly maxRetries: number;
  /** The rate-limit headers of the latest response that had them. */
  lastRateLimit: RateLimitInfo | null = null;
  private readonly defaultHeaders: Record<string, string>;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions = {}) {
    this.apiKey = options.apiKey ?? env('OZWELL_API_KEY') ?? null;
    this.baseURL = (options.baseURL ?? env('OZWELL_BASE_URL') ?? DEFAULT_BASE_URL).replace(/\/+$/, '');
    this.timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    this.maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    if (!Number.isInteger(this.maxRetries) || this.maxRetries < 0) throw new OzwellError('maxRetries must be an integer, 0 or more');
    this.defaultHeaders = { ...options.defaultHeaders };
    const fetchImpl = options.fetch ?? globalThis.fetch;
    if (typeof fetchImpl !== 'function') throw new OzwellError('No fetch: use Node 20 or later, or pass `fetch`.');
    this.fetchImpl = fetchImpl;
  }

  private url(request: FinalRequest): string {
    const url = new URL(this.baseURL + request.path);
    for (const [name, value] of Object.entries({ ...request.query, ...request.options?.query })) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    return url.toString();
  }

  private async init(request: FinalRequest, signal: AbortSignal): Promise<RequestInit & { duplex?: 'half' }> {
    const headers: Record<string, string> = {
      Accept: request.stream ? 'text/event-stream' : 'application/json',
      'User-Agent': `ozwell-typescript/${VERSION}`,
      ...this.defaultHeaders,
    };
    if (this.apiKey) headers['Authorization'] = `Bearer ${this.apiKey}`;
    const init: RequestInit & { duplex?: 'half' } = { method: request.method, headers, signal };
    if (request.upload !== undefined) {
      const { body, contentType } = await request.upload.make();
      headers['Content-Type'] = contentType;
      init.body = body;
      if (body instanceof ReadableStream) init.duplex = 'half';
    } else if (request.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(request.body);
    }
    Object.assign(headers, request.options?.headers);
    return init;
  }

  private note(headers: Headers): void {
    const info = parseRateLimit(headers);
    if (hasRateLimit(info)) this.lastRateLimit = info;
  }

  /**
   * Sends with retries and hands the successful response to `read`, inside the timeout. A stream's
   * response is handed over as soon as it begins and is never retried after that.
   */
  private async send<R>(request: FinalRequest, read: (response: globalThis.Response, controller: AbortController) => Promise<R>): Promise<R> {
    const maxRetries = request.upload !== undefined && !request.upload.replayable ? 0 : (request.options?.maxRetries ?? this.maxRetries);
    const timeout = request.options?.timeout ?? this.timeout;
    const userSignal = request.options?.signal;
    for (let attempt = 0; ; attempt++) {
      const last = attempt >= maxRetries;
      const controller = new AbortController();
      const onAbort = () => controller.abort(userSignal?.reason);
      if (userSignal?.aborted) throw userSignal.reason;
      userSignal?.addEventListener('abort', onAbort, { once: true });
      const timer = setTimeout(() => controller.abort(new APITimeoutError()), timeout);
      let retryHeaders: Headers | null = null;
      let handedOver = false;
      try {
        const response = await this.fetchImpl(this.url(request), await this.init(request, controller.signal));
        this.note(response.headers);
        if (response.ok) {
          const value = await read(response, controller);
          handedOver = request.stream === true; // the caller's signal still aborts the stream
          return value;
        }
        const text = await response.text();
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          // not JSON: kept as text
        }
        if (last || !shouldRetry(response.status)) throw statusError(response.status, response.headers, body);
        retryHeaders = response.headers;
      } catch (error) {
        if (error instanceof APIError) throw error;
        if (userSignal?.aborted) throw userSignal.reason;
        const timedOut = controller.signal.aborted && controller.signal.reason instanceof APITimeoutError;
        if (last) {
          if (timedOut) throw new APITimeoutError();
          const cause = (error as { cause?: unknown }).cause ?? error;
          throw new APIConnectionError(`Connection error: ${String((cause as Error)?.message ?? cause)}`, { cause: error });
        }
      } finally {
        clearTimeout(timer);
        if (!handedOver) userSignal?.removeEventListener('abort', onAbort);
      }
      await sleep(retryDelay(attempt, retryHeaders));
    }
  }

  async requestJSON<T>(request: FinalRequest): Promise<T> {
    return this.send(request, async (response) => (await response.json()) as T);
  }

  /** The parsed body with the response's headers (the poll helpers read `openai-poll-after-ms`). */
  async requestWithHeaders<T>(request: FinalRequest): Promise<{ data: T; headers: Headers }> {
    return this.send(request, async (response) => ({ data: (await response.json()) as T, headers: response.headers }));
  }

  async requestBytes(request: FinalRequest): Promise<Uint8Array> {
    return this.send(request, async (response) => new Uint8Array(await response.arrayBuffer()));
  }

  async requestStream<T>(request: FinalRequest, finalEvents: ReadonlySet<string> | null = null): Promise<Stream<T>> {
    return this.send({ ...request, stream: true }, async (response, controller) => {
      // The timeout covers the wait for the stream to begin; the stream itself may run as long as it runs.
      return new Stream<T>(response, controller, finalEvents);
    });
  }
}
