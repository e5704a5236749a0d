/** Rate-limit headers and the retry schedule. */

export const INITIAL_RETRY_DELAY_S = 0.5;
export const MAX_RETRY_DELAY_S = 8;
/** A Retry-After of a minute or more is not waited for; the backoff applies instead. */
export const MAX_RETRY_AFTER_S = 60;

/**
 * What a response's rate-limit headers say. Ozwell's X-RateLimit-Limit/-Remaining/-Reset are about
 * requests (`reset` in epoch seconds); OpenAI's x-ratelimit-*-requests and -tokens are kept as sent
 * (resets are durations such as "1s" or "6m0s"). A header the response lacks is null.
 */
export interface RateLimitInfo {
  limit: number | null;
  remaining: number | null;
  reset: number | null;
  /** Retry-After (or retry-after-ms), in seconds. */
  retryAfter: number | null;
  limitRequests: number | null;
  remainingRequests: number | null;
  resetRequests: string | null;
  limitTokens: number | null;
  remainingTokens: number | null;
  resetTokens: string | null;
}

export function shouldRetry(status: number): boolean {
  return status === 408 || status === 409 || status === 429 || status >= 500;
}

function int(value: string | null): number | null {
  if (value === null || !/^-?\d+$/.test(value.trim())) return null;
  return Number.parseInt(value, 10);
}

export function parseRateLimit(headers: Headers): RateLimitInfo {
  return {
    limit: int(headers.get('x-ratelimit-limit')),
    remaining: int(headers.get('x-ratelimit-remaining')),
    reset: int(headers.get('x-ratelimit-reset')),
    retryAfter: parseRetryAfter(headers),
    limitRequests: int(headers.get('x-ratelimit-limit-requests')),
    remainingRequests: int(headers.get('x-ratelimit-remaining-requests')),
    resetRequests: headers.get('x-ratelimit-reset-requests'),
    limitTokens: int(headers.get('x-ratelimit-limit-tokens')),
    remainingTokens: int(headers.get('x-ratelimit-remaining-tokens')),
    resetTokens: headers.get('x-ratelimit-reset-tokens'),
  };
}

export function hasRateLimit(info: RateLimitInfo): boolean {
  return Object.values(info).some((value) => value !== null);
}

/** Seconds to wait: retry-after-ms, or Retry-After as seconds or an HTTP date; null without one. */
export function parseRetryAfter(headers: Headers, now: number = Date.now()): number | null {
  const millis = headers.get('retry-after-ms');
  if (millis !== null && Number.isFinite(Number.parseFloat(millis))) {
    return Math.max(Number.parseFloat(millis) / 1000, 0);
  }
  const value = headers.get('retry-after')?.trim();
  if (value === undefined || value === '') return null;
  if (/^\d+(\.\d+)?$/.test(value)) return Number.parseFloat(value);
  const when = Date.parse(value);
  if (Number.isNaN(when)) return null;
  return Math.max((when - now) / 1000, 0);
}

/**
 * Seconds to wait before the next try: the server's Retry-After when it is under a minute, else 0.5 s
 * doubled per retry, capped at 8 s, less up to a quarter at random (as the openai SDKs).
 */
export function retryDelay(retriesDone: number, headers: Headers | null): number {
  if (headers !== null) {
    const retryAfter = parseRetryAfter(headers);
    if (retryAfter !== null && retryAfter >= 0 && retryAfter < MAX_RETRY_AFTER_S) return retryAfter;
  }
  const delay = Math.min(INITIAL_RETRY_DELAY_S * 2 ** retriesDone, MAX_RETRY_DELAY_S);
  return delay * (1 - 0.25 * Math.random());
}
