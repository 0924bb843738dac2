import { redactSecrets } from "./redact.js";

/**
 * Structured outcome events. Each is one log line "<EventName> <json>", which the Functions host
 * sends to Application Insights as a trace; the alert rules and the workbook in infra/ parse exactly
 * these names (a test holds them together), and host.json keeps traces out of sampling so that no
 * outcome is dropped.
 */
export const EVENTS = {
  backupOutcome: "MhsmBackupOutcome",
  restoreStarted: "MhsmRestoreStarted",
  restoreOutcome: "MhsmRestoreOutcome",
  /**
   * The HSM accepted a start call: written before any catalog write, so that a job id is never lost
   * even when the catalog cannot be written (the workbook lists accepted jobs with no outcome).
   */
  jobAccepted: "MhsmJobAccepted",
  /**
   * One per backup folder a real prune run planned to delete: status Pruned (deleted, record Pruned),
   * Left (storage refused, or the HSM became busy; errorMessage says why) or NotReached.
   */
  pruneOutcome: "MhsmPruneOutcome",
} as const;

export type EventName = (typeof EVENTS)[keyof typeof EVENTS];

export interface OutcomeFields {
  readonly hsm: string;
  readonly recordId: string;
  readonly jobId?: string | undefined;
  readonly status: string;
  readonly folderUri?: string | undefined;
  readonly backupId?: string | undefined;
  readonly keyName?: string | undefined;
  readonly durationSeconds?: number | undefined;
  readonly errorCode?: string | undefined;
  readonly errorMessage?: string | undefined;
  /** backup, restore or selectiveKeyRestore (MhsmJobAccepted). */
  readonly operation?: string | undefined;
  /** Set on an outcome that replaces one recorded without the HSM's answer, e.g. "TimedOut JobTimeout". */
  readonly correctionOf?: string | undefined;
  /** discovered: a backup reconcile found in the container and adopted. */
  readonly origin?: string | undefined;
  /** Backups: Passed, Failed or Skipped, the HSM's pre-restore check of the new folder. */
  readonly verification?: string | undefined;
  readonly verificationMessage?: string | undefined;
  /** Backups with immutable copies on: Copied, Failed or Skipped, and why not Copied. */
  readonly copyStatus?: string | undefined;
  readonly copyMessage?: string | undefined;
  /** Who asked for a restore (or a CLI backup): a signed-in principal, "function key" or the CLI's identity. */
  readonly requestedBy?: string | undefined;
  /** x-ms-request-id of the service answer behind a failure. */
  readonly requestId?: string | undefined;
  /** x-ms-client-request-id the app sent with that call. */
  readonly clientRequestId?: string | undefined;
}

export type LogLine = (line: string) => void;

/** Formats one event line. Values pass through redactSecrets: no SAS ever reaches telemetry. */
export function formatEvent(name: EventName, fields: OutcomeFields): string {
  const defined = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
  return `${name} ${redactSecrets(JSON.stringify(defined))}`;
}

export function emitEvent(log: LogLine, name: EventName, fields: OutcomeFields): void {
  log(formatEvent(name, fields));
}
