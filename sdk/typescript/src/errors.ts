/**
 * Typed errors. Every error the SDK throws is an `OzwellError`; errors the server answered with are
 * `APIStatusError`s carrying the HTTP status and the OpenAI-shaped body's type, code and param.
 */

import { parseRateLimit, type RateLimitInfo } from './ratelimit.js';

export class OzwellError extends Error {
  override name = 'OzwellError';
}

function field(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

/** An error about one request: the server's own, an error event in a stream (no status), or a failure to reach the server. */
export class APIError extends OzwellError {
  override name = 'APIError';
  readonly status: number | null;
  readonly type: string | null;
  readonly code: string | null;
  readonly param: string | null;
  readonly requestId: string | null;
  readonly body: unknown;

  constructor(message: string, options: { status?: number | null; body?: unknown; requestId?: string | null; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.status = options.status ?? null;
    this.body = options.body;
    this.requestId = options.requestId ?? null;
    const body = options.body as { error?: unknown } | null | undefined;
    const error = body !== null && typeof body === 'object' && typeof body.error === 'object' ? body.error : body;
    const fields = (error !== null && typeof error === 'object' ? error : {}) as Record<string, unknown>;
    this.type = field(fields['type']);
    this.code = field(fields['code']);
    this.param = field(fields['param']);
  }
}

/** The server answered with a 4xx or 5xx status. */
export class APIStatusError extends APIError {
  override name = 'APIStatusError';
  declare readonly status: number;
  readonly headers: Headers;

  constructor(message: string, status: number, headers: Headers, body: unknown) {
    super(message, { status, body, requestId: headers.get('x-request-id') });
    this.headers = headers;
  }
}

/** 400: the request is malformed or a parameter is invalid. */
export class BadRequestError extends APIStatusError {
  override name = 'BadRequestError';
}
/** 401: no key, an unknown key or a revoked key. */
export class AuthenticationError extends APIStatusError {
  override name = 'AuthenticationError';
}
/** 403: the key lacks the scope, plan or model the request needs. */
export class PermissionDeniedError extends APIStatusError {
  override name = 'PermissionDeniedError';
}
/** 404: no such model, file, response or key (for this key's owner). */
export class NotFoundError extends APIStatusError {
  override name = 'NotFoundError';
}
/** 409 (retried). */
export class ConflictError extends APIStatusError {
  override name = 'ConflictError';
}
/** 422. */
export class UnprocessableEntityError extends APIStatusError {
  override name = 'UnprocessableEntityError';
}
/** 5xx (retried). */
export class InternalServerError extends APIStatusError {
  override name = 'InternalServerError';
}

/**
 * 429: a per-key or per-owner limit, or a full engine queue. `rateLimit` holds the parsed X-RateLimit-*
 * and x-ratelimit-*-requests/-tokens headers; `retryAfter` the Retry-After in seconds.
 */
export class RateLimitError extends APIStatusError {
  override name = 'RateLimitError';
  readonly rateLimit: RateLimitInfo;

  constructor(message: string, status: number, headers: Headers, body: unknown) {
    super(message, status, headers, body);
    this.rateLimit = parseRateLimit(headers);
  }

  get retryAfter(): number | null {
    return this.rateLimit.retryAfter;
  }
}

/** The server could not be reached, or the connection failed before an answer came. */
export class APIConnectionError extends APIError {
  override name = 'APIConnectionError';
  constructor(message = 'Connection error.', options: { cause?: unknown } = {}) {
    super(message, options);
  }
}

/** The request took longer than the client's timeout. */
export class APITimeoutError extends APIConnectionError {
  override name = 'APITimeoutError';
  constructor(message = 'Request timed out.') {
    super(message);
  }
}

/**
 * A stream stopped before its end ([DONE], or a Responses stream's final event): the connection was cut
 * after the stream began. Streams are never retried once a byte has arrived.
 */
export class StreamInterruptedError extends APIConnectionError {
  override name = 'StreamInterruptedError';
}

/** The typed error for a response with status >= 400 and its parsed body. */
export function statusError(status: number, headers: Headers, body: unknown): APIStatusError {
  let message: string | null = null;
  if (body !== null && typeof body === 'object') {
    const error = (body as { error?: unknown }).error;
    if (error !== null && typeof error === 'object') message = field((error as { message?: unknown }).message);
    else message = field((body as { detail?: unknown }).detail);
  }
  if (message === null) message = typeof body === 'string' && body !== '' ? body : `HTTP ${status}`;
  const text = `${status} ${message}`;
  switch (status) {
    case 400: return new BadRequestError(text, status, headers, body);
    case 401: return new AuthenticationError(text, status, headers, body);
    case 403: return new PermissionDeniedError(text, status, headers, body);
    case 404: return new NotFoundError(text, status, headers, body);
    case 409: return new ConflictError(text, status, headers, body);
    case 422: return new UnprocessableEntityError(text, status, headers, body);
    case 429: return new RateLimitError(text, status, headers, body);
    default:
      return status >= 500 ? new InternalServerError(text, status, headers, body) : new APIStatusError(text, status, headers, body);
  }
}
