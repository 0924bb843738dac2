/**
 * Turning what the HSM said about a job into a catalog record change, and refreshing a record whose
 * job is still active. Shared by backups and restores, by the timer, the HTTP status routes and the
 * CLI: whoever reads a final status first records it, once.
 */
import { ACTIVE_STATUSES, type BackupRecord, type Kind, type RestoreRecord, type Stored } from "./catalog.js";
import type { AppDeps } from "./deps.js";
import { HsmJobFailedError, HsmRequestError, HsmStatusUnavailableError } from "./hsm/errors.js";
import type { HsmOperationState, OperationKind } from "./hsm/poller.js";
import type { Logger } from "./logger.js";
import { toSafeError } from "./redact.js";
import { emitEvent, EVENTS } from "./telemetry.js";

/** A record still Starting after this long lost its worker before the HSM answered the start call. */
export const STALE_START_MS = 15 * 60_000;

type AnyRecord = BackupRecord | RestoreRecord;
type FinalPatch = Partial<Omit<BackupRecord & RestoreRecord, "id">>;

export function operationKind(kind: Kind, record: AnyRecord): OperationKind {
  if (kind === "backup") return "backup";
  return (record as RestoreRecord).keyName ? "selectiveKeyRestore" : "restore";
}

/** The record change for a job that ended: Succeeded from its final state, or Failed/Canceled from the error. */
export function finalPatch(record: AnyRecord, outcome: HsmOperationState | HsmJobFailedError, now: Date): FinalPatch {
  const started = new Date(record.startedAt);
  if (outcome instanceof HsmJobFailedError) {
    // The HSM's own times when it gave them: a record settled later must not end at the read time.
    const ended = outcome.state?.endTime ?? now;
    return {
      status: outcome.status,
      endedAt: ended.toISOString(),
      durationSeconds: seconds(outcome.state?.startTime ?? started, ended),
      errorCode: outcome.code ?? outcome.status,
      errorMessage: outcome.message,
    };
  }
  const ended = outcome.endTime ?? now;
  return {
    status: "Succeeded",
    endedAt: ended.toISOString(),
    durationSeconds: seconds(outcome.startTime ?? started, ended),
    ...(outcome.statusDetails ? { statusDetails: outcome.statusDetails } : {}),
    ...(outcome.folderUri ? { folderUri: outcome.folderUri } : {}),
  };
}

/**
 * The record change for a start call the HSM refused, or that failed before it was sent: no job
 * runs. (An unanswered start call is not this: its outcome is unknown.)
 */
export function startRefusedPatch(error: unknown, now: Date): FinalPatch {
  const safe = toSafeError(error);
  return {
    status: "Failed",
    endedAt: now.toISOString(),
    errorCode: error instanceof HsmRequestError ? (error.code ?? `HTTP${error.statusCode}`) : safe.name,
    errorMessage: safe.message,
  };
}

export function emitOutcome(log: Logger, kind: Kind, record: AnyRecord): void {
  const restore = kind === "restore" ? (record as RestoreRecord) : undefined;
  emitEvent(log.info, kind === "backup" ? EVENTS.backupOutcome : EVENTS.restoreOutcome, {
    hsm: record.hsmName,
    recordId: record.id,
    jobId: record.jobId,
    status: record.status,
    folderUri: kind === "backup" ? (record as BackupRecord).folderUri : restore?.folderUri,
    backupId: restore?.backupId,
    keyName: restore?.keyName,
    durationSeconds: record.durationSeconds,
    errorCode: record.errorCode,
    errorMessage: record.errorMessage,
  });
}

/** Records a final outcome and emits its event, unless another worker recorded one first. */
export async function finish<T extends AnyRecord>(deps: AppDeps, kind: Kind, stored: Stored<T>, patch: FinalPatch, log: Logger): Promise<Stored<T>> {
  const saved = await deps.catalog.merge(kind, stored as Stored<never>, patch as never);
  // When another worker got there first its record stands, and it emitted the event.
  if (saved.applied) emitOutcome(log, kind, saved.record);
  return { record: saved.record as T, etag: saved.etag };
}

/**
 * Asks the HSM about a record's job if it is still active and records a final outcome when there is
 * one. A job whose status cannot be read right now stays active: unknown is not failed.
 */
export async function refreshRecord<T extends AnyRecord>(deps: AppDeps, kind: Kind, stored: Stored<T>, log: Logger): Promise<Stored<T>> {
  const record = stored.record;
  if (!ACTIVE_STATUSES.includes(record.status)) return stored;
  const now = deps.now();
  if (record.jobId === undefined) {
    if (now.getTime() - Date.parse(record.startedAt) < STALE_START_MS) return stored;
    return finish(deps, kind, stored, {
      status: "Failed",
      endedAt: now.toISOString(),
      errorCode: "StartOutcomeUnknown",
      errorMessage: `The worker stopped before the HSM answered the start call. The HSM may have run a ${kind} that is not recorded here: check its audit log.`,
    }, log);
  }
  const hsm = deps.config.hsms.find((h) => h.url === record.hsmUrl);
  if (!hsm) return stored; // No longer configured: the app has no business calling it.
  let outcome: HsmOperationState | HsmJobFailedError;
  try {
    outcome = await deps.hsmClient(hsm).getOperationStatus(operationKind(kind, record), record.jobId);
  } catch (error) {
    if (!(error instanceof HsmJobFailedError)) {
      if (error instanceof HsmStatusUnavailableError || error instanceof HsmRequestError) {
        log.warn(`Status of ${kind} ${record.id} (HSM ${record.hsmName}, job ${record.jobId}) is unknown for now: ${toSafeError(error).message}`);
        return stored;
      }
      throw error;
    }
    outcome = error;
  }
  if (!(outcome instanceof HsmJobFailedError)) {
    if (outcome.status === "InProgress") return stored;
    if (outcome.status !== "Succeeded") outcome = new HsmJobFailedError(outcome.kind, hsm.url, outcome.jobId, outcome);
  }
  return finish(deps, kind, stored, finalPatch(record, outcome, now), log);
}

function seconds(from: Date, to: Date): number {
  return Math.max(0, Math.round((to.getTime() - from.getTime()) / 1000));
}
