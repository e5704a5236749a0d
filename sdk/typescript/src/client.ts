/** OzwellClient and its resources. */

import { APIClient, type ClientOptions } from './core.js';
import { RESPONSE_FINAL_EVENTS, type Stream } from './streaming.js';
import {
  outputText,
  type ApiKeyCreated,
  type ApiKeyList,
  type ApiKeyRevoked,
  type Batch,
  type BatchCreateParams,
  type BatchList,
  type BatchListParams,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ChatCompletionCreateParams,
  type ChatCompletionCreateParamsNonStreaming,
  type ChatCompletionCreateParamsStreaming,
  type Completion,
  type CompletionCreateParams,
  type CompletionCreateParamsNonStreaming,
  type CompletionCreateParamsStreaming,
  type CreateEmbeddingResponse,
  type EmbeddingCreateParams,
  type FileCreateParams,
  type FileDeleted,
  type FileList,
  type FileListParams,
  type FileObject,
  type InputItemsListParams,
  type KeyCreateParams,
  type Model,
  type ModelList,
  type RequestOptions,
  type Response,
  type ResponseCreateParams,
  type ResponseRetrieveStreamParams,
  type ResponseCreateParamsNonStreaming,
  type ResponseCreateParamsStreaming,
  type ResponseDeleted,
  type ResponseInputItemList,
  type ResponseStreamEvent,
  type UsageList,
  type UsageParams,
} from './types.js';
import { StoredChatCompletions } from './stored-chat.js';
import { multipartUpload } from './uploads.js';
import { VectorStores } from './vector-stores.js';

const segment = (id: string): string => {
  if (!id) throw new TypeError('an id must not be empty');
  return encodeURIComponent(id);
};

abstract class Resource {
  constructor(protected readonly client: APIClient) {}
}

/** POST /chat/completions, and (from StoredChatCompletions) the stored ones' list, retrieve, update, delete and messages. */
export class ChatCompletions extends StoredChatCompletions {
  /** POST /chat/completions; with `stream: true`, a Stream of chunks (`for await`). */
  create(body: ChatCompletionCreateParamsNonStreaming, options?: RequestOptions): Promise<ChatCompletion>;
  create(body: ChatCompletionCreateParamsStreaming, options?: RequestOptions): Promise<Stream<ChatCompletionChunk>>;
  create(body: ChatCompletionCreateParams, options?: RequestOptions): Promise<ChatCompletion | Stream<ChatCompletionChunk>>;
  create(body: ChatCompletionCreateParams, options?: RequestOptions): Promise<ChatCompletion | Stream<ChatCompletionChunk>> {
    const request = { method: 'POST', path: '/chat/completions', body, options } as const;
    return body.stream ? this.client.requestStream<ChatCompletionChunk>(request) : this.client.requestJSON<ChatCompletion>(request);
  }
}

export class Chat extends Resource {
  readonly completions = new ChatCompletions(this.client);
}

export class Completions extends Resource {
  /** POST /completions (legacy text completions); with `stream: true`, a Stream of Completion chunks. */
  create(body: CompletionCreateParamsNonStreaming, options?: RequestOptions): Promise<Completion>;
  create(body: CompletionCreateParamsStreaming, options?: RequestOptions): Promise<Stream<Completion>>;
  create(body: CompletionCreateParams, options?: RequestOptions): Promise<Completion | Stream<Completion>>;
  create(body: CompletionCreateParams, options?: RequestOptions): Promise<Completion | Stream<Completion>> {
    const request = { method: 'POST', path: '/completions', body, options } as const;
    return body.stream ? this.client.requestStream<Completion>(request) : this.client.requestJSON<Completion>(request);
  }
}

export class Embeddings extends Resource {
  create(body: EmbeddingCreateParams, options?: RequestOptions): Promise<CreateEmbeddingResponse> {
    return this.client.requestJSON({ method: 'POST', path: '/embeddings', body, options });
  }
}

export class Models extends Resource {
  /** The models this key may use. */
  list(options?: RequestOptions): Promise<ModelList> {
    return this.client.requestJSON({ method: 'GET', path: '/models', options });
  }

  /** One model, with `ozwell`: engine, device, task, revision, max_model_len, state. */
  retrieve(model: string, options?: RequestOptions): Promise<Model> {
    return this.client.requestJSON({ method: 'GET', path: `/models/${segment(model)}`, options });
  }
}

export class Files extends Resource {
  /** Upload from a path, bytes, a Blob or a stream (sent as it is read; a stream is not retried). */
  create(params: FileCreateParams, options?: RequestOptions): Promise<FileObject> {
    const upload = multipartUpload(params.file, params.purpose, params.filename);
    return this.client.requestJSON({ method: 'POST', path: '/files', upload, options });
  }

  list(params: FileListParams = {}, options?: RequestOptions): Promise<FileList> {
    return this.client.requestJSON({ method: 'GET', path: '/files', query: { ...params }, options });
  }

  retrieve(fileId: string, options?: RequestOptions): Promise<FileObject> {
    return this.client.requestJSON({ method: 'GET', path: `/files/${segment(fileId)}`, options });
  }

  /** The file's bytes. */
  content(fileId: string, options?: RequestOptions): Promise<Uint8Array> {
    return this.client.requestBytes({ method: 'GET', path: `/files/${segment(fileId)}/content`, options });
  }

  delete(fileId: string, options?: RequestOptions): Promise<FileDeleted> {
    return this.client.requestJSON({ method: 'DELETE', path: `/files/${segment(fileId)}`, options });
  }
}

export class Batches extends Resource {
  /** Run an uploaded `purpose: 'batch'` JSONL file behind interactive traffic; poll it with `retrieve`. */
  create(params: BatchCreateParams, options?: RequestOptions): Promise<Batch> {
    const body = { completion_window: '24h', ...params };
    return this.client.requestJSON({ method: 'POST', path: '/batches', body, options });
  }

  retrieve(batchId: string, options?: RequestOptions): Promise<Batch> {
    return this.client.requestJSON({ method: 'GET', path: `/batches/${segment(batchId)}`, options });
  }

  list(params: BatchListParams = {}, options?: RequestOptions): Promise<BatchList> {
    return this.client.requestJSON({ method: 'GET', path: '/batches', query: { ...params }, options });
  }

  cancel(batchId: string, options?: RequestOptions): Promise<Batch> {
    return this.client.requestJSON({ method: 'POST', path: `/batches/${segment(batchId)}/cancel`, options });
  }
}

/** A Response with `output_text`, the text of its output_text parts joined (added by the SDK). */
export type ResponseWithText = Response & { output_text: string };

function withText(response: Response): ResponseWithText {
  return Object.assign(response, { output_text: outputText(response) });
}

export class Responses extends Resource {
  /**
   * POST /responses; with `stream: true`, a Stream of typed semantic events ending with
   * response.completed, response.incomplete or response.failed.
   */
  create(body: ResponseCreateParamsNonStreaming, options?: RequestOptions): Promise<ResponseWithText>;
  create(body: ResponseCreateParamsStreaming, options?: RequestOptions): Promise<Stream<ResponseStreamEvent>>;
  create(body: ResponseCreateParams, options?: RequestOptions): Promise<ResponseWithText | Stream<ResponseStreamEvent>>;
  async create(body: ResponseCreateParams, options?: RequestOptions): Promise<ResponseWithText | Stream<ResponseStreamEvent>> {
    const request = { method: 'POST', path: '/responses', body, options } as const;
    if (body.stream) return this.client.requestStream<ResponseStreamEvent>(request, RESPONSE_FINAL_EVENTS);
    return withText(await this.client.requestJSON<Response>(request));
  }

  retrieve(responseId: string, options?: RequestOptions): Promise<ResponseWithText>;
  retrieve(responseId: string, params: ResponseRetrieveStreamParams, options?: RequestOptions): Promise<Stream<ResponseStreamEvent>>;
  async retrieve(responseId: string, paramsOrOptions?: ResponseRetrieveStreamParams | RequestOptions,
                 options?: RequestOptions): Promise<ResponseWithText | Stream<ResponseStreamEvent>> {
    const path = `/responses/${segment(responseId)}`;
    if (paramsOrOptions && 'stream' in paramsOrOptions && paramsOrOptions.stream) {
      const query = { stream: 'true', starting_after: paramsOrOptions.starting_after };
      return this.client.requestStream<ResponseStreamEvent>({ method: 'GET', path, query, options }, RESPONSE_FINAL_EVENTS);
    }
    return withText(await this.client.requestJSON<Response>({ method: 'GET', path, options: paramsOrOptions as RequestOptions | undefined }));
  }

  delete(responseId: string, options?: RequestOptions): Promise<ResponseDeleted> {
    return this.client.requestJSON({ method: 'DELETE', path: `/responses/${segment(responseId)}`, options });
  }

  /** POST /responses/{id}/cancel: stop a background response; it ends `cancelled`. */
  async cancel(responseId: string, options?: RequestOptions): Promise<ResponseWithText> {
    return withText(await this.client.requestJSON<Response>({ method: 'POST', path: `/responses/${segment(responseId)}/cancel`, options }));
  }

  /** The input items of a stored response. */
  inputItems(responseId: string, params: InputItemsListParams = {}, options?: RequestOptions): Promise<ResponseInputItemList> {
    return this.client.requestJSON({ method: 'GET', path: `/responses/${segment(responseId)}/input_items`, query: { ...params }, options });
  }
}

export class Keys extends Resource {
  /** A key for the calling admin key's own owner; the answer's `key` is the only time the secret is shown. */
  create(body: KeyCreateParams, options?: RequestOptions): Promise<ApiKeyCreated> {
    return this.client.requestJSON({ method: 'POST', path: '/admin/keys', body, options });
  }

  /** This owner's keys, revoked ones included (no secrets). */
  list(options?: RequestOptions): Promise<ApiKeyList> {
    return this.client.requestJSON({ method: 'GET', path: '/admin/keys', options });
  }

  /** Revokes a key at once. */
  revoke(keyId: string, options?: RequestOptions): Promise<ApiKeyRevoked> {
    return this.client.requestJSON({ method: 'DELETE', path: `/admin/keys/${segment(keyId)}`, options });
  }
}

/** The admin API (admin-scoped keys): keys and usage of the key's own owner. */
export class Admin extends Resource {
  readonly keys = new Keys(this.client);

  /** Usage records, newest first. */
  usage(params: UsageParams = {}, options?: RequestOptions): Promise<UsageList> {
    const since = params.since instanceof Date ? Math.floor(params.since.getTime() / 1000) : params.since;
    return this.client.requestJSON({ method: 'GET', path: '/admin/usage', query: { key_id: params.key_id, since, limit: params.limit }, options });
  }
}

/**
 * The Ozwell client. `apiKey` defaults to OZWELL_API_KEY; `baseURL` to OZWELL_BASE_URL, then
 * http://127.0.0.1:8000/v1; `timeout` is in milliseconds (default 600000); `maxRetries` defaults to 2.
 */
export class OzwellClient extends APIClient {
  readonly chat: Chat;
  readonly completions: Completions;
  readonly embeddings: Embeddings;
  readonly models: Models;
  readonly files: Files;
  readonly batches: Batches;
  readonly responses: Responses;
  readonly vectorStores: VectorStores;
  readonly admin: Admin;

  constructor(options: ClientOptions = {}) {
    super(options);
    this.chat = new Chat(this);
    this.completions = new Completions(this);
    this.embeddings = new Embeddings(this);
    this.models = new Models(this);
    this.files = new Files(this);
    this.batches = new Batches(this);
    this.responses = new Responses(this);
    this.vectorStores = new VectorStores(this);
    this.admin = new Admin(this);
  }
}
