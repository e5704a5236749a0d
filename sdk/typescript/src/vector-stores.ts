/**
 * `client.vectorStores`: stores, their files and file batches, search, and the poll helpers, named and shaped as
 * in the official openai SDK (`files.uploadAndPoll(vectorStoreId, file)`, `fileBatches.createAndPoll(...)`).
 * Uploads from the helpers use purpose "assistants", as openai's do.
 */

import type { APIClient, FinalRequest } from './core.js';
import { OzwellError } from './errors.js';
import type { RequestOptions, Uploadable } from './types.js';
import { multipartUpload } from './uploads.js';
import type {
  BatchUploadOptions,
  BatchUploadParams,
  CursorPageParams,
  FileBatchCreateParams,
  PollOptions,
  UploadAndPollOptions,
  VectorStore,
  VectorStoreCreateParams,
  VectorStoreDeleted,
  VectorStoreFile,
  VectorStoreFileBatch,
  VectorStoreFileContent,
  VectorStoreFileCreateParams,
  VectorStoreFileDeleted,
  VectorStoreFileList,
  VectorStoreFileListParams,
  VectorStoreList,
  VectorStoreSearchParams,
  VectorStoreSearchResultsPage,
  VectorStoreUpdateParams,
} from './vector-store-types.js';

const DEFAULT_POLL_INTERVAL_MS = 1000;
const ASSISTANTS = 'assistants';

/** A poll helper's `maxWaitMs` passed; the server goes on indexing. */
export class PollTimeoutError extends OzwellError {
  override name = 'PollTimeoutError';
}

const segment = (id: string): string => {
  if (!id) throw new TypeError('an id must not be empty');
  return encodeURIComponent(id);
};
const storePath = (storeId: string, suffix = '') => `/vector_stores/${segment(storeId)}${suffix}`;
const filePath = (storeId: string, fileId: string, suffix = '') => storePath(storeId, `/files/${segment(fileId)}${suffix}`);
const batchPath = (storeId: string, batchId: string, suffix = '') => storePath(storeId, `/file_batches/${segment(batchId)}${suffix}`);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** GET `request` until `settled` says it is done, waiting the caller's interval or the server's hint between tries. */
async function poll<T>(client: APIClient, request: FinalRequest, settled: (value: T) => boolean, what: string,
  options: PollOptions): Promise<T> {
  const deadline = options.maxWaitMs === undefined ? null : performance.now() + options.maxWaitMs;
  for (;;) {
    if (deadline !== null && performance.now() >= deadline) throw new PollTimeoutError(`Timed out waiting for ${what} to finish processing`);
    const { data, headers } = await client.requestWithHeaders<T>(request);
    if (settled(data)) return data;
    const hint = Number(headers.get('openai-poll-after-ms'));
    let wait = options.pollIntervalMs ?? (Number.isFinite(hint) && hint > 0 ? hint : DEFAULT_POLL_INTERVAL_MS);
    if (deadline !== null) wait = Math.max(Math.min(wait, deadline - performance.now()), 0);
    await sleep(wait);
  }
}

async function uploadFile(client: APIClient, file: Uploadable): Promise<string> {
  const upload = multipartUpload(file, ASSISTANTS);
  return (await client.requestJSON<{ id: string }>({ method: 'POST', path: '/files', upload })).id;
}

abstract class Resource {
  constructor(protected readonly client: APIClient) {}
}

export class VectorStoreFiles extends Resource {
  /** Attach an uploaded file (purpose assistants or user_data); it is indexed in the background. */
  create(vectorStoreId: string, body: VectorStoreFileCreateParams, options?: RequestOptions): Promise<VectorStoreFile> {
    return this.client.requestJSON({ method: 'POST', path: storePath(vectorStoreId, '/files'), body, options });
  }

  retrieve(fileId: string, params: { vector_store_id: string }, options?: RequestOptions): Promise<VectorStoreFile> {
    return this.client.requestJSON({ method: 'GET', path: filePath(params.vector_store_id, fileId), options });
  }

  update(fileId: string, params: { vector_store_id: string; attributes: VectorStoreFileCreateParams['attributes'] },
    options?: RequestOptions): Promise<VectorStoreFile> {
    const body = { attributes: params.attributes ?? null };
    return this.client.requestJSON({ method: 'POST', path: filePath(params.vector_store_id, fileId), body, options });
  }

  list(vectorStoreId: string, params: VectorStoreFileListParams = {}, options?: RequestOptions): Promise<VectorStoreFileList> {
    return this.client.requestJSON({ method: 'GET', path: storePath(vectorStoreId, '/files'), query: { ...params }, options });
  }

  /** Detach the file from the store (its chunks leave search); the uploaded file itself stays. */
  delete(fileId: string, params: { vector_store_id: string }, options?: RequestOptions): Promise<VectorStoreFileDeleted> {
    return this.client.requestJSON({ method: 'DELETE', path: filePath(params.vector_store_id, fileId), options });
  }

  /** The file's parsed text as indexed, chunk by chunk. */
  content(fileId: string, params: { vector_store_id: string }, options?: RequestOptions): Promise<VectorStoreFileContent> {
    return this.client.requestJSON({ method: 'GET', path: filePath(params.vector_store_id, fileId, '/content'), options });
  }

  /** Wait until the file is no longer in_progress; it may have failed (check status and last_error). */
  poll(vectorStoreId: string, fileId: string, options: PollOptions = {}): Promise<VectorStoreFile> {
    return poll<VectorStoreFile>(this.client, { method: 'GET', path: filePath(vectorStoreId, fileId) },
      (file) => file.status !== 'in_progress', `vector store file ${fileId}`, options);
  }

  async createAndPoll(vectorStoreId: string, body: VectorStoreFileCreateParams, options: PollOptions = {}): Promise<VectorStoreFile> {
    const file = await this.create(vectorStoreId, body);
    return this.poll(vectorStoreId, file.id, options);
  }

  /** Upload a file (a path, bytes, a File or a stream) and attach it, without waiting. */
  async upload(vectorStoreId: string, file: Uploadable, options: Omit<UploadAndPollOptions, keyof PollOptions> = {}): Promise<VectorStoreFile> {
    return this.create(vectorStoreId, { file_id: await uploadFile(this.client, file), ...options });
  }

  /** Upload a file, attach it and wait until it is indexed (or failed: check status and last_error). */
  async uploadAndPoll(vectorStoreId: string, file: Uploadable, options: UploadAndPollOptions = {}): Promise<VectorStoreFile> {
    const { pollIntervalMs, maxWaitMs, ...attach } = options;
    const fileId = await uploadFile(this.client, file);
    return this.createAndPoll(vectorStoreId, { file_id: fileId, ...attach }, { pollIntervalMs, maxWaitMs });
  }
}

export class VectorStoreFileBatches extends Resource {
  /** Attach up to 2,000 files at once. */
  create(vectorStoreId: string, body: FileBatchCreateParams, options?: RequestOptions): Promise<VectorStoreFileBatch> {
    return this.client.requestJSON({ method: 'POST', path: storePath(vectorStoreId, '/file_batches'), body, options });
  }

  retrieve(batchId: string, params: { vector_store_id: string }, options?: RequestOptions): Promise<VectorStoreFileBatch> {
    return this.client.requestJSON({ method: 'GET', path: batchPath(params.vector_store_id, batchId), options });
  }

  /** Cancel the batch's files not yet indexed. */
  cancel(batchId: string, params: { vector_store_id: string }, options?: RequestOptions): Promise<VectorStoreFileBatch> {
    return this.client.requestJSON({ method: 'POST', path: batchPath(params.vector_store_id, batchId, '/cancel'), options });
  }

  listFiles(batchId: string, params: VectorStoreFileListParams & { vector_store_id: string }, options?: RequestOptions): Promise<VectorStoreFileList> {
    const { vector_store_id, ...query } = params;
    return this.client.requestJSON({ method: 'GET', path: batchPath(vector_store_id, batchId, '/files'), query: { ...query }, options });
  }

  /** Wait until none of the batch's files is in_progress; some may have failed (check file_counts). */
  poll(vectorStoreId: string, batchId: string, options: PollOptions = {}): Promise<VectorStoreFileBatch> {
    return poll<VectorStoreFileBatch>(this.client, { method: 'GET', path: batchPath(vectorStoreId, batchId) },
      (batch) => batch.file_counts.in_progress === 0, `vector store file batch ${batchId}`, options);
  }

  async createAndPoll(vectorStoreId: string, body: FileBatchCreateParams, options: PollOptions = {}): Promise<VectorStoreFileBatch> {
    const batch = await this.create(vectorStoreId, body);
    return this.poll(vectorStoreId, batch.id, options);
  }

  /** Upload `files` (up to `maxConcurrency` at a time, default 5; the first failure rejects), then make one batch of them and `fileIds` and wait for it. */
  async uploadAndPoll(vectorStoreId: string, { files, fileIds = [] }: BatchUploadParams, options: BatchUploadOptions = {}): Promise<VectorStoreFileBatch> {
    const { maxConcurrency = 5, chunking_strategy, ...wait } = options;
    const uploaded: string[] = new Array(files.length);
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < files.length; i = next++) uploaded[i] = await uploadFile(this.client, files[i] as Uploadable);
    };
    await Promise.all(Array.from({ length: Math.max(Math.min(maxConcurrency, files.length), 1) }, worker));
    const body: FileBatchCreateParams = { file_ids: [...fileIds, ...uploaded] };
    if (chunking_strategy !== undefined) body.chunking_strategy = chunking_strategy;
    return this.createAndPoll(vectorStoreId, body, wait);
  }
}

export class VectorStores extends Resource {
  readonly files = new VectorStoreFiles(this.client);
  readonly fileBatches = new VectorStoreFileBatches(this.client);

  /** A new store; `file_ids` are attached and indexed in the background. */
  create(body: VectorStoreCreateParams = {}, options?: RequestOptions): Promise<VectorStore> {
    return this.client.requestJSON({ method: 'POST', path: '/vector_stores', body, options });
  }

  retrieve(vectorStoreId: string, options?: RequestOptions): Promise<VectorStore> {
    return this.client.requestJSON({ method: 'GET', path: storePath(vectorStoreId), options });
  }

  update(vectorStoreId: string, body: VectorStoreUpdateParams, options?: RequestOptions): Promise<VectorStore> {
    return this.client.requestJSON({ method: 'POST', path: storePath(vectorStoreId), body, options });
  }

  /** A page of stores, newest first by default; pass the page's `last_id` as `after` for the next. */
  list(params: CursorPageParams = {}, options?: RequestOptions): Promise<VectorStoreList> {
    return this.client.requestJSON({ method: 'GET', path: '/vector_stores', query: { ...params }, options });
  }

  /** Delete the store and its index; the uploaded files stay. */
  delete(vectorStoreId: string, options?: RequestOptions): Promise<VectorStoreDeleted> {
    return this.client.requestJSON({ method: 'DELETE', path: storePath(vectorStoreId), options });
  }

  /** The store's chunks nearest the query (vector and keyword scores fused), best first. */
  search(vectorStoreId: string, body: VectorStoreSearchParams, options?: RequestOptions): Promise<VectorStoreSearchResultsPage> {
    return this.client.requestJSON({ method: 'POST', path: storePath(vectorStoreId, '/search'), body, options });
  }
}
