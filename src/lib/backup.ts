import { ACTIVE_STATUSES, Catalog, type BackupRecord, type Stored } from "./catalog.js";
import type { HsmTarget } from "./config.js";
import type { AppDeps } from "./deps.js";
import { HsmJobFailedError, HsmRequestError } from "./hsm/errors.js";
import type { HsmOperationState } from "./hsm/poller.js";
import type { Logger } from "./logger.js";
import { finalPatch, finish, refreshRecord, startRefusedPatch } from "./outcome.js";
import { toSafeError } from "./redact.js";

export interface BackupRunOptions {
  /** What started the run, kept in the record: "timer", "cli". */
  readonly trigger: string;
  readonly abortSignal?: AbortSignal;
  readonly onProgress?: (hsm: HsmTarget, state: HsmOperationState) => void;
}

/**
 * Backs up every configured HSM at once — they are independent, and one failing never stops the
 * others. Earlier records still active (a worker recycled mid-wait) are settled first. Resolves with
 * one record per HSM; a record that is not Succeeded is a failed run for that HSM.
 */
export async function backupAll(deps: AppDeps, log: Logger, options: BackupRunOptions): Promise<BackupRecord[]> {
  await deps.prepare();
  await settleEarlierBackups(deps, log);
  return Promise.all(deps.config.hsms.map((hsm) => backupHsm(deps, hsm, log, options)));
}

/**
 * One HSM: the record is written before the start call (Starting), gets the job id as soon as the HSM
 * answers (Running) and its outcome when the job ends. If the worker dies at any point, the record
 * says how far it got, and a later status read finishes it.
 */
export async function backupHsm(deps: AppDeps, hsm: HsmTarget, log: Logger, options: BackupRunOptions): Promise<BackupRecord> {
  const { config, catalog, storage } = deps;
  const startedAt = deps.now();
  let stored: Stored<BackupRecord> = await catalog.insert("backup", {
    id: Catalog.newId(startedAt),
    hsmName: hsm.name,
    hsmUrl: hsm.url,
    status: "Starting",
    startedAt: startedAt.toISOString(),
    trigger: options.trigger,
  });
  const id = stored.record.id;
  const begin = options.abortSignal ? { abortSignal: options.abortSignal } : {};
  try {
    const containerUrl = storage.containerUrl(config.backupContainer);
    const client = deps.hsmClient(hsm);
    const poller = config.hsmStorageAuth === "sas"
      ? await client.beginBackup(containerUrl, (await storage.containerSas(config.backupContainer, "backup", config.sasTtlMinutes)).token, begin)
      : await client.beginBackup(containerUrl, begin);
    const started = poller.getOperationState();
    stored = await catalog.merge("backup", stored, {
      status: "Running",
      jobId: poller.jobId,
      ...(started?.startTime ? { startedAt: started.startTime.toISOString() } : {}),
    });
    log.info(`Backup of HSM ${hsm.name} started: job ${poller.jobId}, record ${id}`);
    const final = await poller.pollUntilDone({
      ...begin,
      ...(options.onProgress ? { onProgress: (state: HsmOperationState) => options.onProgress!(hsm, state) } : {}),
    });
    stored = await finish(deps, "backup", stored, finalPatch(stored.record, final, deps.now()), log);
  } catch (error) {
    stored = await recordFailure(deps, stored, error, log);
  }
  const record = stored.record;
  if (record.status === "Succeeded") {
    log.info(`Backup of HSM ${hsm.name} succeeded in ${record.durationSeconds} s: ${record.folderUri} (record ${id})`);
  } else {
    log.error(`Backup of HSM ${hsm.name} did not succeed: ${record.status} ${record.errorCode ?? ""} ${record.errorMessage ?? ""} (record ${id})`);
  }
  return record;
}

/**
 * A job that ended badly is recorded Failed/Canceled. When the start call got no answer, or status
 * reads stopped answering, the outcome is unknown: the record stays as it is, with the problem noted,
 * for a later status read to settle.
 */
async function recordFailure(deps: AppDeps, stored: Stored<BackupRecord>, error: unknown, log: Logger): Promise<Stored<BackupRecord>> {
  const now = deps.now();
  if (error instanceof HsmJobFailedError) {
    return finish(deps, "backup", stored, finalPatch(stored.record, error, now), log);
  }
  const unanswered = error instanceof HsmRequestError && error.unanswered;
  if (stored.record.status === "Starting" && !unanswered) {
    return finish(deps, "backup", stored, startRefusedPatch(error, now), log);
  }
  const safe = toSafeError(error);
  log.warn(`Backup record ${stored.record.id}: outcome unknown for now (${safe.message}); a later status read will settle it`);
  const noted = await deps.catalog.merge("backup", stored, { errorMessage: `Outcome not yet known: ${safe.message}` });
  return noted;
}

async function settleEarlierBackups(deps: AppDeps, log: Logger): Promise<void> {
  for (const stored of await deps.catalog.active("backup")) {
    const settled = await refreshRecord(deps, "backup", stored, log);
    if (!ACTIVE_STATUSES.includes(settled.record.status)) {
      log.info(`Settled earlier backup record ${settled.record.id} of HSM ${settled.record.hsmName}: ${settled.record.status}`);
    }
  }
}

/** One line per HSM that did not succeed, for the invocation's failure message; undefined if all did. */
export function failureSummary(records: readonly BackupRecord[]): string | undefined {
  const failed = records.filter((r) => r.status !== "Succeeded");
  if (failed.length === 0) return undefined;
  return `Backup did not succeed for ${failed.length} of ${records.length} HSM(s): ` +
    failed.map((r) => `${r.hsmName} (${r.status}${r.errorCode ? ` ${r.errorCode}` : ""}: ${r.errorMessage ?? "no details"}; record ${r.id})`).join("; ");
}
