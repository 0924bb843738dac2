import { redactSecrets } from "./redact.js";

/** Where operations write. Every line passes the SAS redactor on its way out. */
export interface Logger {
  readonly info: (line: string) => void;
  readonly warn: (line: string) => void;
  readonly error: (line: string) => void;
}

interface LogTarget {
  log(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
}

/** Wraps an InvocationContext (or console) so that nothing unredacted can be logged through it. */
export function safeLogger(target: LogTarget): Logger {
  return {
    info: (line) => target.log(redactSecrets(line)),
    warn: (line) => target.warn(redactSecrets(line)),
    error: (line) => target.error(redactSecrets(line)),
  };
}
