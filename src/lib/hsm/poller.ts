import { HsmJobFailedError, HsmRequestError } from "./errors.js";

export type Delay = (ms: number, signal?: AbortSignal) => Promise<void>;
export type OperationKind = "backup" | "restore" | "selectiveKeyRestore" | "preBackup" | "preRestore";
export type OperationStatus = "InProgress" | "Succeeded" | "Failed" | "Canceled";

export interface HsmOperationState {
  readonly kind: OperationKind;
  readonly jobId: string;
  readonly status: OperationStatus;
  readonly statusDetails?: string;
  /** Present only when the service filled it in: an all-null error object means nothing. */
  readonly error?: { readonly code?: string; readonly message?: string };
  readonly startTime?: Date;
  readonly endTime?: Date;
  /** Backup only: the folder the HSM created, once Succeeded. */
  readonly folderUri?: string;
}

interface PollDeps {
  readStatus(kind: OperationKind, url: string, signal?: AbortSignal): Promise<HsmOperationState & { retryAfterMs?: number }>;
  readonly delay: Delay;
  readonly defaultPollIntervalMs: number;
}

export interface PollUntilDoneOptions {
  readonly abortSignal?: AbortSignal;
  /** Called after every status read, e.g. to show progress. */
  readonly onProgress?: (state: HsmOperationState) => void;
}

/**
 * Waits for one backup or restore job. Polling follows Retry-After when the service sends it (the
 * 202 carried 0 or 10 s in recordings) and a default interval otherwise. A job id is all it needs,
 * so a worker other than the one that started the job can finish the wait.
 */
export class HsmOperationPoller {
  private state: HsmOperationState | undefined;
  private nextWaitMs: number | undefined;

  constructor(
    readonly kind: OperationKind,
    private readonly statusUrl: string,
    initialState: HsmOperationState | undefined,
    private readonly deps: PollDeps,
    initialRetryAfterMs?: number,
  ) {
    this.state = initialState;
    this.nextWaitMs = initialRetryAfterMs;
  }

  get jobId(): string {
    return this.state?.jobId ?? /\/(?:backup|restore)\/([^/?]+)\/pending/.exec(this.statusUrl)?.[1] ?? "";
  }

  getOperationState(): HsmOperationState | undefined {
    return this.state;
  }

  isDone(): boolean {
    return this.state !== undefined && this.state.status !== "InProgress";
  }

  /** Reads the status once. */
  async poll(options: { abortSignal?: AbortSignal } = {}): Promise<HsmOperationState> {
    const { retryAfterMs, ...state } = await this.deps.readStatus(this.kind, this.statusUrl, options.abortSignal);
    this.state = state;
    this.nextWaitMs = retryAfterMs;
    return state;
  }

  /**
   * Polls until the job ends. Resolves with the final state when it Succeeded.
   * @throws HsmJobFailedError when it ended Failed or Canceled (or its status read failed terminally);
   *   HsmStatusUnavailableError when status reads kept failing transiently; the abort reason on abort.
   */
  async pollUntilDone(options: PollUntilDoneOptions = {}): Promise<HsmOperationState> {
    while (!this.isDone()) {
      if (this.state !== undefined) {
        await this.deps.delay(this.nextWaitMs ?? this.deps.defaultPollIntervalMs, options.abortSignal);
      }
      // Not onProgress?.(await ...): an optional call skips evaluating its argument.
      const state = await this.poll(options);
      options.onProgress?.(state);
    }
    const final = this.state!;
    if (final.status !== "Succeeded") {
      throw new HsmJobFailedError(this.kind, new URL(this.statusUrl).origin, final.jobId, final);
    }
    return final;
  }

  /** Enough to resume elsewhere: the kind and job id. */
  toString(): string {
    return JSON.stringify({ kind: this.kind, jobId: this.jobId });
  }
}

/** Parses a FullBackupOperation / RestoreOperation / SelectiveKeyRestoreOperation body. */
export function parseOperation(kind: OperationKind, bodyText: string | null | undefined, vaultUrl: string): HsmOperationState {
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(bodyText ?? "") as Record<string, unknown>;
  } catch {
    throw new HsmRequestError(`${kind} status`, vaultUrl, undefined, undefined, "the answer was not JSON");
  }
  const jobId = body.jobId;
  const rawStatus = body.status;
  if (typeof jobId !== "string" || typeof rawStatus !== "string") {
    throw new HsmRequestError(`${kind} status`, vaultUrl, undefined, undefined, "the answer had no jobId or status");
  }
  const error = body.error as { code?: unknown; message?: unknown } | null | undefined;
  const code = typeof error?.code === "string" && error.code ? error.code : undefined;
  const message = typeof error?.message === "string" && error.message ? error.message : undefined;
  const folderUri = body.azureStorageBlobContainerUri;
  return {
    kind,
    jobId,
    status: normaliseStatus(rawStatus),
    ...(typeof body.statusDetails === "string" && body.statusDetails ? { statusDetails: body.statusDetails } : {}),
    ...(code || message ? { error: { ...(code ? { code } : {}), ...(message ? { message } : {}) } } : {}),
    ...unixTime("startTime", body.startTime),
    ...unixTime("endTime", body.endTime),
    ...(typeof folderUri === "string" && folderUri ? { folderUri } : {}),
  };
}

/** Case-insensitive, as core-lro reads it; an unknown status means the job is still going. */
function normaliseStatus(raw: string): OperationStatus {
  const s = raw.toLowerCase();
  if (s === "succeeded") return "Succeeded";
  if (s.includes("fail")) return "Failed";
  if (s === "canceled" || s === "cancelled") return "Canceled";
  return "InProgress";
}

/** startTime/endTime are Unix seconds; endTime is null (or 0 in spec examples) while running. */
function unixTime<K extends string>(key: K, value: unknown): Partial<Record<K, Date>> {
  return typeof value === "number" && value > 0 ? ({ [key]: new Date(value * 1000) } as Record<K, Date>) : {};
}
