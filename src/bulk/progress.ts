/**
 * Progress of a long command on stderr: a bar redrawn in place on a terminal (cli-progress), a plain line every few
 * seconds otherwise (CI logs, pipes), nothing when quiet.
 */
import cliProgress from 'cli-progress';

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
  /** Called at every redraw: the command's counters are read, never pushed. */
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
  private bar: cliProgress.SingleBar | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
    this.mode = options.mode ?? (this.stream.isTTY ? 'bar' : 'lines');
  }

  start(): void {
    if (this.mode === 'bar') {
      this.bar = new cliProgress.SingleBar({
        stream: this.stream,
        fps: 5,
        barsize: 20,
        barCompleteChar: '#',
        barIncompleteChar: '-',
        // The line is cut to the terminal's width here; the bar sends no escape codes (cursor hiding, wrapping off)
        // that an interrupted command would leave behind.
        linewrap: true,
        clearOnComplete: true,
        format: (options, params) => this.barLine(options, params.maxWidth),
      });
      this.bar.start(1, 0);
    } else if (this.mode === 'lines') {
      const { label, lineIntervalMs = 5000 } = this.options;
      this.timer = setInterval(() => {
        const sample = this.options.sample();
        const percent = sample.fraction === undefined ? '' : `${(sample.fraction * 100).toFixed(1)}%, `;
        this.stream.write(`${label}: ${percent}${this.figures(sample).join(', ')}\n`);
      }, lineIntervalMs);
      this.timer.unref();
    }
  }

  /** Stops drawing and clears the bar, so that what follows starts on a clean line. */
  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private barLine(options: cliProgress.Options, width: number): string {
    const sample = this.options.sample();
    const { fraction } = sample;
    const bar =
      fraction === undefined
        ? ''
        : `[${cliProgress.Format.BarFormat(fraction, options)}] ${(fraction * 100).toFixed(0).padStart(3)}% `;
    // One column short of the width: a line that fills the last column wraps on some terminals.
    return `${this.options.label} ${bar}${this.figures(sample).join('  ')}`.slice(0, width - 1);
  }

  /** Most telling first: a narrow terminal cuts the end of the line. */
  private figures({ rows, fraction, detail }: ProgressSample): string[] {
    const elapsed = (performance.now() - this.started) / 1000;
    const rate = elapsed > 0 ? rows / elapsed : 0;
    const eta = fraction !== undefined && fraction > 0 ? (elapsed * (1 - fraction)) / fraction : undefined;
    return [
      `${formatCount(rows)} records`,
      `${formatCount(rate)}/s`,
      ...(eta !== undefined ? [`ETA ${formatDuration(eta)}`] : []),
      ...(detail ? [detail] : []),
      `elapsed ${formatDuration(elapsed)}`,
    ];
  }
}
