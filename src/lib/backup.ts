import { ACTIVE_STATUSES, Catalog, type BackupRecord, type Kind, type Stored } from "./catalog.js";
import type { HsmTarget } from "./config.js";
import { copyBackup, keepChecks } from "./copy.js";
import type { AppDeps } from "./deps.js";
import { HsmJobFailedError, HsmRequestError, HsmWaitDeadlineError } from "./hsm/errors.js";
import type { HsmOperation, HsmOperationState } from "./hsm/types.js";
import type { Logger } from "./logger.js";
import {
  deadlineOf,
  emitJobAccepted,
  emitOutcome,
  finalPatch,
  finish,
  persist,
  recordAccepted,
  refreshRecord,
  startRefusedPatch,
  timedOutPatch,
  type AnyRecord,
  type FinalPatch,
} from "./outcome.js";
import { preflight } from "./preflight.js";
import { toSafeError } from "./redact.js";
import { verifyBackup } from "./verify.js";

export interface BackupRunOptions {
  /** What started the run, kept in the record: "timer", "cli", "http". */
  readonly trigger: string;
  /** Who asked for an on-demand backup, kept in the record (see requestedBy in src/lib/http.ts). */
  readonly requestedBy?: string;
  /**
   * false: start each job, record it Running and return (outcome Pending) without waiting for it: an
   * HTTP call must answer within 230 s. The reconcile run or a status read records the outcome.
   * Default true (the timer and the CLI wait).
   */
  readonly waitForOutcome?: boolean;
  readonly abortSignal?: AbortSignal;
  readonly onProgress?: (hsm: HsmTarget, state: HsmOperationState) => void;
  /**
   * When this run stops waiting (a timer run must end before the function timeout). A job still
   * running then stays Running for the reconcile run; only the job's own deadline makes it TimedOut.
   */
  readonly runDeadline?: Date;
  /** Only these HSMs (by name); default every configured HSM. */
  readonly hsmNames?: readonly string[];
  /**
   * The schedule slot of a timer run. An HSM is backed up at most once per slot: a second
   * invocation for the same slot (duplicate delivery, catch-up, two instances) starts nothing.
   */
  readonly slot?: Date;
}

/**
 * How one HSM's part of a run ended. Pending: the job runs on after this run stopped waiting;
 * Unknown: the start call got no answer; NotRecorded: the catalog could not be written (detail says
 * whether a job was started, and its id).
 */
export type HsmRunOutcome =
  "Succeeded" | "Failed" | "Canceled" | "TimedOut" | "Skipped" | "Pending" | "Unknown" | "NotRecorded";

export interface HsmRunResult {
  readonly hsm: string;
  readonly outcome: HsmRunOutcome;
  readonly record?: BackupRecord;
  readonly jobId?: string;
  readonly detail?: string;
}

/** Outcomes that are not a failure of the run: the backup exists, is on its way, or was rightly not attempted. */
const NOT_FAILED: readonly HsmRunOutcome[] = ["Succeeded", "Skipped", "Pending"];

/**
 * Backs up every configured HSM, at most BACKUP_CONCURRENCY at once. Each HSM is its own failure
 * domain: settling its earlier records, its new backup and its catalog writes can fail only that
 * HSM's result, never stop or delay another HSM's backup. Resolves once every HSM has a result.
 */
export async function backupAll(deps: AppDeps, log: Logger, options: BackupRunOptions): Promise<HsmRunResult[]> {
  const targets = options.hsmNames
    ? deps.config.hsms.filter((h) => options.hsmNames!.includes(h.name))
    : deps.config.hsms;
  try {
    await deps.prepare();
  } catch (error) {
    const detail = `backup storage could not be reached (${toSafeError(error).message}); no backup was started`;
    log.error(`Backup run: ${detail}`);
    return targets.map((hsm) => ({ hsm: hsm.name, outcome: "NotRecorded", detail }));
  }
  return mapLimit(targets, deps.config.backupConcurrency, (hsm) =>
    backupHsm(deps, hsm, log, options).catch((error: unknown): HsmRunResult => {
      const detail = `unexpected error: ${toSafeError(error).message}`;
      log.error(`Backup of HSM ${hsm.name}: ${detail}`);
      return { hsm: hsm.name, outcome: "Unknown", detail };
    }),
  );
}

/**
 * One HSM: earlier unsettled records are settled first; if a job is still running on the HSM the
 * backup is Skipped. Otherwise the record is written before the start call (Starting), gets the job
 * id as soon as the HSM answers (Running) and its outcome when the job ends. If the worker dies at
 * any point, the record says how far it got, and a later status read (reconcile) finishes it.
 */
export async function backupHsm(
  deps: AppDeps,
  hsm: HsmTarget,
  log: Logger,
  options: BackupRunOptions,
): Promise<HsmRunResult> {
  const { config, catalog } = deps;
  const id = Catalog.newId(deps.now());
  if (options.slot) {
    let claimed: boolean;
    try {
      claimed = await persist(deps, () => catalog.claimSlot(hsm.name, options.slot!, id));
    } catch (error) {
      return notRecorded(
        log,
        hsm,
        `the catalog could not be written (${toSafeError(error).message}); no backup was started`,
      );
    }
    if (!claimed) {
      const detail = `another invocation already took the backup of schedule slot ${options.slot.toISOString()}; nothing was started`;
      log.info(`Backup of HSM ${hsm.name}: ${detail}`);
      return { hsm: hsm.name, outcome: "Skipped", detail };
    }
  }
  let busy: { kind: Kind; record: AnyRecord } | undefined;
  try {
    busy = await settleEarlier(deps, hsm, log);
  } catch (error) {
    return notRecorded(
      log,
      hsm,
      `the catalog could not be read (${toSafeError(error).message}); no backup was started`,
    );
  }
  const startedAt = deps.now();
  const base = {
    id,
    hsmName: hsm.name,
    hsmUrl: hsm.url,
    startedAt: startedAt.toISOString(),
    trigger: options.trigger,
    deadlineAt: new Date(startedAt.getTime() + config.jobTimeoutMs).toISOString(),
    ...(options.slot ? { slot: options.slot.toISOString() } : {}),
    ...(options.requestedBy !== undefined ? { requestedBy: options.requestedBy } : {}),
  };
  if (busy) return skip(deps, hsm, log, base, busy);

  let stored: Stored<BackupRecord>;
  try {
    stored = await persist(deps, () => catalog.insert("backup", { ...base, status: "Starting" }));
  } catch (error) {
    return notRecorded(
      log,
      hsm,
      `the catalog could not be written (${toSafeError(error).message}); no backup was started`,
    );
  }
  if (config.preflight) {
    const ended = await preflightEnded(deps, hsm, stored, log, options);
    if (ended) return ended;
  }
  let poller: HsmOperation;
  try {
    poller = await startBackup(deps, hsm, options);
  } catch (error) {
    return startFailed(deps, hsm, stored, error, log, options.abortSignal?.aborted === true);
  }
  const jobId = poller.jobId;
  // Before any catalog write: whatever happens to the catalog now, the job id is in the log.
  emitJobAccepted(log, hsm.name, stored.record.id, jobId, "backup");
  log.info(`Backup of HSM ${hsm.name} started: job ${jobId}, record ${stored.record.id}`);
  try {
    stored = await recordAccepted(deps, "backup", stored, poller.getOperationState(), jobId, log);
  } catch (error) {
    log.error(
      `Backup job ${jobId} of HSM ${hsm.name} was accepted, but recording it failed (${toSafeError(error).message}); waiting for the job anyway (record ${stored.record.id})`,
    );
  }
  if (options.waitForOutcome === false) return { hsm: hsm.name, outcome: "Pending", record: stored.record, jobId };
  const jobDeadline = deadlineOf(deps, stored.record);
  const waitUntil = waitDeadline(jobDeadline, options);
  let patch: FinalPatch | undefined;
  let unknown: string | undefined;
  try {
    const final = await poller.pollUntilDone({
      deadline: waitUntil,
      ...(options.abortSignal ? { abortSignal: options.abortSignal } : {}),
      ...(options.onProgress ? { onProgress: (state: HsmOperationState) => options.onProgress!(hsm, state) } : {}),
    });
    patch = finalPatch(deps, "backup", stored.record, final, deps.now());
    // A backup is only as good as its restore: the HSM's own pre-restore check on the new folder.
    const folderUri = patch.status === "Succeeded" ? patch.folderUri : undefined;
    if (folderUri) {
      patch = { ...patch, ...(await verifyBackup(deps, hsm, folderUri, waitUntil)) };
      // Then the immutable copy, when on; it never changes the backup's own outcome.
      patch = { ...patch, ...(await copyBackup(deps, hsm, folderUri, patch.verification, waitUntil, log)) };
    }
  } catch (error) {
    if (error instanceof HsmJobFailedError) patch = finalPatch(deps, "backup", stored.record, error, deps.now());
    else if (error instanceof HsmWaitDeadlineError && deps.now() >= jobDeadline)
      patch = timedOutPatch({ ...stored.record, jobId }, jobDeadline, error.lastState, error.lastProblem);
    else unknown = toSafeError(error).message;
  }
  if (patch === undefined) {
    const note = `Outcome not yet known: ${unknown}`;
    log.warn(
      `Backup of HSM ${hsm.name}, job ${jobId}: ${note}; a later status read settles it (record ${stored.record.id})`,
    );
    stored = await persist(deps, () => catalog.merge("backup", stored, { jobId, errorMessage: note })).catch(
      () => stored,
    );
    return { hsm: hsm.name, outcome: "Pending", record: stored.record, jobId, detail: note };
  }
  try {
    stored = await finish(deps, "backup", stored, { ...patch, jobId }, log);
    stored = await keepChecks(deps, stored, patch, log);
  } catch (error) {
    return notRecorded(
      log,
      hsm,
      `job ${jobId} ended ${patch.status}, but the catalog write failed (${toSafeError(error).message}); the reconcile run records it`,
      jobId,
    );
  }
  return report(log, hsm, stored.record);
}

/** Where this run stops waiting for the HSM: the job's deadline, or the run's if that comes first. */
function waitDeadline(jobDeadline: Date, options: BackupRunOptions): Date {
  return options.runDeadline && options.runDeadline < jobDeadline ? options.runDeadline : jobDeadline;
}

function startBackup(deps: AppDeps, hsm: HsmTarget, options: BackupRunOptions): Promise<HsmOperation> {
  const { config, storage } = deps;
  const containerUrl = storage.containerUrl(config.backupContainer);
  const client = deps.hsmClient(hsm);
  const begin = options.abortSignal ? { abortSignal: options.abortSignal } : {};
  if (config.hsmStorageAuth !== "sas") return client.beginBackup(containerUrl, begin);
  return storage
    .containerSas(config.backupContainer, "backup", config.sasTtlMinutes)
    .then((sas) => client.beginBackup(containerUrl, sas.token, begin));
}

/**
 * The pre-flight, after the Starting record exists and before the start call: undefined when the
 * backup may start. Its wait ends where the backup's would (the same deadline). A busy (409) or
 * unreachable HSM ends the record as a backup start would have (Skipped, StartNotSent); a failed
 * check ends it Failed with PreflightFailed and what is missing.
 */
async function preflightEnded(
  deps: AppDeps,
  hsm: HsmTarget,
  stored: Stored<BackupRecord>,
  log: Logger,
  options: BackupRunOptions,
): Promise<HsmRunResult | undefined> {
  const checked = await preflight(
    deps,
    hsm,
    waitDeadline(deadlineOf(deps, stored.record), options),
    options.abortSignal,
  );
  if (checked.verdict === "passed") return undefined;
  if (checked.verdict === "startFailed") return startFailed(deps, hsm, stored, checked.error, log, false);
  const patch: FinalPatch = {
    status: "Failed",
    endedAt: deps.now().toISOString(),
    errorCode: "PreflightFailed",
    errorMessage: `Pre-flight failed, no backup was started: ${checked.message}`,
  };
  try {
    return report(log, hsm, (await finish(deps, "backup", stored, patch, log)).record);
  } catch (error) {
    return notRecorded(
      log,
      hsm,
      `the pre-flight failed (${checked.message}) and recording that failed too (${toSafeError(error).message})`,
    );
  }
}

/**
 * A start that failed. A refusal or a call that was never sent ends the record (Failed, with the
 * cause and an event); the HSM's 409 means another job runs there (Skipped). Only a call that may
 * have reached the HSM without an answer leaves the record Starting, for a later read to settle.
 */
async function startFailed(
  deps: AppDeps,
  hsm: HsmTarget,
  stored: Stored<BackupRecord>,
  error: unknown,
  log: Logger,
  aborted: boolean,
): Promise<HsmRunResult> {
  const safe = toSafeError(error);
  const now = deps.now();
  try {
    if ((error instanceof HsmRequestError && error.unanswered) || aborted) {
      const note = `Outcome not yet known: ${safe.message}`;
      log.warn(`Backup of HSM ${hsm.name}: ${note} (record ${stored.record.id})`);
      const noted = await persist(deps, () => deps.catalog.merge("backup", stored, { errorMessage: note }));
      return { hsm: hsm.name, outcome: "Unknown", record: noted.record, detail: note };
    }
    if (error instanceof HsmRequestError && error.statusCode === 409) {
      const skipped = await finish(
        deps,
        "backup",
        stored,
        {
          status: "Skipped",
          endedAt: now.toISOString(),
          errorCode: error.code ?? "Conflict",
          errorMessage: `Managed HSM refused the start because another backup or restore is running on it (${error.serviceMessage}). This run's backup was skipped; the next run backs it up.`,
        },
        log,
      );
      return report(log, hsm, skipped.record);
    }
    const failed = await finish(deps, "backup", stored, startRefusedPatch(error, now), log);
    return report(log, hsm, failed.record);
  } catch (writeError) {
    return notRecorded(
      log,
      hsm,
      `the start failed (${safe.message}) and recording that failed too (${toSafeError(writeError).message})`,
    );
  }
}

/**
 * Settles this HSM's unsettled records (one status read each) and returns one whose job is still
 * running on the HSM, if any. A record that cannot be settled is logged and left; it never stops the
 * run. Restores count too: Managed HSM runs one backup or restore at a time.
 */
async function settleEarlier(
  deps: AppDeps,
  hsm: HsmTarget,
  log: Logger,
): Promise<{ kind: Kind; record: AnyRecord } | undefined> {
  let busy: { kind: Kind; record: AnyRecord } | undefined;
  for (const kind of ["restore", "backup"] as const) {
    // Retried like a write: a read that fails here would cost this HSM its backup tonight.
    for (const stored of await persist(deps, () => deps.catalog.unsettled(kind, hsm.name))) {
      let current = stored.record as AnyRecord;
      try {
        current = (await refreshRecord<AnyRecord>(deps, kind, stored, log)).record;
        if (current.status !== stored.record.status)
          log.info(`Settled earlier ${kind} record ${current.id} of HSM ${hsm.name}: ${current.status}`);
      } catch (error) {
        log.warn(
          `Earlier ${kind} record ${current.id} of HSM ${hsm.name} could not be settled now: ${toSafeError(error).message}`,
        );
      }
      if (ACTIVE_STATUSES.includes(current.status)) busy ??= { kind, record: current };
    }
  }
  return busy;
}

/** A rerun over a live job: recorded Skipped with the job that still runs. Not a failure, not an alert. */
async function skip(
  deps: AppDeps,
  hsm: HsmTarget,
  log: Logger,
  base: Omit<BackupRecord, "status">,
  busy: { kind: Kind; record: AnyRecord },
): Promise<HsmRunResult> {
  const active = busy.record;
  const record: BackupRecord = {
    ...base,
    status: "Skipped",
    endedAt: base.startedAt,
    errorCode: "PreviousJobRunning",
    errorMessage: `${busy.kind === "backup" ? "Backup" : "Restore"} ${active.id}${active.jobId ? ` (job ${active.jobId})` : ""} is still ${active.status} on HSM ${hsm.name}; Managed HSM runs one backup or restore at a time. Its outcome is recorded when it ends.`,
    activeRecordId: active.id,
    ...(active.jobId ? { activeJobId: active.jobId } : {}),
  };
  try {
    const stored = await persist(deps, () => deps.catalog.insert("backup", record));
    emitOutcome(log, "backup", stored.record);
    return report(log, hsm, stored.record);
  } catch (error) {
    return notRecorded(
      log,
      hsm,
      `skipped (${record.errorMessage}), and recording that failed (${toSafeError(error).message})`,
    );
  }
}

function report(log: Logger, hsm: HsmTarget, record: BackupRecord): HsmRunResult {
  if (record.status === "Succeeded") {
    log.info(
      `Backup of HSM ${hsm.name} succeeded in ${record.durationSeconds} s: ${record.folderUri} (record ${record.id})`,
    );
  } else if (record.status === "Skipped") {
    log.info(`Backup of HSM ${hsm.name} skipped: ${record.errorMessage} (record ${record.id})`);
  } else {
    log.error(
      `Backup of HSM ${hsm.name} did not succeed: ${record.status} ${record.errorCode ?? ""} ${record.errorMessage ?? ""} (record ${record.id})`,
    );
  }
  const outcome: HsmRunOutcome = ACTIVE_STATUSES.includes(record.status) ? "Pending" : (record.status as HsmRunOutcome);
  return { hsm: hsm.name, outcome, record, ...(record.jobId ? { jobId: record.jobId } : {}) };
}

function notRecorded(log: Logger, hsm: HsmTarget, detail: string, jobId?: string): HsmRunResult {
  log.error(`Backup of HSM ${hsm.name}: ${detail}`);
  return { hsm: hsm.name, outcome: "NotRecorded", detail, ...(jobId ? { jobId } : {}) };
}

/** One line per HSM that did not succeed (Skipped and still-running ones are not failures); undefined if none. */
export function failureSummary(results: readonly HsmRunResult[]): string | undefined {
  const failed = results.filter((r) => !NOT_FAILED.includes(r.outcome));
  if (failed.length === 0) return undefined;
  return (
    `Backup did not succeed for ${failed.length} of ${results.length} HSM(s): ` +
    failed
      .map((r) => {
        const record = r.record;
        const what = record
          ? `${record.errorCode ? ` ${record.errorCode}` : ""}: ${record.errorMessage ?? r.detail ?? "no details"}; record ${record.id}`
          : `: ${r.detail ?? "no details"}`;
        return `${r.hsm} (${r.outcome}${what}${r.jobId && !record ? `; job ${r.jobId}` : ""})`;
      })
      .join("; ")
  );
}

/** Runs fn over items with at most `limit` in flight, keeping the input order in the results. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
