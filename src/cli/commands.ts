/** What each command does, over the same src/lib code the function app runs. */
import { setTimeout as sleep } from "node:timers/promises";
import { backupAll, failureSummary } from "../lib/backup.js";
import {
  ACTIVE_STATUSES,
  UNSETTLED_STATUSES,
  type BackupRecord,
  type ListQuery,
  type RestoreRecord,
} from "../lib/catalog.js";
import { describeRequestIds, requestIdsOfError } from "../lib/correlation.js";
import type { AppDeps } from "../lib/deps.js";
import type { Logger } from "../lib/logger.js";
import { refreshRecord } from "../lib/outcome.js";
import { ProblemError } from "../lib/problem.js";
import { toSafeError } from "../lib/redact.js";
import { prune } from "../lib/prune.js";
import { reconcile, reconcileFailures } from "../lib/reconcile.js";
import { restoreStatus, startRestore } from "../lib/restore.js";
import { StorageUnavailableError } from "../lib/storage.js";
import { EXIT } from "./args.js";
import { backupSummary, backupTable, folderName, pruneReport, restoreSummary } from "./format.js";
import { fitLine, type Terminal } from "./terminal.js";

export interface Context {
  readonly deps: AppDeps;
  readonly log: Logger;
  readonly term: Terminal;
  readonly json: boolean;
  readonly pollIntervalMs: number;
  /** Ctrl-C: stops the waiting, never what the HSM started. */
  readonly signal?: AbortSignal | undefined;
  /** Asks the person at the terminal (to type the HSM name a full restore wipes); absent off a terminal. */
  readonly readLine?: ((prompt: string) => Promise<string>) | undefined;
  /** Recorded with a restore or a backup: who ran the CLI (the signed-in identity, else the OS user); asked on first use. */
  readonly requestedBy: () => Promise<string>;
}

export async function backup(
  { deps, log, term, json, signal, requestedBy }: Context,
  hsmName: string | undefined,
): Promise<number> {
  if (hsmName !== undefined && !deps.config.hsms.some((h) => h.name === hsmName)) {
    throw new ProblemError(
      400,
      "Unknown HSM",
      `No configured HSM is named ${hsmName} (MANAGED_HSM_URLS has: ${deps.config.hsms.map((h) => h.name).join(", ")}).`,
    );
  }
  const targets = deps.config.hsms.filter((h) => hsmName === undefined || h.name === hsmName);
  const started = Date.now();
  const hsms = new Map(targets.map((h) => [h.name, { status: "Starting", endedAt: undefined as number | undefined }]));
  const elapsed = (endedAt: number | undefined) => `${Math.round(((endedAt ?? Date.now()) - started) / 1000)}s`;
  term.startProgress((width) => {
    const running = [...hsms].filter(([, s]) => s.endedAt === undefined);
    if (running.length === 0) return `Recording the outcomes (${elapsed(undefined)})`;
    return fitLine(
      `Backing up ${running.length} of ${hsms.size} HSM(s), ${elapsed(undefined)}`,
      running.map(([name, s]) => `${name} ${s.status}`),
      width,
    );
  });
  const results = await backupAll(deps, log, {
    trigger: "cli",
    requestedBy: await requestedBy(),
    ...(hsmName !== undefined ? { hsmNames: [hsmName] } : {}),
    ...(signal ? { abortSignal: signal } : {}),
    onProgress: (hsm, state) => {
      const entry = hsms.get(hsm.name);
      if (!entry || entry.endedAt !== undefined) return;
      if (entry.status === "Starting") term.progressLine(`HSM ${hsm.name}: backup job ${state.jobId} started`);
      entry.status = state.status === "InProgress" ? "Running" : state.status;
      if (state.status !== "InProgress") {
        entry.endedAt = Date.now();
        term.progressLine(`HSM ${hsm.name}: backup job ${state.status} after ${elapsed(entry.endedAt)}`);
      }
      term.refreshProgress();
    },
  });
  term.stopProgress();
  // An HSM whose part could not be recorded still gets a line: its name, outcome and what is known.
  const records = results.map(
    (r): BackupRecord =>
      r.record ?? {
        id: "-",
        hsmName: r.hsm,
        hsmUrl: deps.config.hsms.find((h) => h.name === r.hsm)?.url ?? "",
        status: r.outcome as BackupRecord["status"],
        startedAt: new Date(started).toISOString(),
        trigger: "cli",
        ...(r.jobId ? { jobId: r.jobId } : {}),
        ...(r.detail ? { errorMessage: r.detail } : {}),
      },
  );
  if (json) term.json(records);
  else term.out(backupTable(records));
  if (signal?.aborted) {
    for (const r of results) {
      const id = r.record?.id;
      if (r.outcome === "Pending" || r.outcome === "Unknown") {
        term.line(
          `HSM ${r.hsm}: ${r.jobId ? `job ${r.jobId} keeps running on the HSM` : "the start call may have reached the HSM"}; follow it with: hsm-backup status ${id ?? "<id>"} (the reconcile timer, or hsm-backup reconcile, records its outcome)`,
        );
      }
    }
    term.line(
      "Interrupted: only the wait stopped. Backups already started keep running on their HSMs; hsm-backup list --refresh shows where they are.",
    );
    return EXIT.interrupted;
  }
  for (const r of results.filter((x) => x.outcome === "Pending")) {
    term.line(
      `HSM ${r.hsm}: job ${r.jobId} is still running; its outcome is recorded by the next reconcile run (or: hsm-backup reconcile)`,
    );
  }
  const failure = failureSummary(results);
  if (failure === undefined) return EXIT.ok;
  term.line(failure);
  // Not reached (nothing was sent, no answer, or the catalog was out of reach) is not the same as failed.
  const unreached = results.some(
    (r) => r.outcome === "Unknown" || r.outcome === "NotRecorded" || r.record?.errorCode === "StartNotSent",
  );
  return unreached ? EXIT.error : EXIT.failed;
}

export async function reconcileCommand({ deps, log, term, json }: Context): Promise<number> {
  const report = await reconcile(deps, log);
  if (json) {
    term.json(report);
  } else {
    if (report.changed.length === 0 && report.discovered.length === 0 && report.verified.length === 0)
      term.line(`Nothing to change (${report.checked} record(s) checked).`);
    for (const c of report.changed)
      term.out(`${c.kind} ${c.recordId}  HSM ${c.hsm}  ${c.from} -> ${c.to}${c.detail ? `  ${c.detail}` : ""}\n`);
    for (const d of report.discovered)
      term.out(`backup ${d.id}  HSM ${d.hsmName}  adopted discovered folder ${folderName(d.folderUri)}\n`);
    for (const u of report.unadopted) term.line(`Not adopted: ${u.folderUri}: ${u.reason}`);
    for (const v of report.verified)
      term.out(
        `backup ${v.recordId}  HSM ${v.hsm}  verified after the fact: ${v.verification}${v.copyStatus ? `, copy ${v.copyStatus}` : ""}\n`,
      );
    for (const e of report.errors) term.line(`Could not reconcile: ${e}`);
  }
  const failure = reconcileFailures(report);
  if (failure === undefined) return EXIT.ok;
  if (!json) term.line(failure);
  return report.errors.length > 0 ? EXIT.error : EXIT.failed;
}

/**
 * Prune, or with dryRun only its plan. Exit 0 when every HSM was handled, folders left because
 * storage refused them included (they are listed); 4 when an HSM could not be handled at all.
 */
export async function pruneCommand({ deps, log, term, json }: Context, dryRun: boolean): Promise<number> {
  const report = await prune(deps, log, { dryRun });
  if (json) term.json(report);
  else term.out(pruneReport(report));
  for (const e of report.errors) term.line(`Could not prune: ${e}`);
  return report.errors.length > 0 ? EXIT.error : EXIT.ok;
}

/** One line saying what could not be reached, for an error that is not a refusal. */
export function describeFailure(error: unknown): string {
  const safe = toSafeError(error);
  if (error instanceof StorageUnavailableError) return safe.message;
  const e = error as { name?: string; code?: string; request?: { url?: string } };
  if (e.name === "RestError" && e.request?.url) {
    const ids = describeRequestIds(requestIdsOfError(error));
    let host = "";
    try {
      host = new URL(e.request.url).host;
    } catch {
      // No host to name.
    }
    return `backup storage${host ? ` at ${host}` : ""} could not be reached or refused the call (${e.code ?? safe.message.split("\n")[0]}${ids ? `, ${ids}` : ""}): check BackupStorage and the network`;
  }
  return `${safe.name}: ${safe.message.split("\n")[0]}`;
}

export async function list({ deps, log, term, json }: Context, query: ListQuery, refresh: boolean): Promise<number> {
  await deps.prepare();
  const page = await deps.catalog.list("backup", query);
  if (refresh) {
    // As GET /api/backups/{id} does for one record: one status read per unsettled backup, recorded.
    for (const [i, record] of page.items.entries()) {
      if (!UNSETTLED_STATUSES.includes(record.status)) continue;
      const stored = await deps.catalog.get("backup", record.id);
      if (stored) page.items[i] = (await refreshRecord(deps, "backup", stored, log)).record;
    }
  }
  if (json) {
    term.json(page);
    return EXIT.ok;
  }
  if (page.items.length > 0) term.out(backupTable(page.items));
  else term.line("No backups found.");
  if (page.continuationToken !== undefined) term.line(`More: add --continuation-token ${page.continuationToken}`);
  return EXIT.ok;
}

export async function restore(
  context: Context,
  backupId: string,
  keyName: string | undefined,
  confirm: string | undefined,
  wait: boolean,
): Promise<number> {
  const { deps, log, term, json } = context;
  if (keyName === undefined) {
    const backup = (await deps.catalog.get("backup", backupId))?.record;
    // An unknown backup gets no warning: startRestore refuses it before anything happens.
    if (backup) {
      term.line(
        `WARNING: FULL restore of HSM ${backup.hsmName} from backup ${backup.id} (taken ${backup.endedAt ?? backup.startedAt}): every key in the HSM is replaced by the backup's; keys created or changed since then are lost.`,
      );
      if (confirm === undefined) {
        if (!context.readLine) {
          term.line(
            `hsm-backup: a full restore must be confirmed: add --confirm ${backup.hsmName} (or run it on a terminal and type the name). Nothing was started.`,
          );
          return EXIT.refused;
        }
        confirm = (
          await context.readLine(`Type the HSM name (${backup.hsmName}) to confirm the FULL restore: `)
        ).trim();
      }
    }
  }
  const started = await startRestore(deps, log, {
    backupId,
    requestedBy: await context.requestedBy(),
    ...(keyName !== undefined ? { keyName } : {}),
    ...(confirm !== undefined ? { confirm } : {}),
  });
  if (!wait) {
    term.line(`Restore ${started.id} started (job ${started.jobId}); follow it with: hsm-backup status ${started.id}`);
    if (json) term.json(started);
    else term.out(restoreSummary(started));
    return EXIT.ok;
  }
  term.line(
    `Waiting for restore ${started.id} to end; Ctrl-C stops the wait, not the restore (check it later with: hsm-backup status ${started.id}).`,
  );
  let final: RestoreRecord;
  try {
    final = await waitForRestore(context, started);
  } catch (error) {
    term.stopProgress();
    term.line(
      `The wait for restore ${started.id} stopped; the restore itself may still be running: hsm-backup status ${started.id}`,
    );
    if (context.signal?.aborted) return EXIT.interrupted;
    throw error;
  }
  if (json) term.json(final);
  else term.out(restoreSummary(final));
  return final.status === "Succeeded" ? EXIT.ok : EXIT.failed;
}

async function waitForRestore(
  { deps, log, term, pollIntervalMs, signal }: Context,
  started: RestoreRecord,
): Promise<RestoreRecord> {
  const since = Date.now();
  let current = started;
  const what = `${current.keyName !== undefined ? `Restore of key ${current.keyName}` : "FULL restore"} ${current.id} on HSM ${current.hsmName}`;
  term.startProgress((width) =>
    fitLine(what, [`${current.status} ${Math.round((Date.now() - since) / 1000)}s`], width),
  );
  while (ACTIVE_STATUSES.includes(current.status)) {
    await sleep(pollIntervalMs, undefined, signal ? { signal } : {});
    const next = await restoreStatus(deps, log, current.id);
    if (!next)
      throw new Error(`Restore record ${current.id} is no longer in catalog table ${deps.config.catalogTable}`);
    current = next;
    term.refreshProgress();
  }
  term.stopProgress();
  return current;
}

/** A backup's or a restore's state (ids of both have one shape; a restore is looked for first). */
export async function status({ deps, log, term, json }: Context, id: string): Promise<number> {
  const restore = await restoreStatus(deps, log, id);
  let record: BackupRecord | RestoreRecord;
  if (restore) {
    record = restore;
    if (!json) term.out(restoreSummary(restore));
  } else {
    const stored = await deps.catalog.get("backup", id);
    if (!stored) throw new ProblemError(404, "Not found", `No backup or restore with id ${id} is recorded.`);
    const backup = (await refreshRecord(deps, "backup", stored, log)).record;
    record = backup;
    if (!json) term.out(backupSummary(backup));
  }
  if (json) term.json(record);
  if (record.status === "Succeeded" || record.status === "Skipped" || record.status === "Pruned") return EXIT.ok;
  return ACTIVE_STATUSES.includes(record.status) ? EXIT.running : EXIT.failed;
}
