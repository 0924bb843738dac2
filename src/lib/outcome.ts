/**
 * Turning what the HSM said about a job into a catalog record change, and refreshing a record whose
 * job is still unsettled. Shared by backups and restores, by the timers, the HTTP status routes and
 * the CLI: whoever reads a final status first records it, once; a later, different truth about an
 * outcome recorded without the HSM's answer (TimedOut, StartOutcomeUnknown) is a correction, with
 * its own event.
 */
import {
  ACTIVE_STATUSES,
  UNSETTLED_STATUSES,
  type BackupRecord,
  type Kind,
  type RestoreRecord,
  type Stored,
} from "./catalog.js";
import { staleStartMs } from "./config.js";
import type { AppDeps } from "./deps.js";
import {
  HsmInvalidResponseError,
  HsmJobFailedError,
  HsmRequestError,
  HsmStatusUnavailableError,
} from "./hsm/errors.js";
import { JOB_ID, type HsmOperationState, type OperationKind } from "./hsm/types.js";
import { requestIdsOfError } from "./correlation.js";
import type { Logger } from "./logger.js";
import { toSafeError } from "./redact.js";
import { emitEvent, EVENTS } from "./telemetry.js";

export type AnyRecord = BackupRecord | RestoreRecord;
export type FinalPatch = Partial<Omit<BackupRecord & RestoreRecord, "id">>;

/** Error codes of outcomes recorded without the HSM's word: a later status read may correct them. */
const PROVISIONAL_CODES = new Set(["StartOutcomeUnknown", "JobTimeout"]);

export function operationKind(kind: Kind, record: AnyRecord): OperationKind {
  if (kind === "backup") return "backup";
  return (record as RestoreRecord).keyName ? "selectiveKeyRestore" : "restore";
}

/** When the app stops waiting for a record's job: its recorded deadline, or the configured job timeout. */
export function deadlineOf(deps: AppDeps, record: AnyRecord): Date {
  const recorded = record.deadlineAt !== undefined ? Date.parse(record.deadlineAt) : NaN;
  return new Date(Number.isNaN(recorded) ? Date.parse(record.startedAt) + deps.config.jobTimeoutMs : recorded);
}

/**
 * The record change for a job that ended: Succeeded from its final state, or Failed/Canceled from the
 * error. A "success" that cannot be true is not recorded as one: a backup without a folder, or with a
 * folder outside the app's container, and a key restore that restored nothing.
 */
export function finalPatch(
  deps: AppDeps,
  kind: Kind,
  record: AnyRecord,
  outcome: HsmOperationState | HsmJobFailedError,
  now: Date,
): FinalPatch {
  const started = new Date(record.startedAt);
  if (outcome instanceof HsmJobFailedError) {
    // The HSM's own times when it gave them: a record settled later must not end at the read time.
    const ended = outcome.state?.endTime ?? now;
    return {
      status: outcome.status,
      jobId: outcome.jobId,
      endedAt: ended.toISOString(),
      durationSeconds: seconds(outcome.state?.startTime ?? started, ended),
      errorCode: outcome.code ?? outcome.status,
      errorMessage: outcome.message,
      ...requestIdsOfError(outcome),
    };
  }
  const ended = outcome.endTime ?? now;
  const times = {
    jobId: outcome.jobId,
    endedAt: ended.toISOString(),
    durationSeconds: seconds(outcome.startTime ?? started, ended),
  };
  const details = outcome.statusDetails ? { statusDetails: outcome.statusDetails } : {};
  if (kind === "backup") {
    const problem = folderProblem(outcome.folderUri, deps.storage.containerUrl(deps.config.backupContainer));
    if (problem !== undefined) {
      return {
        status: "Failed",
        ...times,
        ...details,
        errorCode: "InvalidServiceResponse",
        errorMessage: `Managed HSM reported backup job ${outcome.jobId} Succeeded, but ${problem}. No usable backup is recorded.`,
      };
    }
    return { status: "Succeeded", ...times, ...details, folderUri: outcome.folderUri! };
  }
  const keyName = (record as RestoreRecord).keyName;
  // Recorded from real HSMs: a selective restore of a key that still exists "succeeds" with
  // "Number of successful key versions restored: 0, Number of key versions could not overwrite: 2".
  if (keyName !== undefined && /restored:\s*0\b/i.test(outcome.statusDetails ?? "")) {
    return {
      status: "Failed",
      ...times,
      ...details,
      errorCode: "KeyNotRestored",
      errorMessage: `Managed HSM restored no version of key ${keyName} (${outcome.statusDetails}). A key that still exists, even soft-deleted, is not overwritten: recover a soft-deleted key, or purge it and restore again.`,
    };
  }
  return { status: "Succeeded", ...times, ...details };
}

/**
 * Where the HSM says it wrote the backup must be a folder directly inside the container the app gave
 * it: a folder on another host or account is never recorded (a restore would hand it a SAS).
 */
export function folderProblem(folderUri: string | undefined, containerUrl: string): string | undefined {
  if (folderUri === undefined) return "it gave no backup folder";
  let url: URL;
  try {
    url = new URL(folderUri);
  } catch {
    return "its backup folder is not a URL";
  }
  const container = new URL(containerUrl);
  const shown = JSON.stringify(`${url.origin}${url.pathname}`.slice(0, 200));
  if (url.origin !== container.origin)
    return `its backup folder ${shown} is not on the app's storage account (${container.host})`;
  if (url.search || url.hash || url.username || url.password)
    return `its backup folder ${shown} carries a query or credentials`;
  const prefix = `${container.pathname.replace(/\/$/, "")}/`;
  const folder = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : undefined;
  if (folder === undefined || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,250}$/.test(folder)) {
    return `its backup folder ${shown} is not a folder directly inside the container ${container.pathname}`;
  }
  return undefined;
}

/**
 * The record change for a start call the HSM refused, or that was never sent: no job runs. (An
 * unanswered start call is not this: its outcome is unknown.)
 */
export function startRefusedPatch(error: unknown, now: Date): FinalPatch {
  const safe = toSafeError(error);
  const code =
    error instanceof HsmRequestError
      ? error.notSent
        ? "StartNotSent"
        : (error.code ?? `HTTP${error.statusCode}`)
      : error instanceof HsmInvalidResponseError
        ? error.code
        : safe.name;
  return {
    status: "Failed",
    endedAt: now.toISOString(),
    errorCode: code,
    errorMessage: safe.message,
    ...requestIdsOfError(error),
  };
}

/** The record change when the wait for a job reached its deadline; a later status read may still correct it. */
export function timedOutPatch(
  record: AnyRecord,
  deadline: Date,
  lastState: HsmOperationState | undefined,
  lastProblem: string | undefined,
): FinalPatch {
  const known = lastState ? `its last status was ${lastState.status}` : "no status was ever read";
  return {
    status: "TimedOut",
    errorCode: "JobTimeout",
    errorMessage:
      `Job ${record.jobId ?? "(no job id)"} had not ended by the deadline ${deadline.toISOString()}; ${known}${lastProblem ? ` (last problem: ${lastProblem})` : ""}. ` +
      "The HSM may still finish it: if a later status read reports the outcome, it replaces this one.",
  };
}

export function isProvisional(record: AnyRecord): boolean {
  return record.status === "TimedOut" || (record.errorCode !== undefined && PROVISIONAL_CODES.has(record.errorCode));
}

/** The HSM accepted a job: logged before any catalog write, so its id survives a catalog that fails. */
export function emitJobAccepted(
  log: Logger,
  hsm: string,
  recordId: string,
  jobId: string,
  operation: OperationKind,
): void {
  emitEvent(log.info, EVENTS.jobAccepted, { hsm, recordId, jobId, status: "Running", operation });
}

export function emitOutcome(log: Logger, kind: Kind, record: AnyRecord): void {
  const restore = kind === "restore" ? (record as RestoreRecord) : undefined;
  const backup = kind === "backup" ? (record as BackupRecord) : undefined;
  emitEvent(log.info, kind === "backup" ? EVENTS.backupOutcome : EVENTS.restoreOutcome, {
    hsm: record.hsmName,
    recordId: record.id,
    jobId: record.jobId,
    status: record.status,
    folderUri: backup ? backup.folderUri : restore?.folderUri,
    backupId: restore?.backupId,
    keyName: restore?.keyName,
    durationSeconds: record.durationSeconds,
    errorCode: record.errorCode,
    errorMessage: record.errorMessage,
    correctionOf: record.correctedAt !== undefined ? record.correctedFrom : undefined,
    origin: backup?.origin,
    verification: backup?.verification,
    verificationMessage: backup?.verificationMessage,
    copyStatus: backup?.copyStatus,
    copyMessage: backup?.copyMessage,
    requestedBy: restore ? restore.requestedBy : backup?.requestedBy,
    requestId: record.requestId,
    clientRequestId: record.clientRequestId,
  });
}

/**
 * Retries a catalog write with backoff, within a bound (deps.persistDelaysMs, ~7.5 s by default,
 * beyond the storage SDK's own quick retries): a write that follows a job the HSM accepted carries
 * its job id, and losing it loses the job.
 */
export async function persist<T>(deps: Pick<AppDeps, "persistDelaysMs">, write: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await write();
    } catch (error) {
      const wait = deps.persistDelaysMs[attempt];
      if (wait === undefined) throw error;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

/**
 * Records a final outcome and emits its event, once. When another worker recorded an outcome first,
 * its record stands — unless that outcome was provisional (TimedOut, StartOutcomeUnknown) and this
 * one is the HSM's word: then this one replaces it as a correction, with its own event.
 */
export async function finish<T extends AnyRecord>(
  deps: AppDeps,
  kind: Kind,
  stored: Stored<T>,
  patch: FinalPatch,
  log: Logger,
): Promise<Stored<T>> {
  const saved = await persist(deps, () => deps.catalog.merge(kind, stored as Stored<never>, patch as never));
  if (saved.applied) {
    emitOutcome(log, kind, saved.record);
    return { record: saved.record as T, etag: saved.etag };
  }
  return correct(deps, kind, { record: saved.record as T, etag: saved.etag }, patch, log);
}

/** Replaces a provisional outcome with a later truth; leaves any other outcome as it is. */
async function correct<T extends AnyRecord>(
  deps: AppDeps,
  kind: Kind,
  stored: Stored<T>,
  patch: FinalPatch,
  log: Logger,
): Promise<Stored<T>> {
  const current = stored.record;
  if (!isProvisional(current) || (patch.status === current.status && patch.errorCode === current.errorCode))
    return stored;
  const correctedFrom = `${current.status}${current.errorCode ? ` ${current.errorCode}` : ""}`;
  const corrected = await persist(deps, () =>
    deps.catalog.merge(
      kind,
      stored as Stored<never>,
      {
        // A field the new truth does not carry must not survive from the old one.
        errorCode: undefined,
        errorMessage: undefined,
        statusDetails: undefined,
        endedAt: undefined,
        durationSeconds: undefined,
        requestId: undefined,
        clientRequestId: undefined,
        ...patch,
        correctedAt: deps.now().toISOString(),
        correctedFrom,
      } as never,
      { correction: true },
    ),
  );
  if (!corrected.applied) return { record: corrected.record as T, etag: corrected.etag };
  log.warn(
    `${kind} record ${current.id} of HSM ${current.hsmName}: ${correctedFrom} corrected to ${patch.status} from the HSM's own answer`,
  );
  if (!ACTIVE_STATUSES.includes(corrected.record.status)) emitOutcome(log, kind, corrected.record);
  return { record: corrected.record as T, etag: corrected.etag };
}

/**
 * Records that the HSM accepted a job (Running, with its job id). If an outcome was recorded without
 * it meanwhile (a status read decided the worker had died), that outcome is corrected back to Running.
 */
export async function recordAccepted<T extends AnyRecord>(
  deps: AppDeps,
  kind: Kind,
  stored: Stored<T>,
  state: HsmOperationState | undefined,
  jobId: string,
  log: Logger,
): Promise<Stored<T>> {
  const patch: FinalPatch = {
    status: "Running",
    jobId,
    ...(state?.startTime ? { startedAt: state.startTime.toISOString() } : {}),
  };
  const saved = await persist(deps, () => deps.catalog.merge(kind, stored as Stored<never>, patch as never));
  if (saved.applied) return { record: saved.record as T, etag: saved.etag };
  return correct(deps, kind, { record: saved.record as T, etag: saved.etag }, patch, log);
}

/**
 * Asks the HSM about a record's job if it is unsettled and records what it says: a final outcome, or
 * TimedOut once the deadline has passed. One status read, no waiting: HTTP handlers call this while
 * a person waits. A job whose status cannot be read right now stays as it is: unknown is not failed.
 */
export async function refreshRecord<T extends AnyRecord>(
  deps: AppDeps,
  kind: Kind,
  stored: Stored<T>,
  log: Logger,
): Promise<Stored<T>> {
  const record = stored.record;
  if (!UNSETTLED_STATUSES.includes(record.status)) return stored;
  const now = deps.now();
  if (record.jobId === undefined) {
    if (
      record.status !== "Starting" ||
      now.getTime() - Date.parse(record.startedAt) < staleStartMs(deps.config, undefined, kind)
    )
      return stored;
    return finish(
      deps,
      kind,
      stored,
      {
        status: "Failed",
        endedAt: now.toISOString(),
        errorCode: "StartOutcomeUnknown",
        errorMessage: `The worker stopped before the HSM answered the start call${record.errorMessage ? ` (${record.errorMessage})` : ""}. The HSM may have run a ${kind} that is not recorded here: check its audit log.`,
      },
      log,
    );
  }
  if (!JOB_ID.test(record.jobId)) {
    return finish(
      deps,
      kind,
      stored,
      {
        status: "Failed",
        endedAt: now.toISOString(),
        errorCode: "InvalidServiceResponse",
        errorMessage: `The recorded job id ${JSON.stringify(record.jobId.slice(0, 80))} is not a Managed HSM job id, so the job's status cannot be read.`,
      },
      log,
    );
  }
  const hsm = deps.config.hsms.find((h) => h.url === record.hsmUrl);
  if (!hsm) return stored; // No longer configured: the app has no business calling it.
  const deadline = deadlineOf(deps, record);
  const pastDeadline = now.getTime() >= deadline.getTime();
  let outcome: HsmOperationState | HsmJobFailedError;
  try {
    outcome = await deps.hsmClient(hsm).getOperationStatus(operationKind(kind, record), record.jobId);
  } catch (error) {
    if (error instanceof HsmJobFailedError) {
      outcome = error;
    } else if (
      error instanceof HsmStatusUnavailableError ||
      error instanceof HsmRequestError ||
      error instanceof HsmInvalidResponseError
    ) {
      const problem = toSafeError(error).message;
      log.warn(
        `Status of ${kind} ${record.id} (HSM ${record.hsmName}, job ${record.jobId}) is unknown for now: ${problem}`,
      );
      if (pastDeadline && ACTIVE_STATUSES.includes(record.status))
        return finish(deps, kind, stored, timedOutPatch(record, deadline, undefined, problem), log);
      return stored;
    } else {
      throw error;
    }
  }
  if (!(outcome instanceof HsmJobFailedError)) {
    if (outcome.status === "InProgress") {
      if (pastDeadline && ACTIVE_STATUSES.includes(record.status))
        return finish(deps, kind, stored, timedOutPatch(record, deadline, outcome, undefined), log);
      return stored;
    }
    if (outcome.status !== "Succeeded") outcome = new HsmJobFailedError(outcome.kind, hsm.url, outcome.jobId, outcome);
  }
  return finish(deps, kind, stored, finalPatch(deps, kind, record, outcome, now), log);
}

function seconds(from: Date, to: Date): number {
  return Math.max(0, Math.round((to.getTime() - from.getTime()) / 1000));
}
