/**
 * The CLI's two streams: results to stdout; everything else to stderr, where a terminal also gets
 * one progress line kept at the bottom (cleared before any other line is written, then redrawn).
 * Everything passes redactSecrets on its way out.
 */
import { redactSecrets } from "../lib/redact.js";

export interface Output {
  write(text: string): unknown;
}

export interface CliIo {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly stdout: Output;
  readonly stderr: Output;
  /** Whether stderr is a terminal: the live progress line is drawn only there. */
  readonly isTTY: boolean;
  /** That terminal's width, read at every redraw (a getter follows resizes). Default 80. */
  readonly columns?: number | undefined;
  /** Asks the person at the terminal and resolves with the line typed; absent when stdin is not a terminal. */
  readonly readLine?: ((prompt: string) => Promise<string>) | undefined;
}

/**
 * How progress is shown: redrawn in place on a terminal; as plain lines (milestones only, no escape
 * codes) when stderr is a pipe or a file; not at all with --json.
 */
export type ProgressMode = "live" | "plain" | "none";

const PROGRESS_TICK_MS = 1000;
/** Carriage return, then erase the whole line (ECMA-48 EL 2): the progress line is redrawn in place. */
const CLEAR_LINE = "\r\x1b[2K";
/** Narrower than this, a line cannot say anything useful; it is drawn anyway and the terminal wraps it. */
const MIN_WIDTH = 20;

export class Terminal {
  private render: ((width: number) => string) | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private shown = false;

  constructor(
    private readonly io: CliIo,
    readonly mode: ProgressMode,
  ) {}

  out(text: string): void {
    this.io.stdout.write(redactSecrets(text));
  }

  json(value: unknown): void {
    this.out(`${JSON.stringify(value, null, 2)}\n`);
  }

  line(text: string): void {
    this.clear();
    this.io.stderr.write(`${redactSecrets(text)}\n`);
    this.draw();
  }

  /** A milestone of the progress display (a job ended): a line wherever progress is shown. */
  progressLine(text: string): void {
    if (this.mode !== "none") this.line(text);
  }

  /** Shows a live line on a terminal; `render` gets the width it must fit in. */
  startProgress(render: (width: number) => string): void {
    if (this.mode !== "live") return;
    this.render = render;
    this.draw();
    // Elapsed time moves on between status reads (which may be 10 s apart).
    this.ticker = setInterval(() => this.draw(), PROGRESS_TICK_MS);
    this.ticker.unref();
  }

  refreshProgress(): void {
    this.draw();
  }

  stopProgress(): void {
    clearInterval(this.ticker);
    this.ticker = undefined;
    this.clear();
    this.render = undefined;
  }

  /** Rewrites the progress line in place, in one write so that it never flickers. */
  private draw(): void {
    if (!this.render) return;
    const width = Math.max(MIN_WIDTH, (this.io.columns ?? 80) - 1);
    const text = redactSecrets(this.render(width));
    this.io.stderr.write(
      `${this.shown ? CLEAR_LINE : ""}${text.length > width ? `${text.slice(0, width - 1)}…` : text}`,
    );
    this.shown = true;
  }

  private clear(): void {
    if (!this.shown) return;
    this.io.stderr.write(CLEAR_LINE);
    this.shown = false;
  }
}

/**
 * A progress line that fits: the head, then as many items as fit, then "+N more". Items are never cut
 * in the middle, so a narrow terminal shows fewer HSMs rather than half a name.
 */
export function fitLine(head: string, items: readonly string[], width: number): string {
  let line = head;
  for (let i = 0; i < items.length; i++) {
    const rest = items.length - i - 1;
    const candidate = `${line}${i === 0 ? ": " : " | "}${items[i]}`;
    const suffix = rest > 0 ? ` | +${rest} more` : "";
    if (`${candidate}${suffix}`.length > width) return i === 0 ? line : `${line} | +${items.length - i} more`;
    line = candidate;
  }
  return line;
}
