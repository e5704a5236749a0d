/**
 * Request and response types, after OpenAI's spec plus Ozwell's extensions (`ozwell` on models and
 * responses, the admin API). Responses may carry fields not named here; they are kept as sent.
 */

// ---- shared -------------------------------------------------------------------------------------

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

// ---- chat ---------------------------------------------------------------------------------------

export interface TextContentPart { type: 'text'; text: string }
export interface ImageContentPart { type: 'image_url'; image_url: { url: string; detail?: 'auto' | 'low' | 'high' } }
export type ContentPart = TextContentPart | ImageContentPart;

export interface SystemMessageParam { role: 'system'; content: string | TextContentPart[]; name?: string }
export interface DeveloperMessageParam { role: 'developer'; content: string | TextContentPart[]; name?: string }
export interface UserMessageParam { role: 'user'; content: string | ContentPart[]; name?: string }
export interface ToolCallParam { id: string; type: 'function'; function: { name: string; arguments: string } }
export interface AssistantMessageParam {
  role: 'assistant';
  content?: string | TextContentPart[] | null;
  name?: string;
  tool_calls?: ToolCallParam[];
}
export interface ToolMessageParam { role: 'tool'; content: string | TextContentPart[]; tool_call_id: string }
export type ChatCompletionMessageParam =
  | SystemMessageParam
  | DeveloperMessageParam
  | UserMessageParam
  | AssistantMessageParam
  | ToolMessageParam;

export interface FunctionDefinition {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
  strict?: boolean | null;
}
export interface ChatCompletionTool { type: 'function'; function: FunctionDefinition }
export type ToolChoice = 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name: string; description?: string; schema?: Record<string, unknown>; strict?: boolean | null } };

export interface ChatCompletionCreateParamsBase {
  model: string;
  messages: ChatCompletionMessageParam[];
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  n?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  tools?: ChatCompletionTool[];
  tool_choice?: ToolChoice;
  parallel_tool_calls?: boolean;
  response_format?: ResponseFormat;
  stream_options?: { include_usage?: boolean } | null;
  /** Keep the completion for `chat.completions.list/retrieve/update/delete`. */
  store?: boolean | null;
  metadata?: Record<string, string> | null;
  user?: string;
  [extra: string]: unknown;
}
export interface ChatCompletionCreateParamsNonStreaming extends ChatCompletionCreateParamsBase { stream?: false | null }
export interface ChatCompletionCreateParamsStreaming extends ChatCompletionCreateParamsBase { stream: true }
export type ChatCompletionCreateParams = ChatCompletionCreateParamsNonStreaming | ChatCompletionCreateParamsStreaming;

export interface ChatCompletionMessageToolCall { id: string; type: 'function'; function: { name: string; arguments: string } }
export interface ChatCompletionMessage {
  role: 'assistant';
  content: string | null;
  refusal?: string | null;
  tool_calls?: ChatCompletionMessageToolCall[];
}
export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{ index: number; message: ChatCompletionMessage; finish_reason: string | null; logprobs: Record<string, unknown> | null }>;
  usage: CompletionUsage;
  /** A stored completion's (`store: true`). */
  metadata?: Record<string, string>;
}
export interface ChoiceDeltaToolCall {
  index: number;
  id?: string;
  type?: 'function';
  function?: { name?: string; arguments?: string };
}
export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    delta: { role?: 'assistant'; content?: string | null; refusal?: string | null; tool_calls?: ChoiceDeltaToolCall[] };
    finish_reason: string | null;
    logprobs?: Record<string, unknown> | null;
  }>;
  usage?: CompletionUsage | null;
}

// ---- completions and embeddings -----------------------------------------------------------------

export interface CompletionCreateParamsBase {
  model: string;
  prompt: string | string[] | number[] | number[][];
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  n?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  echo?: boolean | null;
  logprobs?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  suffix?: string | null;
  stream_options?: { include_usage?: boolean } | null;
  user?: string;
  [extra: string]: unknown;
}
export interface CompletionCreateParamsNonStreaming extends CompletionCreateParamsBase { stream?: false | null }
export interface CompletionCreateParamsStreaming extends CompletionCreateParamsBase { stream: true }
export type CompletionCreateParams = CompletionCreateParamsNonStreaming | CompletionCreateParamsStreaming;

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: Array<{ index: number; text: string; finish_reason: string | null; logprobs: Record<string, unknown> | null }>;
  usage?: CompletionUsage | null;
}

export interface EmbeddingCreateParams {
  model: string;
  input: string | string[] | number[] | number[][];
  dimensions?: number;
  encoding_format?: 'float' | 'base64';
  user?: string;
}
export interface Embedding { object: 'embedding'; index: number; embedding: number[] | string }
export interface CreateEmbeddingResponse {
  object: 'list';
  data: Embedding[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

// ---- models -------------------------------------------------------------------------------------

/** Ozwell's extension of a retrieved model: where and how it runs. */
export interface ModelDetails {
  model: string;
  task: string;
  engine: string;
  device: string;
  requested_device?: string;
  revision?: string | null;
  max_model_len?: number;
  /** Whether the model is in memory now (`ozwell serve --lazy`, `load: on_demand`, `keep_alive`). */
  state?: 'loaded' | 'loading' | 'unloaded' | 'draining';
  load?: 'startup' | 'on_demand';
  /** The tokens its share of the KV-cache budget holds. */
  kv_cache_tokens?: number;
  kv_cache_gib?: number;
  keep_alive_s?: number;
  load_error?: string;
}
export interface Model {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  ozwell?: ModelDetails;
}
export interface ModelList { object: 'list'; data: Model[] }

// ---- files --------------------------------------------------------------------------------------

export type FilePurpose = 'assistants' | 'batch' | 'fine-tune' | 'vision' | 'user_data' | 'evals';
/**
 * An upload: a path (a string), bytes, a Blob, a web ReadableStream or any async iterable of bytes (such
 * as a Node stream). Streams are sent as they are read, and are not retried.
 */
export type Uploadable = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;
export interface FileCreateParams {
  file: Uploadable;
  purpose: FilePurpose | (string & {});
  /** Defaults to the path's base name, a File's name, or "upload". */
  filename?: string;
}
export interface FileObject {
  id: string;
  object: 'file';
  bytes: number;
  created_at: number;
  expires_at?: number | null;
  filename: string;
  purpose: string;
  status?: string;
  status_details?: string | null;
}
export interface FileListParams { purpose?: string; limit?: number; order?: 'asc' | 'desc'; after?: string }
export interface FileList { object: 'list'; data: FileObject[]; first_id?: string | null; last_id?: string | null; has_more?: boolean }
export interface FileDeleted { id: string; object: string; deleted: boolean }

// ---- batches ------------------------------------------------------------------------------------

export type BatchEndpoint = '/v1/chat/completions' | '/v1/completions' | '/v1/embeddings' | '/v1/responses';
export type BatchStatus =
  | 'validating' | 'failed' | 'in_progress' | 'finalizing' | 'completed' | 'expired' | 'cancelling' | 'cancelled';
export interface BatchCreateParams {
  input_file_id: string;
  endpoint: BatchEndpoint;
  completion_window?: '24h';
  metadata?: Record<string, string> | null;
  output_expires_after?: { anchor: 'created_at'; seconds: number };
}
export interface BatchError { code?: string; message?: string; param?: string | null; line?: number | null }
export interface BatchRequestCounts { total: number; completed: number; failed: number }
export interface Batch {
  id: string;
  object: 'batch';
  endpoint: string;
  input_file_id: string;
  completion_window: string;
  status: BatchStatus;
  created_at: number;
  expires_at?: number;
  in_progress_at?: number;
  finalizing_at?: number;
  completed_at?: number;
  failed_at?: number;
  expired_at?: number;
  cancelling_at?: number;
  cancelled_at?: number;
  model?: string;
  output_file_id?: string;
  error_file_id?: string;
  errors?: { object?: string; data?: BatchError[] };
  request_counts?: BatchRequestCounts;
  usage?: { input_tokens: number; output_tokens: number; total_tokens: number };
  metadata?: Record<string, string> | null;
}
export interface BatchListParams { limit?: number; after?: string }
export interface BatchList { object: 'list'; data: Batch[]; first_id?: string; last_id?: string; has_more: boolean }

// ---- responses ----------------------------------------------------------------------------------

export interface ResponseInputText { type: 'input_text'; text: string }
export interface ResponseInputFile { type: 'input_file'; file_id?: string; file_data?: string; filename?: string }
/** An image: `image_url` (a base64 data: URL; an http(s) URL only where the server allows it) or `file_id` (a
 * file uploaded with purpose 'vision' or 'user_data'). */
export interface ResponseInputImage {
  type: 'input_image';
  image_url?: string;
  file_id?: string;
  detail?: 'auto' | 'low' | 'high';
}
export type ResponseInputContent = ResponseInputText | ResponseInputImage | ResponseInputFile;
export interface ResponseInputMessage {
  type?: 'message';
  role: 'user' | 'assistant' | 'system' | 'developer';
  content: string | Array<ResponseInputContent | Record<string, unknown>>;
}
export interface FunctionCallOutput { type: 'function_call_output'; call_id: string; output: string }
export type ResponseInputItem = ResponseInputMessage | FunctionCallOutput | Record<string, unknown>;
export interface ResponseFunctionTool {
  type: 'function';
  name: string;
  description?: string | null;
  parameters?: Record<string, unknown> | null;
  strict?: boolean | null;
}

export interface ResponseCreateParamsBase {
  model: string;
  input: string | ResponseInputItem[];
  instructions?: string | null;
  previous_response_id?: string | null;
  store?: boolean | null;
  max_output_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  tools?: ResponseFunctionTool[];
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; name: string };
  parallel_tool_calls?: boolean | null;
  text?: { format?: { type: 'text' | 'json_object' | 'json_schema'; name?: string; schema?: Record<string, unknown>; strict?: boolean | null } };
  truncation?: 'auto' | 'disabled' | null;
  metadata?: Record<string, string> | null;
  user?: string;
  /** Run detached from the connection (needs `store`); poll `retrieve`, stop with `cancel`. */
  background?: boolean | null;
  /** `file_search_call.results`: the search results in the file_search_call item. */
  include?: string[] | null;
  [extra: string]: unknown;
}
/** GET /responses/{id} again as a stream: a background response's events after `starting_after`. */
export interface ResponseRetrieveStreamParams { stream: true; starting_after?: number }
export interface ResponseCreateParamsNonStreaming extends ResponseCreateParamsBase { stream?: false | null }
export interface ResponseCreateParamsStreaming extends ResponseCreateParamsBase { stream: true }
export type ResponseCreateParams = ResponseCreateParamsNonStreaming | ResponseCreateParamsStreaming;

export interface ResponseOutputText { type: 'output_text'; text: string; annotations: unknown[]; logprobs?: unknown[] }
export interface ResponseOutputMessage {
  id: string;
  type: 'message';
  role: 'assistant';
  status: string;
  content: ResponseOutputText[];
}
export interface ResponseFunctionToolCall {
  type: 'function_call';
  id?: string;
  call_id: string;
  name: string;
  arguments: string;
  status?: string;
}
export type ResponseOutputItem = ResponseOutputMessage | ResponseFunctionToolCall;
export interface ResponseUsage {
  input_tokens: number;
  output_tokens: number;
  total_tokens: number;
  input_tokens_details?: Record<string, number>;
  output_tokens_details?: Record<string, number>;
}
/** Ozwell's extension of a response: the engine that ran it and its timings. */
export interface ResponseOzwell {
  engine: string;
  model_revision: string | null;
  queue_time_ms: number | null;
  time_to_first_token_ms: number | null;
  generation_tokens_per_s: number | null;
}
export interface Response {
  id: string;
  object: 'response';
  created_at: number;
  status: 'completed' | 'incomplete' | 'in_progress' | 'failed' | 'queued' | 'cancelled';
  completed_at?: number | null;
  error: Record<string, unknown> | null;
  incomplete_details: Record<string, unknown> | null;
  instructions: string | null;
  max_output_tokens: number | null;
  model: string;
  output: ResponseOutputItem[];
  parallel_tool_calls: boolean;
  previous_response_id: string | null;
  store: boolean;
  temperature: number;
  top_p: number;
  tool_choice: unknown;
  tools: unknown[];
  truncation: string;
  metadata: Record<string, string>;
  text: Record<string, unknown>;
  usage?: ResponseUsage;
  user?: string;
  ozwell: ResponseOzwell;
}
export interface ResponseDeleted { id: string; object: string; deleted: boolean }
export interface InputItemsListParams { limit?: number; order?: 'asc' | 'desc'; after?: string }
export interface ResponseInputItemList {
  object: 'list';
  data: Array<Record<string, unknown>>;
  first_id: string | null;
  last_id: string | null;
  has_more: boolean;
}

interface EventBase { sequence_number: number }
export interface ResponseCreatedEvent extends EventBase { type: 'response.created'; response: Response }
export interface ResponseInProgressEvent extends EventBase { type: 'response.in_progress'; response: Response }
export interface ResponseCompletedEvent extends EventBase { type: 'response.completed'; response: Response }
export interface ResponseIncompleteEvent extends EventBase { type: 'response.incomplete'; response: Response }
export interface ResponseFailedEvent extends EventBase { type: 'response.failed'; response: Response }
export interface ResponseOutputItemAddedEvent extends EventBase { type: 'response.output_item.added'; output_index: number; item: ResponseOutputItem }
export interface ResponseOutputItemDoneEvent extends EventBase { type: 'response.output_item.done'; output_index: number; item: ResponseOutputItem }
export interface ResponseContentPartAddedEvent extends EventBase {
  type: 'response.content_part.added'; item_id: string; output_index: number; content_index: number; part: ResponseOutputText;
}
export interface ResponseContentPartDoneEvent extends EventBase {
  type: 'response.content_part.done'; item_id: string; output_index: number; content_index: number; part: ResponseOutputText;
}
export interface ResponseTextDeltaEvent extends EventBase {
  type: 'response.output_text.delta'; item_id: string; output_index: number; content_index: number; delta: string; logprobs: unknown[];
}
export interface ResponseTextDoneEvent extends EventBase {
  type: 'response.output_text.done'; item_id: string; output_index: number; content_index: number; text: string; logprobs: unknown[];
}
export interface ResponseFunctionCallArgumentsDeltaEvent extends EventBase {
  type: 'response.function_call_arguments.delta'; item_id: string; output_index: number; delta: string;
}
export interface ResponseFunctionCallArgumentsDoneEvent extends EventBase {
  type: 'response.function_call_arguments.done'; item_id: string; output_index: number; name?: string; arguments: string;
}
/** The Responses API's semantic stream events, discriminated by `type`. */
export type ResponseStreamEvent =
  | ResponseCreatedEvent
  | ResponseInProgressEvent
  | ResponseCompletedEvent
  | ResponseIncompleteEvent
  | ResponseFailedEvent
  | ResponseOutputItemAddedEvent
  | ResponseOutputItemDoneEvent
  | ResponseContentPartAddedEvent
  | ResponseContentPartDoneEvent
  | ResponseTextDeltaEvent
  | ResponseTextDoneEvent
  | ResponseFunctionCallArgumentsDeltaEvent
  | ResponseFunctionCallArgumentsDoneEvent;

/** The text of every output_text part of a response, joined. */
export function outputText(response: Response): string {
  return response.output
    .flatMap((item) => (item.type === 'message' ? item.content.map((part) => part.text) : []))
    .join('');
}

// ---- the admin API ------------------------------------------------------------------------------

export interface ApiKey {
  id: string;
  object: 'api_key';
  name: string;
  owner: string;
  plan: string;
  prefix: string;
  scopes: string[];
  models: string[] | null;
  rpm: number | null;
  tpm: number | null;
  created_at: number | null;
  last_used_at: number | null;
  revoked_at: number | null;
}
/** A new key: `key` is the secret, shown only in this answer. */
export interface ApiKeyCreated extends ApiKey { key: string }
export interface ApiKeyRevoked extends ApiKey { revoked: boolean }
export interface ApiKeyList { object: 'list'; data: ApiKey[] }
export interface KeyCreateParams {
  name: string;
  plan?: string;
  owner?: string;
  rpm?: number;
  tpm?: number;
  scopes?: string[];
  models?: string[];
  admin?: boolean;
  operator?: boolean;
}
export interface UsageParams {
  key_id?: string;
  /** Epoch seconds or a Date. */
  since?: number | Date;
  limit?: number;
}
export interface UsageRecord {
  id: number;
  key_id: string | null;
  owner: string | null;
  model: string | null;
  endpoint: string;
  prompt_tokens: number;
  completion_tokens: number;
  status: number;
  latency_ms: number;
  created_at: number;
}
export interface UsageList { object: 'list'; data: UsageRecord[] }

/** Per-call options. */
export interface RequestOptions {
  headers?: Record<string, string>;
  query?: Record<string, string | number | boolean | undefined>;
  /** Milliseconds. */
  timeout?: number;
  maxRetries?: number;
  signal?: AbortSignal;
}
