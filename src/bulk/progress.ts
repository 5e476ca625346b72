/**
 * Progress of a long command on stderr: a bar redrawn in place with rate and ETA on a terminal, a plain line every few
 * seconds otherwise (CI logs, pipes), nothing when quiet.
 */

export interface ProgressSample {
  /** Records handled so far. */
  rows: number;
  /** Share of the work done, 0..1, when known (input size, days generated); drives the bar and the ETA. */
  fraction?: number | undefined;
  /** A short note after the counts, e.g. "12.0 of 40.0 MB". */
  detail?: string | undefined;
}

export type ProgressMode = 'bar' | 'lines' | 'none';

export interface ProgressOptions {
  /** What is being done, e.g. "import". */
  label: string;
  /** Where to draw; default process.stderr. */
  stream?: NodeJS.WriteStream;
  /** Default: `bar` on a terminal, else `lines`. */
  mode?: ProgressMode;
  /** How often a plain line is written, in ms; default 5,000. */
  lineIntervalMs?: number;
  sample: () => ProgressSample;
}

export function formatCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${rest}` : `${m}:${rest}`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  return `${(bytes / 1024 / 1024 / 1024).toFixed(2)} GB`;
}

export class Progress {
  private readonly stream: NodeJS.WriteStream;
  private readonly mode: ProgressMode;
  private readonly started = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private drawn = false;

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
    this.mode = options.mode ?? (this.stream.isTTY ? 'bar' : 'lines');
  }

  start(): void {
    if (this.mode === 'none') return;
    const interval = this.mode === 'bar' ? 200 : (this.options.lineIntervalMs ?? 5000);
    this.timer = setInterval(() => this.draw(), interval);
    this.timer.unref();
  }

  /** Stops drawing and clears the bar, so that what follows starts on a clean line. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.mode === 'bar' && this.drawn) this.stream.write('\r\x1b[2K');
  }

  private draw(): void {
    const { rows, fraction, detail } = this.options.sample();
    const elapsed = (performance.now() - this.started) / 1000;
    const rate = elapsed > 0 ? rows / elapsed : 0;
    const eta = fraction !== undefined && fraction > 0 ? (elapsed * (1 - fraction)) / fraction : undefined;
    // Most telling first: a narrow terminal cuts the end of the line.
    const parts = [
      `${formatCount(rows)} records`,
      `${formatCount(rate)}/s`,
      ...(eta !== undefined ? [`ETA ${formatDuration(eta)}`] : []),
      ...(detail ? [detail] : []),
      `elapsed ${formatDuration(elapsed)}`,
    ];
    if (this.mode === 'bar') {
      const width = 20;
      const done = Math.min(width, Math.round((fraction ?? 0) * width));
      const bar = fraction === undefined ? '' : `[${'#'.repeat(done)}${'-'.repeat(width - done)}] ${(fraction * 100).toFixed(0).padStart(3)}% `;
      const columns = this.stream.columns ?? 100;
      this.stream.write(`\r\x1b[2K${`${this.options.label} ${bar}${parts.join('  ')}`.slice(0, columns - 1)}`);
      this.drawn = true;
    } else {
      const percent = fraction === undefined ? '' : `${(fraction * 100).toFixed(1)}%, `;
      this.stream.write(`${this.options.label}: ${percent}${parts.join(', ')}\n`);
    }
  }
}
