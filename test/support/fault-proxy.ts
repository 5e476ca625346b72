/**
 * A fault-injecting TCP proxy of the project's own (there is no Toxiproxy or tc netem here): the service connects to
 * it instead of PostgreSQL, and the test turns faults on and off while traffic flows.
 *
 * - latency: every chunk is held for a random time in [min, max] ms, order kept;
 * - resets: each forwarded chunk resets its connection (RST both ways) with a given probability; `resetAll()` resets
 *   every open connection at once;
 * - blackhole: for a while nothing is forwarded and new connections are not passed on (as a network that drops every
 *   packet); what was held is delivered when it ends, as TCP retransmission would.
 */
import net from 'node:net';
import { seededRandom } from './fixtures.js';

export interface FaultProxyStats {
  /** Connections accepted from the service. */
  connections: number;
  /** Connections reset on purpose (random resets and resetAll). */
  resets: number;
  /** Blackholes started. */
  blackholes: number;
}

type Direction = 'up' | 'down';

export class FaultProxy {
  /** Added one-way delay per chunk, in ms. */
  latency = { min: 0, max: 0 };
  /** Probability that forwarding a chunk resets its connection instead. */
  resetProbability = 0;
  readonly stats: FaultProxyStats = { connections: 0, resets: 0, blackholes: 0 };
  private blackholeUntil = 0;
  private readonly open = new Set<Link>();

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    readonly target: { host: string; port: number },
  ) {}

  static async start(target: { host: string; port: number }): Promise<FaultProxy> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port, target);
    server.on('connection', (socket) => proxy.accept(socket));
    return proxy;
  }

  /** A postgres:// URL through the proxy. */
  url(database = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  /** Stops forwarding for `ms` milliseconds. */
  blackhole(ms: number): void {
    this.blackholeUntil = Math.max(this.blackholeUntil, Date.now() + ms);
    this.stats.blackholes++;
  }

  get blackholed(): boolean {
    return Date.now() < this.blackholeUntil;
  }

  /** Milliseconds until forwarding resumes (0 when not blackholed). */
  blackholeLeft(): number {
    return Math.max(0, this.blackholeUntil - Date.now());
  }

  /** Resets every open connection. */
  resetAll(): number {
    const links = [...this.open];
    for (const link of links) link.reset();
    return links.length;
  }

  /** Turns every fault off (held data is delivered). */
  heal(): void {
    this.latency = { min: 0, max: 0 };
    this.resetProbability = 0;
    this.blackholeUntil = 0;
    for (const link of this.open) link.kick();
  }

  /** Faults drawn from a fixed seed (FAULT_SEED to change it): the same faults on every run. */
  private readonly random = seededRandom(Number(process.env.FAULT_SEED ?? 20261202));

  get openConnections(): number {
    return this.open.size;
  }

  async close(): Promise<void> {
    for (const link of [...this.open]) link.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** @internal */
  delay(): number {
    const { min, max } = this.latency;
    return max <= 0 ? 0 : min + this.random() * (max - min);
  }

  /** @internal */
  holdUntil(): number {
    return this.blackholeUntil;
  }

  /** @internal */
  shouldReset(): boolean {
    return this.resetProbability > 0 && this.random() < this.resetProbability;
  }

  /** @internal */
  countReset(): void {
    this.stats.resets++;
  }

  /** @internal */
  forget(link: Link): void {
    this.open.delete(link);
  }

  private accept(client: net.Socket): void {
    this.stats.connections++;
    const link = new Link(this, client);
    this.open.add(link);
  }
}

interface Held {
  chunk: Buffer;
  due: number;
}

/** One proxied connection: the service's socket, PostgreSQL's socket, and a queue each way. */
class Link {
  private upstream: net.Socket | undefined;
  private readonly queues: Record<Direction, Held[]> = { up: [], down: [] };
  private readonly timers: Record<Direction, NodeJS.Timeout | undefined> = { up: undefined, down: undefined };
  private readonly ended: Record<Direction, boolean> = { up: false, down: false };
  private connectTimer: NodeJS.Timeout | undefined;
  private dead = false;

  constructor(
    private readonly proxy: FaultProxy,
    private readonly client: net.Socket,
  ) {
    client.setNoDelay(true);
    client.on('data', (chunk: Buffer) => this.push('up', chunk));
    client.on('end', () => this.endSide('up'));
    client.on('error', () => this.destroy());
    // A clean close lets what is held be delivered first (PostgreSQL's last words before a shutdown, say).
    client.on('close', (hadError) => this.closed('up', hadError));
    this.connectWhenOpen();
  }

  /** Opens the upstream connection, unless blackholed: then when the blackhole ends. */
  private connectWhenOpen(): void {
    const wait = this.proxy.holdUntil() - Date.now();
    if (wait > 0) {
      this.connectTimer = setTimeout(() => this.connectWhenOpen(), wait);
      return;
    }
    const upstream = net.connect(this.proxy.target.port, this.proxy.target.host);
    this.upstream = upstream;
    upstream.setNoDelay(true);
    upstream.on('connect', () => this.kick());
    upstream.on('data', (chunk: Buffer) => this.push('down', chunk));
    upstream.on('end', () => this.endSide('down'));
    upstream.on('error', () => this.destroy());
    upstream.on('close', (hadError) => this.closed('down', hadError));
  }

  private push(direction: Direction, chunk: Buffer): void {
    if (this.dead) return;
    const queue = this.queues[direction];
    const last = queue.at(-1)?.due ?? 0;
    queue.push({ chunk, due: Math.max(last, Date.now() + this.proxy.delay()) });
    this.schedule(direction);
  }

  private closed(direction: Direction, hadError: boolean): void {
    if (hadError || (this.client.destroyed && this.upstream?.destroyed !== false)) this.destroy();
    else this.endSide(direction);
  }

  private endSide(direction: Direction): void {
    this.ended[direction] = true;
    this.schedule(direction);
  }

  /** Re-arms both pumps (after a blackhole was lifted early, or the upstream connected). */
  kick(): void {
    for (const direction of ['up', 'down'] as const) {
      clearTimeout(this.timers[direction]);
      this.timers[direction] = undefined;
      this.schedule(direction);
    }
    if (this.connectTimer && !this.proxy.blackholed) {
      clearTimeout(this.connectTimer);
      this.connectTimer = undefined;
      this.connectWhenOpen();
    }
  }

  private schedule(direction: Direction): void {
    if (this.dead || this.timers[direction]) return;
    const head = this.queues[direction][0];
    if (!head && !this.ended[direction]) return;
    const at = Math.max(head?.due ?? 0, this.proxy.holdUntil());
    this.timers[direction] = setTimeout(() => this.flush(direction), Math.max(0, at - Date.now()));
  }

  private flush(direction: Direction): void {
    this.timers[direction] = undefined;
    if (this.dead) return;
    const to = direction === 'up' ? this.upstream : this.client;
    if (!to || to.connecting) return; // kicked again on connect
    if (to.destroyed) {
      this.destroy();
      return;
    }
    const queue = this.queues[direction];
    const now = Date.now();
    while (queue.length > 0 && (queue[0] as Held).due <= now && now >= this.proxy.holdUntil()) {
      if (this.proxy.shouldReset()) {
        this.reset();
        return;
      }
      to.write((queue.shift() as Held).chunk);
    }
    if (queue.length === 0 && this.ended[direction] && now >= this.proxy.holdUntil()) {
      to.end();
      return;
    }
    this.schedule(direction);
  }

  /** RST both ways. */
  reset(): void {
    if (this.dead) return;
    this.proxy.countReset();
    this.client.resetAndDestroy();
    if (this.upstream && !this.upstream.destroyed) this.upstream.resetAndDestroy();
    this.destroy();
  }

  destroy(): void {
    if (this.dead) return;
    this.dead = true;
    clearTimeout(this.timers.up);
    clearTimeout(this.timers.down);
    clearTimeout(this.connectTimer);
    this.client.destroy();
    this.upstream?.destroy();
    this.proxy.forget(this);
  }
}
