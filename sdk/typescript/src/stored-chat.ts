/**
 * Stored chat completions (created with `store: true`): `chat.completions.list/retrieve/update/delete` and
 * `chat.completions.messages.list`, named and shaped as in the official openai SDK. The create call stays in
 * client.ts; its ChatCompletions extends StoredChatCompletions.
 */

import type { APIClient } from './core.js';
import type { ChatCompletion, ChatCompletionMessageToolCall, RequestOptions } from './types.js';

export interface ChatCompletionListParams {
  model?: string;
  /** Each pair must match (sent as `metadata[key]=value`). */
  metadata?: Record<string, string>;
  after?: string;
  limit?: number;
  order?: 'asc' | 'desc';
}
export interface ChatCompletionList {
  object: 'list';
  data: ChatCompletion[];
  first_id: string;
  last_id: string;
  has_more: boolean;
}
export interface ChatCompletionUpdateParams { metadata: Record<string, string> | null }
export interface ChatCompletionDeleted { id: string; object: 'chat.completion.deleted'; deleted: boolean }
export interface MessageListParams { after?: string; limit?: number; order?: 'asc' | 'desc' }
/** A message of a stored completion's request, with its id (`{completion_id}-{index}`). */
export interface ChatCompletionStoreMessage {
  id: string;
  role: string;
  content: string | null;
  name?: string | null;
  content_parts?: Array<Record<string, unknown>> | null;
  tool_calls?: ChatCompletionMessageToolCall[];
  tool_call_id?: string;
}
export interface ChatCompletionMessageList {
  object: 'list';
  data: ChatCompletionStoreMessage[];
  first_id: string;
  last_id: string;
  has_more: boolean;
}

const path = (completionId: string, suffix = ''): string => {
  if (!completionId) throw new TypeError('an id must not be empty');
  return `/chat/completions/${encodeURIComponent(completionId)}${suffix}`;
};

export class ChatCompletionMessages {
  constructor(protected readonly client: APIClient) {}

  /** GET /chat/completions/{id}/messages: the stored completion's request messages. */
  list(completionId: string, params: MessageListParams = {}, options?: RequestOptions): Promise<ChatCompletionMessageList> {
    return this.client.requestJSON({ method: 'GET', path: path(completionId, '/messages'), query: { ...params }, options });
  }
}

/** The base of `chat.completions`: the calls on completions created with `store: true`. */
export class StoredChatCompletions {
  readonly messages: ChatCompletionMessages;

  constructor(protected readonly client: APIClient) {
    this.messages = new ChatCompletionMessages(client);
  }

  /** GET /chat/completions: stored completions, oldest first unless `order: 'desc'`. */
  list(params: ChatCompletionListParams = {}, options?: RequestOptions): Promise<ChatCompletionList> {
    const { metadata, ...rest } = params;
    const query: Record<string, string | number | undefined> = { ...rest };
    for (const [key, value] of Object.entries(metadata ?? {})) query[`metadata[${key}]`] = value;
    return this.client.requestJSON({ method: 'GET', path: '/chat/completions', query, options });
  }

  retrieve(completionId: string, options?: RequestOptions): Promise<ChatCompletion> {
    return this.client.requestJSON({ method: 'GET', path: path(completionId), options });
  }

  /** POST /chat/completions/{id}: replace its metadata (the only field that can change). */
  update(completionId: string, body: ChatCompletionUpdateParams, options?: RequestOptions): Promise<ChatCompletion> {
    return this.client.requestJSON({ method: 'POST', path: path(completionId), body, options });
  }

  delete(completionId: string, options?: RequestOptions): Promise<ChatCompletionDeleted> {
    return this.client.requestJSON({ method: 'DELETE', path: path(completionId), options });
  }
}
