/**
 * Prune's plan, pure: from the catalog's records, the time and the settings, which backup folders
 * go and which stay, and why. The dry run and the real run compute it alike (src/lib/prune.ts
 * carries it out), so a dry run shows exactly what the real run will do.
 */
import { UNSETTLED_STATUSES, type BackupRecord, type RecordStatus, type RestoreRecord } from "./catalog.js";
import { folderProblem } from "./outcome.js";

export const DAY_MS = 86_400_000;

export interface PruneSettings {
  readonly retentionDays: number;
  readonly minKeep: number;
}

/**
 * Why a record's folder is kept, or "pastRetention" for one that goes:
 * - floor: among the newest RETENTION_MIN_KEEP usable backups (Succeeded, verification not Failed);
 * - withinRetention: younger than RETENTION_DAYS;
 * - hsmBusy: a backup or restore is Starting or Running on the HSM: nothing of it is touched;
 * - unsettled: the record's own outcome may still change (Starting, Running, TimedOut);
 * - noFolder: the record names no folder (a Failed or Skipped backup): nothing to delete;
 * - folderOutsideContainer: the folder is not directly inside the backup container of this account;
 * - restoreReads: a restore that may still run (Starting, Running, TimedOut) reads this folder;
 * - sharedFolder: another record that is kept names the same folder.
 */
export const PRUNE_REASONS = [
  "pastRetention",
  "floor",
  "withinRetention",
  "hsmBusy",
  "unsettled",
  "noFolder",
  "folderOutsideContainer",
  "restoreReads",
  "sharedFolder",
] as const;
export type PruneReason = (typeof PRUNE_REASONS)[number];

export interface PruneEntry {
  readonly recordId: string;
  readonly hsm: string;
  readonly status: RecordStatus;
  /** When the backup ended (or started, if it never ended): its age is counted from here. */
  readonly at: string;
  readonly folderUri?: string;
  readonly action: "delete" | "keep";
  readonly reason: PruneReason;
  /** Set by a real run on a delete: pruned (folder gone, record Pruned), left (refused or not safe now), notReached. */
  outcome?: "pruned" | "left" | "notReached";
  blobsDeleted?: number;
  /** Why it was left, or what was noted (e.g. the folder was already empty). */
  detail?: string;
}

export interface HsmPrunePlan {
  readonly hsm: string;
  /** The record of the operation running on the HSM, when it is busy. */
  readonly busy?: string;
  readonly entries: PruneEntry[];
  /** Records already Pruned by earlier runs (not planned again). */
  readonly alreadyPruned: number;
}

export interface PrunePlanInput {
  readonly hsms: readonly string[];
  readonly backups: readonly BackupRecord[];
  readonly restores: readonly RestoreRecord[];
  readonly containerUrl: string;
  readonly now: Date;
  readonly settings: PruneSettings;
}

/** When a backup ended (or started, if it never ended): its age is counted from here. */
function timeOf(record: BackupRecord): string {
  return record.endedAt ?? record.startedAt;
}

/** Counts toward the floor: a backup that can be restored as far as anyone knows. */
export function usable(record: BackupRecord): boolean {
  return record.status === "Succeeded" && record.folderUri !== undefined && record.verification !== "Failed";
}

/**
 * Decides, from the records alone, what prune deletes and what it keeps (and why). Pure: the same
 * records, time and settings give the same plan, dry run or not. Records of HSMs not in `hsms` are
 * not planned (another deployment sharing the catalog may own them).
 */
export function planPrune(input: PrunePlanInput): HsmPrunePlan[] {
  const cutoff = input.now.getTime() - input.settings.retentionDays * DAY_MS;
  const read = new Set(input.restores.filter((r) => UNSETTLED_STATUSES.includes(r.status)).map((r) => r.folderUri));
  const plans = input.hsms.map((hsm): HsmPrunePlan => {
    const own = input.backups.filter((b) => b.hsmName === hsm);
    const live = own.filter((b) => b.status !== "Pruned");
    const byAge = [...live].sort((a, b) => timeOf(b).localeCompare(timeOf(a)) || a.id.localeCompare(b.id));
    const floor = new Set(
      byAge
        .filter(usable)
        .slice(0, input.settings.minKeep)
        .map((b) => b.id),
    );
    const running =
      own.find((b) => b.status === "Starting" || b.status === "Running") ??
      input.restores.find((r) => r.hsmName === hsm && (r.status === "Starting" || r.status === "Running"));
    const busy = running && `${"backupId" in running ? "restore" : "backup"} ${running.id} is ${running.status}`;
    const reasonOf = (b: BackupRecord): PruneReason => {
      if (busy !== undefined) return "hsmBusy";
      if (floor.has(b.id)) return "floor";
      if (UNSETTLED_STATUSES.includes(b.status)) return "unsettled";
      if (b.folderUri === undefined) return "noFolder";
      if (Date.parse(timeOf(b)) >= cutoff) return "withinRetention";
      if (folderProblem(b.folderUri, input.containerUrl) !== undefined) return "folderOutsideContainer";
      if (read.has(b.folderUri)) return "restoreReads";
      return "pastRetention";
    };
    const entries = byAge.map((b): PruneEntry => {
      const reason = reasonOf(b);
      return {
        recordId: b.id,
        hsm,
        status: b.status,
        at: timeOf(b),
        ...(b.folderUri !== undefined ? { folderUri: b.folderUri } : {}),
        action: reason === "pastRetention" ? "delete" : "keep",
        reason,
      };
    });
    return {
      hsm,
      ...(busy !== undefined ? { busy } : {}),
      entries,
      alreadyPruned: own.length - live.length,
    };
  });
  // A folder two records name (one adopted, say) goes only when every record naming it goes.
  const kept = new Set(
    input.backups
      .filter((b) => b.folderUri !== undefined && b.status !== "Pruned")
      .filter((b) => !plans.some((p) => p.entries.some((e) => e.recordId === b.id && e.action === "delete")))
      .map((b) => b.folderUri),
  );
  for (const plan of plans) {
    plan.entries.forEach((entry, i) => {
      if (entry.action === "delete" && kept.has(entry.folderUri))
        plan.entries[i] = { ...entry, action: "keep", reason: "sharedFolder" };
    });
  }
  return plans;
}
