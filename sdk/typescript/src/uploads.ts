/** multipart/form-data for file uploads, streamed: the file's bytes are sent as they are read. */

import type { Uploadable } from './types.js';

export interface UploadBody {
  /** Makes the body afresh for each try (null when the source can be read only once and is used up). */
  make: () => Promise<{ body: ReadableStream<Uint8Array> | Uint8Array<ArrayBuffer>; contentType: string }>;
  /** Whether the upload may be sent again (a retry): false for a stream that can be read only once. */
  replayable: boolean;
}

const encoder = new TextEncoder();

function quoted(value: string): string {
  return value.replace(/[\r\n]/g, ' ').replace(/"/g, '%22');
}

function baseName(path: string): string {
  return path.split(/[\\/]/).pop() || 'upload';
}

async function* chunksOf(source: Uploadable): AsyncGenerator<Uint8Array> {
  if (typeof source === 'string') {
    const { createReadStream } = await import('node:fs');
    for await (const chunk of createReadStream(source)) yield chunk as Uint8Array;
  } else if (source instanceof Uint8Array) {
    yield source;
  } else if (source instanceof ArrayBuffer) {
    yield new Uint8Array(source);
  } else if (source instanceof Blob) {
    yield* chunksOf(source.stream());
  } else if (source instanceof ReadableStream) {
    const reader = source.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        yield value;
      }
    } finally {
      reader.releaseLock();
    }
  } else {
    for await (const chunk of source) yield typeof chunk === 'string' ? encoder.encode(chunk) : chunk;
  }
}

export function multipartUpload(file: Uploadable, purpose: string, filename?: string): UploadBody {
  const replayable = typeof file === 'string' || file instanceof Uint8Array || file instanceof ArrayBuffer || file instanceof Blob;
  const name = filename ?? (typeof file === 'string' ? baseName(file) : file instanceof File ? file.name : 'upload');
  let used = false;
  return {
    replayable,
    make: async () => {
      if (!replayable && used) throw new Error('This upload was read from a stream and cannot be sent again.');
      used = true;
      const boundary = `----ozwell${crypto.randomUUID().replace(/-/g, '')}`;
      const head = encoder.encode(
        `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n${purpose}\r\n` +
          `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${quoted(name)}"\r\n` +
          'Content-Type: application/octet-stream\r\n\r\n',
      );
      const tail = encoder.encode(`\r\n--${boundary}--\r\n`);
      const contentType = `multipart/form-data; boundary=${boundary}`;
      if (file instanceof Uint8Array || file instanceof ArrayBuffer) {
        const bytes = file instanceof Uint8Array ? file : new Uint8Array(file);
        const body = new Uint8Array(head.length + bytes.length + tail.length);
        body.set(head, 0);
        body.set(bytes, head.length);
        body.set(tail, head.length + bytes.length);
        return { body, contentType };
      }
      const parts = (async function* () {
        yield head;
        yield* chunksOf(file);
        yield tail;
      })();
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          try {
            const next = await parts.next();
            if (next.done) controller.close();
            else controller.enqueue(next.value);
          } catch (error) {
            controller.error(error);
          }
        },
        async cancel() {
          await parts.return(undefined);
        },
      });
      return { body, contentType };
    },
  };
}
