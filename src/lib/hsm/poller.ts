import {
  HsmInvalidResponseError,
  HsmJobFailedError,
  HsmStatusUnavailableError,
  HsmWaitDeadlineError,
} from "./errors.js";
import type { RequestIds } from "../correlation.js";
import {
  JOB_ID,
  type Delay,
  type HsmOperation,
  type HsmOperationState,
  type OperationKind,
  type OperationStatus,
  type PollUntilDoneOptions,
} from "./types.js";

export type { Delay, HsmOperationState, OperationKind, OperationStatus, PollUntilDoneOptions } from "./types.js";

interface PollDeps {
  readStatus(
    kind: OperationKind,
    url: string,
    signal?: AbortSignal,
  ): Promise<HsmOperationState & { retryAfterMs?: number; requestIds?: RequestIds }>;
  readonly delay: Delay;
  readonly defaultPollIntervalMs: number;
  /** Upper bound of any wait between reads, whatever Retry-After says. */
  readonly maxPollIntervalMs: number;
  readonly now: () => Date;
}

/**
 * Waits for one backup or restore job. Polling follows Retry-After when the service sends it (the
 * 202 carried 0 or 10 s in recordings), capped, and a default interval otherwise. A job id is all it
 * needs, so a worker other than the one that started the job can finish the wait.
 */
export class HsmOperationPoller implements HsmOperation {
  private state: HsmOperationState | undefined;
  private nextWaitMs: number | undefined;
  /** Of the last status read: a job failure names the read that reported it. */
  private lastIds: RequestIds = {};

  constructor(
    readonly kind: OperationKind,
    private readonly statusUrl: string,
    readonly jobId: string,
    initialState: HsmOperationState | undefined,
    private readonly deps: PollDeps,
    initialRetryAfterMs?: number,
  ) {
    this.state = initialState;
    this.nextWaitMs = initialRetryAfterMs;
  }

  getOperationState(): HsmOperationState | undefined {
    return this.state;
  }

  isDone(): boolean {
    return this.state !== undefined && this.state.status !== "InProgress";
  }

  /** Reads the status once. */
  async poll(options: { abortSignal?: AbortSignal } = {}): Promise<HsmOperationState> {
    const { retryAfterMs, requestIds, ...state } = await this.deps.readStatus(
      this.kind,
      this.statusUrl,
      options.abortSignal,
    );
    this.state = state;
    this.lastIds = requestIds ?? {};
    this.nextWaitMs = retryAfterMs;
    return state;
  }

  /**
   * Polls until the job ends or the deadline passes. Resolves with the final state when it Succeeded.
   * @throws HsmJobFailedError when it ended Failed or Canceled (or its status read failed terminally);
   *   HsmWaitDeadlineError at the deadline; the abort reason on abort.
   */
  async pollUntilDone(options: PollUntilDoneOptions = {}): Promise<HsmOperationState> {
    let lastProblem: string | undefined;
    let read = this.state !== undefined;
    let polled = false;
    while (!this.isDone()) {
      if (read) {
        // Between the HSM's Retry-After and the cap, with a floor after the first status read: an HSM
        // answering Retry-After 0 (or a past date) on every read must not make the app read in a loop.
        const floor = polled ? Math.min(this.deps.defaultPollIntervalMs, MIN_POLL_INTERVAL_MS) : 0;
        const wait = Math.max(
          floor,
          Math.min(this.nextWaitMs ?? this.deps.defaultPollIntervalMs, this.deps.maxPollIntervalMs),
        );
        const left = options.deadline ? options.deadline.getTime() - this.deps.now().getTime() : Infinity;
        if (left <= 0)
          throw new HsmWaitDeadlineError(
            this.kind,
            new URL(this.statusUrl).origin,
            this.jobId,
            options.deadline!,
            this.state,
            lastProblem,
          );
        await this.deps.delay(Math.max(0, Math.min(wait, left)), options.abortSignal);
      }
      read = true;
      polled = true;
      try {
        // Not onProgress?.(await ...): an optional call skips evaluating its argument.
        const state = await this.poll(options);
        lastProblem = undefined;
        options.onProgress?.(state);
      } catch (error) {
        if (options.abortSignal?.aborted) throw error;
        // Unknown is not failed: the job may be running on. Only the deadline ends such a wait.
        if (
          !(error instanceof HsmStatusUnavailableError || error instanceof HsmInvalidResponseError) ||
          !options.deadline
        )
          throw error;
        lastProblem = error.message;
        this.nextWaitMs = undefined;
      }
    }
    const final = this.state!;
    if (final.status !== "Succeeded") {
      throw new HsmJobFailedError(this.kind, new URL(this.statusUrl).origin, final.jobId, final, this.lastIds);
    }
    return final;
  }

  /** Enough to resume elsewhere: the kind and job id. */
  toString(): string {
    return JSON.stringify({ kind: this.kind, jobId: this.jobId });
  }
}

/** The shortest wait between two status reads of a running job, whatever Retry-After says. */
const MIN_POLL_INTERVAL_MS = 1000;

/** Unix seconds the service may plausibly give: 2015 to 2100. Anything else is not a time. */
const MIN_UNIX_S = 1_420_070_400;
const MAX_UNIX_S = 4_102_444_800;

/**
 * Parses a FullBackupOperation / RestoreOperation / SelectiveKeyRestoreOperation body: the edge where
 * the HSM's answer becomes the app's type. With expectedJobId (a status read) the answer must be
 * about that job.
 * @throws HsmInvalidResponseError for anything that is not a usable operation.
 */
export function parseOperation(
  kind: OperationKind,
  bodyText: string | null | undefined,
  vaultUrl: string,
  expectedJobId?: string,
): HsmOperationState {
  const operation = `${kind} ${expectedJobId ? "status" : "start"}`;
  let body: unknown;
  try {
    body = JSON.parse(bodyText ?? "");
  } catch {
    throw new HsmInvalidResponseError(operation, vaultUrl, "the answer was not JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new HsmInvalidResponseError(operation, vaultUrl, "the answer was not a JSON object");
  }
  const fields = body as Record<string, unknown>;
  const { jobId, status: rawStatus } = fields;
  if (typeof jobId !== "string" || typeof rawStatus !== "string") {
    throw new HsmInvalidResponseError(operation, vaultUrl, "the answer had no jobId or status");
  }
  if (!JOB_ID.test(jobId)) {
    throw new HsmInvalidResponseError(
      operation,
      vaultUrl,
      `job id ${JSON.stringify(jobId.slice(0, 80))} is not a Managed HSM job id`,
    );
  }
  if (expectedJobId !== undefined && jobId !== expectedJobId) {
    throw new HsmInvalidResponseError(
      operation,
      vaultUrl,
      `the status is for job ${jobId}, not for job ${expectedJobId}`,
    );
  }
  const status = normaliseStatus(rawStatus);
  if (status === undefined) {
    throw new HsmInvalidResponseError(
      operation,
      vaultUrl,
      `status ${JSON.stringify(rawStatus.slice(0, 40))} is not one Managed HSM documents (InProgress, Succeeded, Failed, Canceled)`,
    );
  }
  const error = fields.error as { code?: unknown; message?: unknown } | null | undefined;
  const code = typeof error?.code === "string" && error.code ? error.code.slice(0, 100) : undefined;
  const message = typeof error?.message === "string" && error.message ? error.message.slice(0, 1000) : undefined;
  const folderUri = fields.azureStorageBlobContainerUri;
  const statusDetails = fields.statusDetails;
  return {
    kind,
    jobId,
    status,
    ...(typeof statusDetails === "string" && statusDetails ? { statusDetails: statusDetails.slice(0, 1000) } : {}),
    ...(code || message ? { error: { ...(code ? { code } : {}), ...(message ? { message } : {}) } } : {}),
    ...unixTime("startTime", fields.startTime),
    ...unixTime("endTime", fields.endTime),
    ...(typeof folderUri === "string" && folderUri ? { folderUri } : {}),
  };
}

/** Case-insensitive, as core-lro reads it. A word outside the documented set is not guessed at. */
function normaliseStatus(raw: string): OperationStatus | undefined {
  switch (raw.toLowerCase()) {
    case "inprogress":
    case "running":
    case "notstarted":
      return "InProgress";
    case "succeeded":
      return "Succeeded";
    case "failed":
      return "Failed";
    case "canceled":
    case "cancelled":
      return "Canceled";
    default:
      return undefined;
  }
}

/**
 * startTime/endTime are Unix seconds; endTime is null (or 0 in spec examples) while running. A value
 * no clock could give (1e15 was seen from a hostile stand-in) is treated as absent, not as a date.
 */
function unixTime<K extends string>(key: K, value: unknown): Partial<Record<K, Date>> {
  return typeof value === "number" && value >= MIN_UNIX_S && value <= MAX_UNIX_S
    ? ({ [key]: new Date(value * 1000) } as Record<K, Date>)
    : {};
}
