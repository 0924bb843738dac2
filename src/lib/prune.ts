/**
 * Prune: retention with a floor. Backup folders older than RETENTION_DAYS are deleted from the backup
 * container, but never the newest RETENTION_MIN_KEEP usable backups of an HSM, never a folder no
 * record names, never a folder a restore may be reading, and nothing of an HSM while a backup or
 * restore runs on it. The records stay, marked Pruned. A delete that storage refuses (immutability,
 * a lease, a missing permission) is reported and the folder left; it never stops the rest.
 *
 * The plan is src/lib/prune-plan.ts, pure (records + time + settings -> keep/delete with a reason),
 * so a dry run computes exactly the plan the real run carries out.
 */
import { RestError } from "@azure/storage-blob";
import type { BackupRecord } from "./catalog.js";
import type { AppDeps } from "./deps.js";
import type { Logger } from "./logger.js";
import { DAY_MS, planPrune, type HsmPrunePlan, type PruneEntry } from "./prune-plan.js";
import { toSafeError } from "./redact.js";
import { emitEvent, EVENTS } from "./telemetry.js";

/** The restore start lock's staleness (restore.ts): prune renews it well within this. */
const LOCK_STALE_MS = 5 * 60_000;
const LOCK_RENEW_MS = 60_000;
/** Catalog page size while reading an HSM's whole backup history. */
const PAGE = 1000;

export interface PruneOptions {
  /** Plan only: nothing is deleted or written. */
  readonly dryRun?: boolean;
  /** Stop starting new deletes after this (a timer run ends before its function timeout). */
  readonly runDeadline?: Date;
}

export interface PruneReport {
  readonly dryRun: boolean;
  readonly at: string;
  readonly retentionDays: number;
  readonly minKeep: number;
  /** Folders of backups that ended before this are past the retention. */
  readonly cutoff: string;
  readonly hsms: readonly HsmPrunePlan[];
  /** Folders deleted (records now Pruned), and folders planned for deletion but left (refused, busy, deadline). */
  readonly pruned: number;
  readonly left: number;
  /** What could not be done (per HSM): the next run tries again. */
  readonly errors: readonly string[];
}

/**
 * Plans, and unless dryRun carries out, the prune of every configured HSM, each in its own failure
 * domain: one HSM's error or refusal is reported and the others go on.
 */
export async function prune(deps: AppDeps, log: Logger, options: PruneOptions = {}): Promise<PruneReport> {
  await deps.prepare();
  const { config } = deps;
  const settings = { retentionDays: config.retentionDays, minKeep: config.retentionMinKeep };
  const now = deps.now();
  const containerUrl = deps.storage.containerUrl(config.backupContainer);
  const errors: string[] = [];
  const plans = await Promise.all(
    config.hsms.map(async (hsm): Promise<HsmPrunePlan> => {
      const failed = (error: unknown) => {
        const message = `HSM ${hsm.name}: ${toSafeError(error).message}`;
        log.warn(`Prune: ${message}`);
        errors.push(message);
        return message;
      };
      let plan: HsmPrunePlan;
      try {
        const [backups, restores] = await Promise.all([
          history(deps, hsm.name),
          deps.catalog.unsettled("restore", hsm.name),
        ]);
        plan = planPrune({
          hsms: [hsm.name],
          backups,
          restores: restores.map((s) => s.record),
          containerUrl,
          now,
          settings,
        })[0]!;
      } catch (error) {
        failed(error);
        return { hsm: hsm.name, entries: [], alreadyPruned: 0 };
      }
      if (options.dryRun) return plan;
      try {
        await carryOut(deps, log, hsm.name, plan, options);
      } catch (error) {
        // The plan stays in the report: what was done is marked, the rest was not reached.
        const message = failed(error);
        for (const entry of plan.entries)
          if (entry.action === "delete" && entry.outcome === undefined)
            Object.assign(entry, { outcome: "notReached", detail: message });
      }
      return plan;
    }),
  );
  const deletes = plans.flatMap((p) => p.entries.filter((e) => e.action === "delete"));
  const statuses = { pruned: "Pruned", left: "Left", notReached: "NotReached" } as const;
  for (const entry of deletes) {
    if (entry.outcome === undefined) continue;
    const emit = entry.outcome === "pruned" && entry.detail === undefined ? log.info : log.warn;
    emitEvent(emit, EVENTS.pruneOutcome, {
      hsm: entry.hsm,
      recordId: entry.recordId,
      status: statuses[entry.outcome],
      folderUri: entry.folderUri,
      errorMessage: entry.detail,
    });
  }
  const report: PruneReport = {
    dryRun: options.dryRun === true,
    at: now.toISOString(),
    retentionDays: settings.retentionDays,
    minKeep: settings.minKeep,
    cutoff: new Date(now.getTime() - settings.retentionDays * DAY_MS).toISOString(),
    hsms: plans,
    pruned: deletes.filter((e) => e.outcome === "pruned").length,
    left: deletes.filter((e) => e.outcome === "left" || e.outcome === "notReached").length,
    errors,
  };
  log.info(
    `Prune${report.dryRun ? " (dry run)" : ""}: ${report.dryRun ? `${deletes.length} folder(s) to delete` : `${report.pruned} folder(s) deleted, ${report.left} left`}, ${errors.length} error(s); retention ${settings.retentionDays} days, floor ${settings.minKeep} per HSM`,
  );
  return report;
}

/** Every backup record of one HSM, newest first: the floor needs them all. */
async function history(deps: AppDeps, hsmName: string): Promise<BackupRecord[]> {
  const found: BackupRecord[] = [];
  let token: string | undefined;
  do {
    const page = await deps.catalog.list("backup", {
      hsmName,
      top: PAGE,
      ...(token !== undefined ? { continuationToken: token } : {}),
    });
    found.push(...page.items);
    token = page.continuationToken;
  } while (token !== undefined);
  return found;
}

/**
 * Deletes the planned folders of one HSM under its restore start lock, so that no restore of it can
 * start (and begin reading a folder) while they go; a restore already starting keeps the lock and
 * this HSM is left for the next run.
 */
async function carryOut(
  deps: AppDeps,
  log: Logger,
  hsmName: string,
  plan: HsmPrunePlan,
  options: PruneOptions,
): Promise<void> {
  const deletes = plan.entries.filter((e) => e.action === "delete");
  if (deletes.length === 0) return;
  const leave = (entries: readonly PruneEntry[], outcome: "left" | "notReached", detail: string) => {
    for (const entry of entries) Object.assign(entry, { outcome, detail });
  };
  const lock = await deps.catalog.tryLock(hsmName, deps.now, LOCK_STALE_MS);
  if (!lock) {
    leave(deletes, "left", "a restore of this HSM is being started: nothing deleted this run");
    log.warn(
      `Prune: HSM ${hsmName}: a restore is being started; its ${deletes.length} folder(s) are left for the next run`,
    );
    return;
  }
  try {
    // The plan was read before the lock: an operation that started since makes the HSM busy after all.
    for (const kind of ["backup", "restore"] as const) {
      const [running] = await deps.catalog.active(kind, hsmName);
      if (running) {
        leave(deletes, "left", `${kind} ${running.record.id} started meanwhile and is ${running.record.status}`);
        return;
      }
    }
    let renewedAt = 0;
    let held = true;
    // Renewed at least every LOCK_RENEW_MS, well within its staleness; once lost, nothing more is deleted.
    const keepLock = async (): Promise<boolean> => {
      if (held && Date.now() - renewedAt > LOCK_RENEW_MS) {
        renewedAt = Date.now();
        held = await lock.renew();
      }
      return held;
    };
    for (const [i, entry] of deletes.entries()) {
      if (options.runDeadline !== undefined && deps.now() >= options.runDeadline) {
        leave(deletes.slice(i), "notReached", "the run's deadline passed");
        return;
      }
      if (!(await keepLock())) {
        leave(deletes.slice(i), "notReached", "the HSM's lock was lost (taken over as stale)");
        return;
      }
      await pruneOne(deps, log, entry, keepLock);
    }
  } finally {
    await lock.release();
  }
}

/** Deletes one folder and marks its record; a refusal leaves both (noted on the record). */
async function pruneOne(
  deps: AppDeps,
  log: Logger,
  entry: PruneEntry,
  keepLock: () => Promise<boolean>,
): Promise<void> {
  // Read again for its etag: the write below is conditional, and the record must still be the one planned.
  const stored = await deps.catalog.get("backup", entry.recordId);
  if (!stored || stored.record.status !== entry.status || stored.record.folderUri !== entry.folderUri) {
    Object.assign(entry, { outcome: "left", detail: "the record changed since it was planned" });
    return;
  }
  const folder = folderPath(entry.folderUri!, deps.storage.containerUrl(deps.config.backupContainer));
  const result = await deleteFolder(deps, folder, keepLock);
  const prunedAt = deps.now().toISOString();
  if (result.refused !== undefined) {
    const detail =
      result.deleted > 0
        ? `deleting stopped after ${result.deleted} blob(s) (${result.refused}); the folder is incomplete and the rest stays`
        : `nothing deleted (${result.refused}); the folder is left as it is`;
    // A folder with blobs gone is no backup any more: Pruned. One untouched stays as it was, with a note.
    const patch =
      result.deleted > 0
        ? { status: "Pruned" as const, prunedAt, pruneNote: detail }
        : { pruneNote: `${prunedAt}: ${detail}` };
    await deps.catalog.pruneUpdate(stored, patch);
    Object.assign(entry, { outcome: result.deleted > 0 ? "pruned" : "left", blobsDeleted: result.deleted, detail });
    log.warn(`Prune: HSM ${entry.hsm}, backup ${entry.recordId}, folder ${folder}: ${detail}`);
    return;
  }
  const updated = await deps.catalog.pruneUpdate(stored, {
    status: "Pruned",
    prunedAt,
    ...(result.deleted === 0 ? { pruneNote: "the folder was already empty or gone" } : {}),
  });
  Object.assign(entry, {
    outcome: "pruned",
    blobsDeleted: result.deleted,
    ...(result.deleted === 0 ? { detail: "the folder was already empty or gone" } : {}),
    ...(!updated.applied ? { detail: "folder deleted; the record had changed meanwhile and was not marked" } : {}),
  });
  log.info(
    `Prune: HSM ${entry.hsm}: deleted folder ${folder} of backup ${entry.recordId} (${result.deleted} blob(s), ended ${entry.at})`,
  );
}

/** The folder's name inside the container (planPrune made sure it is directly inside it). */
function folderPath(folderUri: string, containerUrl: string): string {
  const prefix = `${new URL(containerUrl).pathname.replace(/\/$/, "")}/`;
  return decodeURIComponent(new URL(folderUri).pathname.slice(prefix.length));
}

/**
 * Storage's answers that mean "not allowed to delete this" rather than "broken": 409 (an immutability
 * policy or legal hold, BlobImmutableDueToPolicy; a lease), 412 (a lease without its id) and 403 (no
 * permission, or a SAS/role that lacks delete).
 */
const REFUSALS = new Set([403, 409, 412]);

/**
 * Lists the blobs under `<folder>/` (the trailing slash: folder mhsm-a-1 never matches mhsm-a-10/) and
 * deletes each, every call under the storage deadline. Blobs under a lease, a legal hold or an
 * unexpired immutability policy are seen in the listing, and then nothing of the folder is deleted.
 */
async function deleteFolder(
  deps: AppDeps,
  folder: string,
  keepLock: () => Promise<boolean>,
): Promise<{ deleted: number; refused?: string }> {
  const container = deps.storage.blobService.getContainerClient(deps.config.backupContainer);
  const names: string[] = [];
  let held: string | undefined;
  const now = deps.now();
  await deps.storage.blobCall(`listing backup folder ${folder}`, async (abortSignal) => {
    for await (const blob of container.listBlobsFlat({
      prefix: `${folder}/`,
      includeImmutabilityPolicy: true,
      includeLegalHold: true,
      abortSignal,
    })) {
      const p = blob.properties;
      if (p.leaseState === "leased") held ??= `blob ${blob.name} is leased`;
      if (p.legalHold === true) held ??= `blob ${blob.name} is under a legal hold`;
      if (p.immutabilityPolicyExpiresOn !== undefined && p.immutabilityPolicyExpiresOn > now)
        held ??= `blob ${blob.name} is immutable until ${p.immutabilityPolicyExpiresOn.toISOString()}`;
      names.push(blob.name);
    }
  });
  if (held !== undefined) return { deleted: 0, refused: held };
  let deleted = 0;
  for (const name of names) {
    if (!(await keepLock())) return { deleted, refused: "the HSM's lock was lost (taken over as stale)" };
    // Stops at the first refusal: one protected blob means the folder stays, as whole as it still is.
    try {
      await deps.storage.blobCall(`deleting blob ${name}`, (abortSignal) =>
        container.deleteBlob(name, { abortSignal, deleteSnapshots: "include" }),
      );
      deleted++;
    } catch (error) {
      if (error instanceof RestError && error.statusCode === 404) continue;
      if (error instanceof RestError && error.statusCode !== undefined && REFUSALS.has(error.statusCode)) {
        return { deleted, refused: `${error.statusCode} ${error.code ?? "refused"} on blob ${name}` };
      }
      throw error;
    }
  }
  return { deleted };
}
