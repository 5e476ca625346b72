/**
 * What the Node listener does around Yoga, and nothing of GraphQL: the request id, and what happens to a request body
 * the answer did not need (a 401 or a 413 sent before the body arrived).
 */
import crypto from 'node:crypto';
import type { IncomingMessage, RequestListener } from 'node:http';

/** A client-supplied request id is kept when it is short and plain; otherwise a new one is made. */
export function requestIdFrom(header: string | string[] | undefined): string {
  const value = Array.isArray(header) ? header[0] : header;
  return value && /^[\w.:-]{1,128}$/.test(value) ? value : crypto.randomUUID();
}

export interface DrainBound {
  /** Most bytes of an unread body read and discarded after the answer; past them the connection is closed. */
  bytes: number;
  /** Longest wait for the rest of an unread body after the answer; past it the connection is closed. */
  ms: number;
}

/**
 * After an answer sent before its request's body was read (a refusal), the rest of the body is read and discarded
 * within `bound`, then the connection is kept (the body ended) or closed. Closing at once instead would reset the
 * connection while the client is still sending, and the client would see a network error instead of the answer
 * (a 413 it could act on by splitting its batch).
 */
function drainUnreadBody(req: IncomingMessage, bound: DrainBound): void {
  if (req.complete || req.destroyed) return;
  let discarded = 0;
  const close = () => {
    clearTimeout(timer);
    req.socket.destroy();
  };
  const timer = setTimeout(close, bound.ms);
  timer.unref();
  req.on('data', (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > bound.bytes) close();
  });
  req.once('end', () => clearTimeout(timer));
  req.once('error', () => clearTimeout(timer));
  req.once('close', () => clearTimeout(timer));
  // A stream the answer's reader left paused would never end.
  req.resume();
}

/**
 * A Content-Type in its canonical form: media types and parameter names are case-insensitive and may have spaces
 * around `;` (RFC 9110), while Yoga matches `application/json` as written. So every request's is written the one way
 * Yoga reads, before any rule looks at it.
 */
export function canonicalMediaType(value: string): string {
  const [type = '', ...parameters] = value.split(';');
  const canonical = [type.trim().toLowerCase()];
  for (const parameter of parameters) {
    const equals = parameter.indexOf('=');
    if (equals < 0) continue;
    const name = parameter.slice(0, equals).trim().toLowerCase();
    const raw = parameter.slice(equals + 1).trim();
    canonical.push(`${name}=${name === 'charset' ? raw.toLowerCase() : raw}`);
  }
  return canonical.join(';');
}

/** The listener Yoga runs behind: a request id on every response, and unread bodies drained within `bound`. */
export function transport(yogaListener: RequestListener, bound: DrainBound): RequestListener {
  return (req, res) => {
    res.setHeader('x-request-id', requestIdFrom(req.headers['x-request-id']));
    const contentType = req.headers['content-type'];
    if (contentType !== undefined) req.headers['content-type'] = canonicalMediaType(contentType);
    res.once('finish', () => drainUnreadBody(req, bound));
    yogaListener(req, res);
  };
}
