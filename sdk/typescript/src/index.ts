export { OzwellClient, Chat, ChatCompletions, Completions, Embeddings, Models, Files, Batches, Responses, Keys, Admin } from './client.js';
export type { ResponseWithText } from './client.js';
export { StoredChatCompletions, ChatCompletionMessages } from './stored-chat.js';
export type {
  ChatCompletionDeleted,
  ChatCompletionList,
  ChatCompletionListParams,
  ChatCompletionMessageList,
  ChatCompletionStoreMessage,
  ChatCompletionUpdateParams,
  MessageListParams,
} from './stored-chat.js';
export { VectorStores, VectorStoreFiles, VectorStoreFileBatches, PollTimeoutError } from './vector-stores.js';
export { DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS, type ClientOptions } from './core.js';
export {
  OzwellError,
  APIError,
  APIStatusError,
  BadRequestError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  UnprocessableEntityError,
  RateLimitError,
  InternalServerError,
  APIConnectionError,
  APITimeoutError,
  StreamInterruptedError,
} from './errors.js';
export { parseRateLimit, parseRetryAfter, retryDelay, type RateLimitInfo } from './ratelimit.js';
export { Stream, RESPONSE_FINAL_EVENTS } from './streaming.js';
export { outputText } from './types.js';
export type * from './types.js';
export type * from './vector-store-types.js';
export { VERSION } from './version.js';
