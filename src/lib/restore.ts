import {
  ACTIVE_STATUSES,
  Catalog,
  type BackupRecord,
  type RestoreRecord,
  type StartLock,
  type Stored,
} from "./catalog.js";
import type { AppDeps } from "./deps.js";
import { HsmInvalidResponseError, HsmRequestError } from "./hsm/errors.js";
import type { HsmOperation } from "./hsm/types.js";
import type { Logger } from "./logger.js";
import { emitJobAccepted, finish, persist, recordAccepted, refreshRecord, startRefusedPatch } from "./outcome.js";
import { ProblemError } from "./problem.js";
import { toSafeError } from "./redact.js";
import { emitEvent, EVENTS } from "./telemetry.js";

/** Titles of the answers for a start that did not reach the HSM or got no answer from it (the CLI exits 4 on them). */
export const NOT_SENT_TITLE = "Restore not sent to Managed HSM";
export const UNANSWERED_TITLE = "Managed HSM did not answer";
export const UNREACHED_TITLES: ReadonlySet<string> = new Set([NOT_SENT_TITLE, UNANSWERED_TITLE]);

/** Managed HSM requires a full backup to have completed at least this long before a full restore. */
export const FULL_RESTORE_MIN_BACKUP_AGE_MS = 30 * 60_000;
/**
 * A start lock not renewed for this long was left by a worker that died. The holder renews it right
 * before it records the restore, and every call in between has a request timeout well below this.
 */
const START_LOCK_STALE_MS = 5 * 60_000;

export interface RestoreRequest {
  readonly backupId: string;
  /** Restore only this key (all its versions); absent: restore the whole HSM. */
  readonly keyName?: string;
  /** Who asked, recorded with the restore and in its started event. */
  readonly requestedBy?: string;
  /** A full restore must name the HSM it wipes (as the catalog shows it); a key restore needs nothing. */
  readonly confirm?: string;
}

/**
 * Starts a restore from a recorded backup, into the HSM that backup was taken from, and returns at
 * once with the record (Running, with the HSM's job id): HTTP callers cannot wait for it.
 * @throws ProblemError 403/404/409 for requests that must not run, 502 when the HSM refused the start.
 */
export async function startRestore(deps: AppDeps, log: Logger, request: RestoreRequest): Promise<RestoreRecord> {
  const { config, catalog, storage } = deps;
  if (!config.restoreEnabled) {
    throw new ProblemError(
      403,
      "Restore is disabled",
      "This deployment has RESTORE_ENABLED=false; it only takes backups.",
    );
  }
  await deps.prepare();
  const backup = (await catalog.get("backup", request.backupId))?.record;
  if (!backup) throw new ProblemError(404, "Backup not found", `No backup with id ${request.backupId} is recorded.`);
  assertRestorable(backup);
  const hsm = config.hsms.find((h) => h.url === backup.hsmUrl);
  if (!hsm) {
    throw new ProblemError(
      409,
      "Backup belongs to no configured HSM",
      `Backup ${backup.id} was taken from ${backup.hsmUrl}, which is not in MANAGED_HSM_URLS; this app restores a backup only into the HSM it came from.`,
    );
  }
  assertConfirmed(backup, request);
  const now = deps.now();
  if (request.keyName === undefined) {
    const allowedAt = Date.parse(backup.endedAt ?? backup.startedAt) + FULL_RESTORE_MIN_BACKUP_AGE_MS;
    if (now.getTime() < allowedAt) {
      const wait = Math.ceil((allowedAt - now.getTime()) / 1000);
      throw new ProblemError(
        409,
        "Backup too recent for a full restore",
        `Managed HSM requires a full backup to have completed at least 30 minutes before a full restore. Backup ${backup.id} ended at ${backup.endedAt}; retry after ${new Date(allowedAt).toISOString()}.`,
        { retryAfter: new Date(allowedAt).toISOString() },
        { "Retry-After": String(wait) },
      );
    }
  }
  // Two requests at once (a double click, a retrying client) must not both pass the idle check: the
  // lock is held from the check until the Starting record exists, which later requests then see.
  // Prune holds the same lock while it deletes this HSM's folders.
  const lock = await catalog.tryLock(hsm.name, deps.now, START_LOCK_STALE_MS);
  if (!lock) {
    throw new ProblemError(
      409,
      "HSM busy",
      `Another restore of HSM ${hsm.name} is being started, or its old backups are being pruned, right now.`,
    );
  }
  let stored: Stored<RestoreRecord>;
  try {
    await assertHsmIdle(deps, hsm.name, log);
    // Read again under the lock: a prune that ended since the first read may have deleted this folder.
    const current = (await catalog.get("backup", backup.id))?.record;
    if (current) assertRestorable(current);
    await assertStillHeld(lock, hsm.name);
    stored = await catalog.insert("restore", {
      id: Catalog.newId(now),
      hsmName: hsm.name,
      hsmUrl: hsm.url,
      backupId: backup.id,
      folderUri: backup.folderUri,
      ...(request.keyName !== undefined ? { keyName: request.keyName } : {}),
      ...(request.requestedBy !== undefined ? { requestedBy: request.requestedBy } : {}),
      status: "Starting",
      startedAt: now.toISOString(),
      deadlineAt: new Date(now.getTime() + config.jobTimeoutMs).toISOString(),
    });
  } finally {
    await lock.release();
  }
  let poller: HsmOperation;
  try {
    const client = deps.hsmClient(hsm);
    const sas =
      config.hsmStorageAuth === "sas"
        ? (await storage.containerSas(config.backupContainer, "restore", config.sasTtlMinutes)).token
        : undefined;
    // One attempt: a person is waiting, and the HTTP trigger is cut off at 230 s. A throttled start is answered, not slept on.
    const once = { maxAttempts: 1 };
    poller =
      request.keyName !== undefined
        ? await (sas !== undefined
            ? client.beginSelectiveKeyRestore(request.keyName, backup.folderUri, sas, once)
            : client.beginSelectiveKeyRestore(request.keyName, backup.folderUri, once))
        : await (sas !== undefined
            ? client.beginRestore(backup.folderUri, sas, once)
            : client.beginRestore(backup.folderUri, once));
  } catch (error) {
    throw await startFailed(deps, stored, error, log);
  }
  const jobId = poller.jobId;
  // The HSM is restoring from now on: the events (and the alert) go out before any catalog write can fail.
  emitJobAccepted(
    log,
    hsm.name,
    stored.record.id,
    jobId,
    request.keyName !== undefined ? "selectiveKeyRestore" : "restore",
  );
  emitEvent(log.info, EVENTS.restoreStarted, {
    hsm: hsm.name,
    recordId: stored.record.id,
    jobId,
    status: "Running",
    backupId: backup.id,
    folderUri: backup.folderUri,
    keyName: request.keyName,
    requestedBy: request.requestedBy,
  });
  log.warn(
    `${request.keyName ? `Selective restore of key ${request.keyName}` : "FULL restore"} of HSM ${hsm.name} started from backup ${backup.id}: job ${jobId}, record ${stored.record.id}`,
  );
  try {
    stored = await recordAccepted(deps, "restore", stored, poller.getOperationState(), jobId, log);
  } catch (error) {
    // Accepted is accepted: never answered or recorded as a failure. The record stays Starting, which
    // keeps the HSM busy for other requests, and the answer carries the job id.
    const safe = toSafeError(error);
    log.error(
      `Restore job ${jobId} of HSM ${hsm.name} was accepted, but recording it failed (${safe.message}); record ${stored.record.id} still says Starting`,
    );
    return {
      ...stored.record,
      status: "Running",
      jobId,
      errorMessage: `Accepted by the HSM, but not yet recorded in the catalog: ${safe.message}`,
    };
  }
  return stored.record;
}

/** Only a Succeeded backup with a folder can be restored; a Pruned one is refused by name. */
function assertRestorable(backup: BackupRecord): asserts backup is BackupRecord & { folderUri: string } {
  if (backup.status === "Pruned") {
    throw new ProblemError(
      409,
      "Backup was pruned",
      `Backup ${backup.id} of HSM ${backup.hsmName} was pruned at ${backup.prunedAt ?? "an unrecorded time"}: its folder was deleted after the retention (RETENTION_DAYS), so it cannot be restored. Choose a newer backup (hsm-backup list --hsm ${backup.hsmName} --status Succeeded).`,
    );
  }
  if (backup.status !== "Succeeded" || !backup.folderUri) {
    throw new ProblemError(
      409,
      "Backup cannot be restored",
      `Backup ${backup.id} of HSM ${backup.hsmName} is ${backup.status}; only a Succeeded backup can be restored.`,
    );
  }
}

/**
 * A full restore replaces every key of the HSM, role assignments included: the caller must name the
 * HSM it wipes. Nothing has been written and the HSM has not been called when this refuses.
 */
function assertConfirmed(backup: BackupRecord, request: RestoreRequest): void {
  if (request.confirm !== undefined && request.confirm !== backup.hsmName) {
    throw new ProblemError(
      400,
      "Confirmation names another HSM",
      `confirm is "${request.confirm.slice(0, 100)}", but backup ${backup.id} belongs to HSM "${backup.hsmName}". Nothing was started.`,
    );
  }
  if (request.keyName === undefined && request.confirm === undefined) {
    throw new ProblemError(
      400,
      "Full restore not confirmed",
      `A full restore replaces every key of HSM ${backup.hsmName}, and its role assignments, with the state of backup ${backup.id} (${backup.endedAt ?? backup.startedAt}); keys created or changed since are lost. ` +
        `To go ahead send {"backupId": "${backup.id}", "confirm": "${backup.hsmName}"}; to restore one key, send "keyName" instead. Nothing was started.`,
      { confirm: backup.hsmName },
    );
  }
}

/** Renews the start lock right before the restore is recorded: a holder that lost it must not go on. */
async function assertStillHeld(lock: StartLock, hsmName: string): Promise<void> {
  if (!(await lock.renew())) {
    throw new ProblemError(
      409,
      "HSM busy",
      `Another restore of HSM ${hsmName} took over the start while this one was checking; nothing was started by this request.`,
    );
  }
}

/** The current state of a restore, asking the HSM while it runs. Undefined when no such record exists. */
export async function restoreStatus(deps: AppDeps, log: Logger, id: string): Promise<RestoreRecord | undefined> {
  const stored = await deps.catalog.get("restore", id);
  return stored && (await refreshRecord(deps, "restore", stored, log)).record;
}

/** Only one backup or restore runs at a time on an HSM: say so before the HSM has to. */
async function assertHsmIdle(deps: AppDeps, hsmName: string, log: Logger): Promise<void> {
  for (const kind of ["restore", "backup"] as const) {
    for (const stored of await deps.catalog.active(kind, hsmName)) {
      const current = await refreshRecord(deps, kind, stored, log);
      if (ACTIVE_STATUSES.includes(current.record.status)) {
        throw new ProblemError(
          409,
          "HSM busy",
          `${kind === "restore" ? "Restore" : "Backup"} ${current.record.id} is still ${current.record.status} on HSM ${hsmName}; Managed HSM runs one backup or restore at a time.`,
          { activeRecord: `/api/${kind}s/${current.record.id}` },
        );
      }
    }
  }
}

/** Records why a start failed and turns it into the answer for the caller. */
async function startFailed(
  deps: AppDeps,
  stored: Stored<RestoreRecord>,
  error: unknown,
  log: Logger,
): Promise<ProblemError> {
  const safe = toSafeError(error);
  const restore = { restore: `/api/restores/${stored.record.id}` };
  if (error instanceof HsmRequestError && error.unanswered) {
    // No answer to the start call: the HSM may be restoring. The record stays Starting for a later read to settle.
    await persist(deps, () =>
      deps.catalog.merge("restore", stored, { errorMessage: `Outcome not yet known: ${safe.message}` }),
    );
    log.error(`Restore record ${stored.record.id}: start call unanswered: ${safe.message}`);
    return new ProblemError(
      502,
      UNANSWERED_TITLE,
      `${safe.message}. The HSM may have started the restore: check /api/restores/${stored.record.id} before trying again.`,
      restore,
    );
  }
  const saved = await finish(deps, "restore", stored, startRefusedPatch(error, deps.now()), log);
  log.error(`Restore record ${saved.record.id} failed to start: ${safe.message}`);
  if (error instanceof HsmRequestError && error.notSent) {
    return new ProblemError(502, NOT_SENT_TITLE, safe.message, restore);
  }
  if (error instanceof HsmRequestError && error.statusCode === 409) {
    return new ProblemError(409, "HSM busy", safe.message, restore);
  }
  if (error instanceof HsmRequestError && (error.statusCode === 429 || error.statusCode === 503)) {
    return new ProblemError(
      503,
      "Managed HSM is throttling",
      `${safe.message}. Nothing was started; try again in a minute.`,
      restore,
      { "Retry-After": "60" },
    );
  }
  if (error instanceof HsmRequestError) {
    return new ProblemError(502, "Managed HSM refused the restore", safe.message, restore);
  }
  if (error instanceof HsmInvalidResponseError) {
    return new ProblemError(
      502,
      "Managed HSM gave an invalid answer",
      `${safe.message}. Check the HSM's audit log before trying again.`,
      restore,
    );
  }
  throw error;
}
