/**
 * Vector store types, after OpenAI's spec (VectorStoreObject, VectorStoreFileObject, VectorStoreFileBatchObject,
 * the search page, the filters). Responses may carry fields not named here; they are kept as sent.
 */

import type { Uploadable } from './types.js';

export type AttributeValue = string | number | boolean;
export type Attributes = Record<string, AttributeValue>;
export type VectorStoreFileStatus = 'in_progress' | 'completed' | 'cancelled' | 'failed';
export type ChunkingStrategyParam =
  | { type: 'auto' }
  | { type: 'static'; static: { max_chunk_size_tokens: number; chunk_overlap_tokens: number } };
export interface ExpiresAfter { anchor: 'last_active_at'; days: number }
export interface ComparisonFilter {
  type: 'eq' | 'ne' | 'gt' | 'gte' | 'lt' | 'lte' | 'in' | 'nin';
  key: string;
  value: string | number | boolean | Array<string | number>;
}
export interface CompoundFilter { type: 'and' | 'or'; filters: Array<ComparisonFilter | CompoundFilter> }
export interface CursorPageParams { after?: string; before?: string; limit?: number; order?: 'asc' | 'desc' }
export interface FileCounts { in_progress: number; completed: number; failed: number; cancelled: number; total: number }

// ---- stores -------------------------------------------------------------------------------------

export interface VectorStoreCreateParams {
  name?: string;
  description?: string;
  file_ids?: string[];
  expires_after?: ExpiresAfter;
  chunking_strategy?: ChunkingStrategyParam;
  metadata?: Record<string, string>;
}
/** A field left out is kept; `expires_after: null` removes the expiry. */
export interface VectorStoreUpdateParams { name?: string | null; expires_after?: ExpiresAfter | null; metadata?: Record<string, string> | null }
export interface VectorStore {
  id: string;
  object: 'vector_store';
  created_at: number;
  name: string;
  description?: string;
  usage_bytes: number;
  file_counts: FileCounts;
  status: 'expired' | 'in_progress' | 'completed';
  expires_after?: ExpiresAfter;
  expires_at?: number | null;
  last_active_at: number | null;
  metadata: Record<string, string> | null;
}
export interface VectorStoreList { object: 'list'; data: VectorStore[]; first_id: string; last_id: string; has_more: boolean }
export interface VectorStoreDeleted { id: string; object: 'vector_store.deleted'; deleted: boolean }

export interface VectorStoreSearchParams {
  query: string | string[];
  max_num_results?: number;
  filters?: ComparisonFilter | CompoundFilter;
  ranking_options?: { ranker?: 'none' | 'auto' | 'default-2024-11-15'; score_threshold?: number };
  rewrite_query?: boolean;
}
export interface VectorStoreSearchResult {
  file_id: string;
  filename: string;
  /** In [0, 1], best first. */
  score: number;
  attributes: Attributes | null;
  content: Array<{ type: 'text'; text: string }>;
}
export interface VectorStoreSearchResultsPage {
  object: 'vector_store.search_results.page';
  search_query: string[];
  data: VectorStoreSearchResult[];
  has_more: boolean;
  next_page: string | null;
}

// ---- files and file batches ---------------------------------------------------------------------

export interface VectorStoreFileCreateParams { file_id: string; attributes?: Attributes | null; chunking_strategy?: ChunkingStrategyParam }
export interface VectorStoreFile {
  id: string;
  object: 'vector_store.file';
  usage_bytes: number;
  created_at: number;
  vector_store_id: string;
  status: VectorStoreFileStatus;
  last_error: { code: 'server_error' | 'unsupported_file' | 'invalid_file'; message: string } | null;
  chunking_strategy?: { type: 'static'; static: { max_chunk_size_tokens: number; chunk_overlap_tokens: number } } | { type: 'other' };
  attributes?: Attributes | null;
}
export interface VectorStoreFileListParams extends CursorPageParams { filter?: VectorStoreFileStatus }
export interface VectorStoreFileList { object: 'list'; data: VectorStoreFile[]; first_id: string; last_id: string; has_more: boolean }
export interface VectorStoreFileDeleted { id: string; object: 'vector_store.file.deleted'; deleted: boolean }
/** A file's parsed text as it was indexed: its chunks, in order (none until it is completed). */
export interface VectorStoreFileContent {
  object: 'vector_store.file_content.page';
  data: Array<{ type: string; text: string }>;
  has_more: boolean;
  next_page: string | null;
}

/** `file_ids` (sharing `attributes` and `chunking_strategy`) or `files` (each with its own), not both. */
export interface FileBatchCreateParams {
  file_ids?: string[];
  files?: VectorStoreFileCreateParams[];
  attributes?: Attributes | null;
  chunking_strategy?: ChunkingStrategyParam;
}
export interface VectorStoreFileBatch {
  id: string;
  object: 'vector_store.files_batch';
  created_at: number;
  vector_store_id: string;
  status: VectorStoreFileStatus;
  file_counts: FileCounts;
}

/**
 * The poll helpers' options. `pollIntervalMs` defaults to the server's `openai-poll-after-ms` hint (1 s without
 * one); `maxWaitMs` bounds the wait with a PollTimeoutError (the server goes on indexing).
 */
export interface PollOptions { pollIntervalMs?: number; maxWaitMs?: number }
export interface UploadAndPollOptions extends PollOptions { attributes?: Attributes | null; chunking_strategy?: ChunkingStrategyParam }
export interface BatchUploadParams { files: Uploadable[]; fileIds?: string[] }
export interface BatchUploadOptions extends PollOptions { maxConcurrency?: number; chunking_strategy?: ChunkingStrategyParam }
