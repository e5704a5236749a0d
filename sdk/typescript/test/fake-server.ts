/**
 * A scripted HTTP server on loopback, for what a real server does not do on request: answer part of a
 * stream and hang up, send a Retry-After date, or never answer at all.
 */

import net from 'node:net';

export type Action = (socket: net.Socket) => void;

export function respond(status: number, body = '', headers: Record<string, string> = {}): Action {
  return (socket) => {
    const head = { 'Content-Length': String(Buffer.byteLength(body)), 'Content-Type': 'application/json', ...headers };
    const lines = Object.entries(head).map(([name, value]) => `${name}: ${value}\r\n`).join('');
    socket.end(`HTTP/1.1 ${status} X\r\n${lines}Connection: close\r\n\r\n${body}`);
  };
}

/** A 200 event stream that sends `events` and then closes the connection without finishing. */
export function partialStream(events: string[]): Action {
  return (socket) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n');
    for (const event of events) socket.write(event);
    socket.end();
  };
}

/** Answers each request with the next action (the last one repeats); counts requests. */
export class FakeServer {
  readonly requests: string[] = [];
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly actions: Action[]) {
    this.server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      let data = '';
      let answered = false;
      socket.on('data', (chunk) => {
        data += chunk.toString('latin1');
        const end = data.indexOf('\r\n\r\n');
        if (answered || end < 0) return;
        const length = Number(/content-length:\s*(\d+)/i.exec(data.slice(0, end))?.[1] ?? 0);
        const chunked = /transfer-encoding:\s*chunked/i.test(data.slice(0, end));
        if (chunked ? !data.endsWith('0\r\n\r\n') : data.length < end + 4 + length) return;
        answered = true;
        this.requests.push(data);
        const action = this.actions[Math.min(this.requests.length, this.actions.length) - 1];
        action?.(socket);
      });
      socket.on('error', () => undefined);
    });
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}/v1`;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Accepts connections and never answers. */
export class SilentServer {
  private readonly sockets = new Set<net.Socket>();
  private readonly server = net.createServer((socket) => {
    this.sockets.add(socket);
    socket.on('error', () => undefined);
  });

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}/v1`;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export const sse = (payload: unknown): string => `data: ${JSON.stringify(payload)}\n\n`;
