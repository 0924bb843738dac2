/**
 * Reconcile: makes the catalog tell the truth after a bad night. For every configured HSM, in its
 * own failure domain, it settles the records a status read may still change (Starting, Running,
 * TimedOut), applies the job deadline, and finds backups the HSM wrote that no record holds (a start
 * whose answer was lost, a catalog write that failed), adopting one only when the HSM's own
 * pre-restore check accepts it. Bounded work per run; it says what it changed.
 */
import { ACTIVE_STATUSES, Catalog, UNSETTLED_STATUSES, type BackupRecord, type Kind, type Stored } from "./catalog.js";
import { staleStartMs, type HsmTarget } from "./config.js";
import { copyBackup, keepChecks } from "./copy.js";
import type { AppDeps } from "./deps.js";
import type { Logger } from "./logger.js";
import { deadlineOf, emitOutcome, finish, folderProblem, persist, refreshRecord, type AnyRecord } from "./outcome.js";
import { toSafeError } from "./redact.js";
import { latestOccurrence, parseSchedule } from "./schedule.js";
import { preRestoreCheck, type Verification } from "./verify.js";

/** A TimedOut record older than this past its deadline is no longer asked about: the HSM keeps no job history that long. */
const TIMED_OUT_RECHECK_MS = 7 * 24 * 3_600_000;
/** Folders younger than this may still be written by a running job; older than the window are history. */
const DISCOVERY_MIN_AGE_MS = 10 * 60_000;
const DISCOVERY_WINDOW_MS = 3 * 24 * 3_600_000;
/** A Succeeded backup no run verified is checked while it is younger than this; the newest few per run. */
const VERIFY_LATER_WINDOW_MS = 2 * 24 * 3_600_000;
const VERIFY_LATER_PER_RUN = 2;
/**
 * No HSM job of reconcile's own (a pre-restore check) starts this close to a scheduled backup: the
 * HSM runs one job at a time, and a check still running when the timer's backup starts would cost
 * that night's backup (its start is refused as busy and recorded Skipped, which pages no one).
 */
const SLOT_GUARD_MS = 15 * 60_000;

export interface ReconcileOptions {
  /** Records settled per HSM and run, at most. Default 20. */
  readonly maxRecordsPerHsm?: number;
  /** Folders checked for a record per HSM and run, at most. Default 10. */
  readonly maxFoldersPerHsm?: number;
  /** Stop starting new work after this (a timer run ends before its function timeout). */
  readonly runDeadline?: Date;
}

export interface ReconcileChange {
  readonly kind: Kind;
  readonly hsm: string;
  readonly recordId: string;
  readonly from: string;
  readonly to: string;
  readonly detail?: string;
}

export interface ReconcileReport {
  /** Records a status read was made for. */
  readonly checked: number;
  readonly changed: readonly ReconcileChange[];
  /** Backups found in the container without a record and adopted (origin "discovered"). */
  readonly discovered: readonly BackupRecord[];
  /** Folders without a record that were not adopted, and why. */
  readonly unadopted: readonly { readonly hsm: string; readonly folderUri: string; readonly reason: string }[];
  /** Succeeded backups no run had verified (POST /api/backups, a run that stopped waiting), checked now. */
  readonly verified: readonly VerifiedLater[];
  /** What could not be done this run (per HSM): the next run tries again. */
  readonly errors: readonly string[];
}

export interface VerifiedLater {
  readonly hsm: string;
  readonly recordId: string;
  readonly verification: Verification;
  readonly copyStatus?: string;
}

export async function reconcile(deps: AppDeps, log: Logger, options: ReconcileOptions = {}): Promise<ReconcileReport> {
  await deps.prepare();
  const report: Mutable = { checked: 0, changed: [], discovered: [], unadopted: [], verified: [], errors: [] };
  await Promise.all(
    deps.config.hsms.map(async (hsm) => {
      try {
        await reconcileHsm(deps, hsm, log, options, report);
      } catch (error) {
        const message = `HSM ${hsm.name}: ${toSafeError(error).message}`;
        log.warn(`Reconcile: ${message}`);
        report.errors.push(message);
      }
    }),
  );
  return report;
}

type Mutable = {
  checked: number;
  changed: ReconcileChange[];
  discovered: BackupRecord[];
  unadopted: { hsm: string; folderUri: string; reason: string }[];
  verified: VerifiedLater[];
  errors: string[];
};

async function reconcileHsm(
  deps: AppDeps,
  hsm: HsmTarget,
  log: Logger,
  options: ReconcileOptions,
  report: Mutable,
): Promise<void> {
  const now = deps.now().getTime();
  const budget = options.maxRecordsPerHsm ?? 20;
  let used = 0;
  for (const kind of ["backup", "restore"] as const) {
    const records = (await deps.catalog.unsettled(kind, hsm.name)).filter(
      (s) => s.record.status !== "TimedOut" || now - deadlineOf(deps, s.record).getTime() < TIMED_OUT_RECHECK_MS,
    );
    for (const stored of records) {
      if (used >= budget || pastDeadline(deps, options)) return;
      used++;
      report.checked++;
      try {
        const before = describe(stored.record);
        let after: AnyRecord = stored.record;
        let waitForCheck = false;
        if (
          kind === "backup" &&
          stored.record.jobId === undefined &&
          stored.record.status === "Starting" &&
          now - Date.parse(stored.record.startedAt) >= staleStartMs(deps.config)
        ) {
          const adoption = await adoptForRecord(deps, hsm, stored as Stored<BackupRecord>, log);
          if (adoption && "record" in adoption) after = adoption.record;
          // A candidate folder the HSM could not check now (busy, unreachable): the next run asks
          // again, until the record's job deadline; then the start's outcome stays unknown.
          waitForCheck =
            adoption !== undefined && "unchecked" in adoption && now < deadlineOf(deps, stored.record).getTime();
          if (adoption && "unchecked" in adoption)
            report.errors.push(`HSM ${hsm.name}, backup record ${stored.record.id}: ${adoption.unchecked}`);
        }
        if (!waitForCheck && UNSETTLED_STATUSES.includes(after.status) && after === stored.record) {
          after = (await refreshRecord<AnyRecord>(deps, kind, stored, log)).record;
        }
        if (describe(after) !== before) {
          report.changed.push({
            kind,
            hsm: hsm.name,
            recordId: after.id,
            from: before,
            to: describe(after),
            ...(after.errorMessage ? { detail: after.errorMessage } : {}),
          });
        }
      } catch (error) {
        report.errors.push(`HSM ${hsm.name}, ${kind} record ${stored.record.id}: ${toSafeError(error).message}`);
      }
    }
  }
  if (pastDeadline(deps, options) || (await hsmBusy(deps, hsm)) || backupDueNow(deps)) return;
  await verifyLater(deps, hsm, log, options, report);
  if (!pastDeadline(deps, options)) await discoverOrphans(deps, hsm, log, options, report);
}

/** A backup or restore job runs on the HSM (by the catalog): its folder is being written, and the HSM would refuse a check. */
async function hsmBusy(deps: AppDeps, hsm: HsmTarget): Promise<boolean> {
  for (const kind of ["backup", "restore"] as const) {
    if ((await deps.catalog.active(kind, hsm.name)).length > 0) return true;
  }
  return false;
}

/** A scheduled backup slot lies within SLOT_GUARD_MS of now, before or after (see SLOT_GUARD_MS). */
function backupDueNow(deps: AppDeps): boolean {
  const now = deps.now().getTime();
  const slot = latestOccurrence(parseSchedule(deps.config.backupSchedule), new Date(now + SLOT_GUARD_MS));
  return slot !== undefined && slot.getTime() >= now - SLOT_GUARD_MS;
}

/**
 * Succeeded backups that no run verified, because nothing waited for their end (POST /api/backups
 * answers at once) or the run stopped waiting: the HSM's pre-restore check on the folder, then the
 * immutable copy when on, added to the record as the run itself would have. A check that gives no
 * verdict now (HSM busy or unreachable) writes nothing; the next run asks again.
 */
async function verifyLater(
  deps: AppDeps,
  hsm: HsmTarget,
  log: Logger,
  options: ReconcileOptions,
  report: Mutable,
): Promise<void> {
  const now = deps.now().getTime();
  const { items } = await deps.catalog.list("backup", { hsmName: hsm.name, status: "Succeeded", top: 10 });
  const unverified = items
    .filter((r) => r.verification === undefined && r.folderUri !== undefined)
    .filter((r) => now - Date.parse(r.endedAt ?? r.startedAt) < VERIFY_LATER_WINDOW_MS)
    .slice(0, VERIFY_LATER_PER_RUN);
  for (const record of unverified) {
    if (pastDeadline(deps, options)) return;
    const folderUri = record.folderUri!;
    const deadline = new Date(Math.min(now + 10 * 60_000, options.runDeadline?.getTime() ?? Infinity));
    const check = await preRestoreCheck(deps, hsm, folderUri, deadline);
    if (check.verdict === "unavailable") {
      report.errors.push(`HSM ${hsm.name}, backup record ${record.id}: not verified yet: ${check.reason}`);
      continue;
    }
    const verification: Verification =
      check.verdict === "passed" ? "Passed" : check.verdict === "refused" ? "Failed" : "Skipped";
    const checked: Partial<BackupRecord> = {
      status: record.status,
      folderUri,
      verification,
      verifiedAt: deps.now().toISOString(),
      ...(check.verdict !== "passed" ? { verificationMessage: check.reason } : {}),
      ...(await copyBackup(deps, hsm, folderUri, verification, deadline, log)),
    };
    const stored = await deps.catalog.get("backup", record.id);
    if (!stored) continue;
    const saved = await keepChecks(deps, stored, checked, log);
    if (saved === stored) continue;
    const line = `Reconcile: verified backup ${record.id} of HSM ${hsm.name} after the fact: ${verification}${check.verdict !== "passed" ? ` (${check.reason})` : ""}`;
    if (verification === "Failed") log.error(line);
    else log.info(line);
    report.verified.push({
      hsm: hsm.name,
      recordId: record.id,
      verification,
      ...(saved.record.copyStatus ? { copyStatus: saved.record.copyStatus } : {}),
    });
  }
}

/**
 * A record still Starting long after its start call (no answer came, or the HSM's answer could not
 * be recorded): if the container holds a folder of this HSM from the record's time that no record
 * has, and the HSM's pre-restore check accepts it, the record gets that backup.
 */
async function adoptForRecord(
  deps: AppDeps,
  hsm: HsmTarget,
  stored: Stored<BackupRecord>,
  log: Logger,
): Promise<{ record: BackupRecord } | { unchecked: string } | undefined> {
  const started = Date.parse(stored.record.startedAt);
  const deadline = deadlineOf(deps, stored.record).getTime();
  let unchecked: string | undefined;
  for (const folder of await unrecordedFolders(deps, hsm, 5)) {
    if (folder.at.getTime() < started - 60_000 || folder.at.getTime() > deadline) continue;
    const check = await preRestoreCheck(deps, hsm, folder.uri);
    if (check.verdict === "unavailable")
      unchecked ??= `folder ${folder.name} could not be checked yet: ${check.reason}`;
    if (check.verdict !== "passed") continue;
    const saved = await finish(
      deps,
      "backup",
      stored,
      {
        status: "Succeeded",
        folderUri: folder.uri,
        origin: "discovered",
        endedAt: folder.at.toISOString(),
        // The check that let it be adopted is the verification a run would have made.
        verification: "Passed",
        verifiedAt: deps.now().toISOString(),
        errorMessage: `The start call's answer was lost; reconcile found this HSM's folder ${folder.name} and the HSM's pre-restore check accepted it.`,
      },
      log,
    );
    return { record: saved.record };
  }
  return unchecked !== undefined ? { unchecked } : undefined;
}

/** Folders of this HSM in the container with no record at all: recorded as discovered backups once the HSM vouches for them. */
async function discoverOrphans(
  deps: AppDeps,
  hsm: HsmTarget,
  log: Logger,
  options: ReconcileOptions,
  report: Mutable,
): Promise<void> {
  // A folder from the time of a record that may still learn its job's outcome (TimedOut) is that
  // record's, not an orphan: its correction will name it.
  const claimed = (await deps.catalog.unsettled("backup", hsm.name)).map((s) => ({
    from: Date.parse(s.record.startedAt) - 60_000,
    to: deadlineOf(deps, s.record).getTime(),
  }));
  for (const folder of await unrecordedFolders(deps, hsm, options.maxFoldersPerHsm ?? 10)) {
    if (pastDeadline(deps, options)) return;
    if (claimed.some((c) => folder.at.getTime() >= c.from && folder.at.getTime() <= c.to)) continue;
    const check = await preRestoreCheck(deps, hsm, folder.uri);
    if (check.verdict !== "passed") {
      report.unadopted.push({ hsm: hsm.name, folderUri: folder.uri, reason: check.reason });
      continue;
    }
    const at = folder.at.toISOString();
    const stored = await persist(deps, () =>
      deps.catalog.insert("backup", {
        id: Catalog.newId(folder.at),
        hsmName: hsm.name,
        hsmUrl: hsm.url,
        status: "Succeeded",
        startedAt: at,
        endedAt: at,
        folderUri: folder.uri,
        trigger: "reconcile",
        origin: "discovered",
        verification: "Passed",
        verifiedAt: deps.now().toISOString(),
        statusDetails: "Found in the container without a record; the HSM's pre-restore check accepted it.",
      }),
    );
    emitOutcome(log, "backup", stored.record);
    log.warn(
      `Reconcile: adopted backup folder ${folder.name} of HSM ${hsm.name} that no record held (record ${stored.record.id})`,
    );
    report.discovered.push(stored.record);
  }
}

interface Folder {
  readonly name: string;
  readonly uri: string;
  /** From the folder name's UTC timestamp. */
  readonly at: Date;
}

/** This HSM's backup folders from the discovery window, newest first, that no backup record names. */
async function unrecordedFolders(deps: AppDeps, hsm: HsmTarget, limit: number): Promise<Folder[]> {
  const containerUrl = deps.storage.containerUrl(deps.config.backupContainer);
  const container = deps.storage.blobService.getContainerClient(deps.config.backupContainer);
  const prefix = `mhsm-${hsm.name}-`;
  const now = deps.now().getTime();
  const found: Folder[] = [];
  await deps.storage.blobCall("listing backup folders", async (abortSignal) => {
    for await (const item of container.listBlobsByHierarchy("/", { prefix, abortSignal })) {
      if (item.kind !== "prefix") continue;
      const name = item.name.replace(/\/$/, "");
      const at = folderTime(name.slice(prefix.length));
      if (!at || now - at.getTime() < DISCOVERY_MIN_AGE_MS || now - at.getTime() > DISCOVERY_WINDOW_MS) continue;
      const uri = `${containerUrl}/${name}`;
      if (folderProblem(uri, containerUrl) === undefined) found.push({ name, uri, at });
    }
  });
  found.sort((a, b) => b.at.getTime() - a.at.getTime());
  const unrecorded: Folder[] = [];
  for (const folder of found) {
    if (unrecorded.length >= limit) break;
    if (!(await deps.catalog.hasFolder(folder.uri, folder.at))) unrecorded.push(folder);
  }
  return unrecorded;
}

/** `yyyyMMddHHmmss` then 2-3 opaque digits, UTC. */
function folderTime(suffix: string): Date | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})\d{2,3}$/.exec(suffix);
  if (!m) return undefined;
  const at = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
  return Number.isNaN(at.getTime()) ? undefined : at;
}

function describe(record: AnyRecord): string {
  return `${record.status}${record.errorCode ? ` ${record.errorCode}` : ""}${ACTIVE_STATUSES.includes(record.status) && record.jobId ? ` (job ${record.jobId})` : ""}`;
}

function pastDeadline(deps: AppDeps, options: ReconcileOptions): boolean {
  return options.runDeadline !== undefined && deps.now() >= options.runDeadline;
}

/** One line per change, for the timer's failure message and the CLI; undefined when the run found nothing to report as a failure. */
export function reconcileFailures(report: ReconcileReport): string | undefined {
  const bad = report.changed.filter((c) => !/^(Succeeded|Running|Starting|Skipped)/.test(c.to));
  const lines = [
    ...bad.map(
      (c) => `${c.kind} ${c.recordId} of HSM ${c.hsm}: ${c.from} → ${c.to}${c.detail ? ` (${c.detail})` : ""}`,
    ),
    ...report.errors,
  ];
  return lines.length > 0
    ? `Reconcile recorded ${bad.length} outcome(s) that are not a success and met ${report.errors.length} error(s): ${lines.join("; ")}`
    : undefined;
}
