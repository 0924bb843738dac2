import { ACTIVE_STATUSES, Catalog, type RestoreRecord, type Stored } from "./catalog.js";
import type { AppDeps } from "./deps.js";
import { HsmRequestError } from "./hsm/errors.js";
import type { Logger } from "./logger.js";
import { finish, refreshRecord, startRefusedPatch } from "./outcome.js";
import { ProblemError } from "./problem.js";
import { toSafeError } from "./redact.js";
import { emitEvent, EVENTS } from "./telemetry.js";

/** Managed HSM requires a full backup to have completed at least this long before a full restore. */
export const FULL_RESTORE_MIN_BACKUP_AGE_MS = 30 * 60_000;
/** The start lock is held for a few catalog calls; one this old was left by a worker that died. */
const START_LOCK_STALE_MS = 60_000;

export interface RestoreRequest {
  readonly backupId: string;
  /** Restore only this key (all its versions); absent: restore the whole HSM. */
  readonly keyName?: string;
}

/**
 * Starts a restore from a recorded backup, into the HSM that backup was taken from, and returns at
 * once with the record (Running, with the HSM's job id): HTTP callers cannot wait for it.
 * @throws ProblemError 403/404/409 for requests that must not run, 502 when the HSM refused the start.
 */
export async function startRestore(deps: AppDeps, log: Logger, request: RestoreRequest): Promise<RestoreRecord> {
  const { config, catalog, storage } = deps;
  if (!config.restoreEnabled) {
    throw new ProblemError(403, "Restore is disabled", "This deployment has RESTORE_ENABLED=false; it only takes backups.");
  }
  await deps.prepare();
  const backup = (await catalog.get("backup", request.backupId))?.record;
  if (!backup) throw new ProblemError(404, "Backup not found", `No backup with id ${request.backupId} is recorded.`);
  if (backup.status !== "Succeeded" || !backup.folderUri) {
    throw new ProblemError(409, "Backup cannot be restored",
      `Backup ${backup.id} of HSM ${backup.hsmName} is ${backup.status}; only a Succeeded backup can be restored.`);
  }
  const hsm = config.hsms.find((h) => h.url === backup.hsmUrl);
  if (!hsm) {
    throw new ProblemError(409, "Backup belongs to no configured HSM",
      `Backup ${backup.id} was taken from ${backup.hsmUrl}, which is not in MANAGED_HSM_URLS; this app restores a backup only into the HSM it came from.`);
  }
  const now = deps.now();
  if (request.keyName === undefined) {
    const allowedAt = Date.parse(backup.endedAt ?? backup.startedAt) + FULL_RESTORE_MIN_BACKUP_AGE_MS;
    if (now.getTime() < allowedAt) {
      const wait = Math.ceil((allowedAt - now.getTime()) / 1000);
      throw new ProblemError(409, "Backup too recent for a full restore",
        `Managed HSM requires a full backup to have completed at least 30 minutes before a full restore. Backup ${backup.id} ended at ${backup.endedAt}; retry after ${new Date(allowedAt).toISOString()}.`,
        { retryAfter: new Date(allowedAt).toISOString() }, { "Retry-After": String(wait) });
    }
  }
  // Two requests at once (a double click, a retrying client) must not both pass the idle check: the
  // lock is held from the check until the Starting record exists, which later requests then see.
  if (!(await catalog.tryLock(hsm.name, now, START_LOCK_STALE_MS))) {
    throw new ProblemError(409, "HSM busy", `Another restore of HSM ${hsm.name} is being started right now.`);
  }
  let stored: Stored<RestoreRecord>;
  try {
    await assertHsmIdle(deps, hsm.name, log);
    stored = await catalog.insert("restore", {
      id: Catalog.newId(now),
      hsmName: hsm.name,
      hsmUrl: hsm.url,
      backupId: backup.id,
      folderUri: backup.folderUri,
      ...(request.keyName !== undefined ? { keyName: request.keyName } : {}),
      status: "Starting",
      startedAt: now.toISOString(),
    });
  } finally {
    await catalog.unlock(hsm.name);
  }
  try {
    const client = deps.hsmClient(hsm);
    const sas = config.hsmStorageAuth === "sas"
      ? (await storage.containerSas(config.backupContainer, "restore", config.sasTtlMinutes)).token
      : undefined;
    const poller = request.keyName !== undefined
      ? await (sas !== undefined ? client.beginSelectiveKeyRestore(request.keyName, backup.folderUri, sas) : client.beginSelectiveKeyRestore(request.keyName, backup.folderUri))
      : await (sas !== undefined ? client.beginRestore(backup.folderUri, sas) : client.beginRestore(backup.folderUri));
    const started = poller.getOperationState();
    stored = await catalog.merge("restore", stored, {
      status: "Running",
      jobId: poller.jobId,
      ...(started?.startTime ? { startedAt: started.startTime.toISOString() } : {}),
    });
  } catch (error) {
    throw await startFailed(deps, stored, error, log);
  }
  const record = stored.record;
  emitEvent(log.info, EVENTS.restoreStarted, {
    hsm: record.hsmName, recordId: record.id, jobId: record.jobId, status: record.status,
    backupId: record.backupId, folderUri: record.folderUri, keyName: record.keyName,
  });
  log.warn(`${record.keyName ? `Selective restore of key ${record.keyName}` : "FULL restore"} of HSM ${record.hsmName} started from backup ${record.backupId}: job ${record.jobId}, record ${record.id}`);
  return record;
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
        throw new ProblemError(409, "HSM busy",
          `${kind === "restore" ? "Restore" : "Backup"} ${current.record.id} is still ${current.record.status} on HSM ${hsmName}; Managed HSM runs one backup or restore at a time.`,
          { activeRecord: `/api/${kind}s/${current.record.id}` });
      }
    }
  }
}

/** Records why a start failed and turns it into the answer for the caller. */
async function startFailed(deps: AppDeps, stored: Stored<RestoreRecord>, error: unknown, log: Logger): Promise<ProblemError> {
  const safe = toSafeError(error);
  if (error instanceof HsmRequestError && error.unanswered) {
    // No answer to the start call: the HSM may be restoring. The record stays Starting for a later read to settle.
    await deps.catalog.merge("restore", stored, { errorMessage: `Outcome not yet known: ${safe.message}` });
    log.error(`Restore record ${stored.record.id}: start call unanswered: ${safe.message}`);
    return new ProblemError(502, "Managed HSM did not answer", `${safe.message}. Check /api/restores/${stored.record.id} before trying again.`,
      { restore: `/api/restores/${stored.record.id}` });
  }
  const saved = await finish(deps, "restore", stored, startRefusedPatch(error, deps.now()), log);
  log.error(`Restore record ${saved.record.id} failed to start: ${safe.message}`);
  if (error instanceof HsmRequestError && error.statusCode === 409) {
    return new ProblemError(409, "HSM busy", safe.message, { restore: `/api/restores/${saved.record.id}` });
  }
  if (error instanceof HsmRequestError) {
    return new ProblemError(502, "Managed HSM refused the restore", safe.message, { restore: `/api/restores/${saved.record.id}` });
  }
  throw error;
}
