/**
 * A private Redis server for a test that stops and starts it (the shared one on 6379 is never touched): a child
 * process on a port of its own that keeps nothing on disk, stopped by its pid.
 */
import { type ChildProcess, spawn } from 'node:child_process';

/** Servers still running, stopped when this process exits however it ends, not left behind. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export class RedisServer {
  private child: ChildProcess | undefined;
  private output = '';

  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts it and waits until it accepts connections. */
  async start(timeoutMs = 10_000): Promise<void> {
    if (this.child) throw new Error('This Redis server is running already');
    this.output = '';
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    running.add(child);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`Redis did not start on port ${this.port} within ${timeoutMs} ms:\n${this.output}`));
      }, timeoutMs);
      const onData = (chunk: string) => {
        this.output += chunk;
        if (this.output.includes('Ready to accept connections')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout?.setEncoding('utf8').on('data', onData);
      child.stderr?.setEncoding('utf8').on('data', onData);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`Redis exited (${code ?? signal}) on port ${this.port}:\n${this.output}`));
      });
    });
  }

  /** Stops it (SIGTERM to its pid) and waits for it to end. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    running.delete(child);
  }
}
