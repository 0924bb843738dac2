/** The CLI's tables and summaries: plain text, one record per line, the last column unpadded. */
import type { BackupRecord, RestoreRecord } from "../lib/catalog.js";
import type { PruneEntry, PruneReason } from "../lib/prune-plan.js";
import type { PruneReport } from "../lib/prune.js";

export function backupTable(records: readonly BackupRecord[]): string {
  const rows = records.map((r) => [
    r.id,
    r.hsmName,
    r.status,
    time(r.startedAt),
    duration(r.durationSeconds),
    r.verification ?? "-",
    folderName(r.folderUri),
  ]);
  return table([["ID", "HSM", "STATUS", "STARTED", "DURATION", "VERIFIED", "FOLDER"], ...rows]);
}

export function backupSummary(r: BackupRecord): string {
  return summary(`Backup ${r.id}  ${r.status}`, [
    ["HSM", `${r.hsmName} (${r.hsmUrl})`],
    ["Trigger", r.trigger],
    ["Folder", r.folderUri],
    ["Pruned", r.prunedAt !== undefined ? time(r.prunedAt) : undefined],
    ["Prune note", r.pruneNote],
    ...common(r),
  ]);
}

export function restoreSummary(r: RestoreRecord): string {
  return summary(`Restore ${r.id}  ${r.status}`, [
    ["HSM", `${r.hsmName} (${r.hsmUrl})`],
    ["Backup", `${r.backupId} (${folderName(r.folderUri)})`],
    ["Scope", r.keyName !== undefined ? `key ${r.keyName}` : "full (every key)"],
    ...common(r),
  ]);
}

function common(r: BackupRecord | RestoreRecord): [string, string | undefined][] {
  return [
    ["Job", r.jobId],
    ["Started", time(r.startedAt)],
    ["Ended", r.endedAt !== undefined ? time(r.endedAt) : undefined],
    ["Duration", r.durationSeconds !== undefined ? duration(r.durationSeconds) : undefined],
    ["Details", r.statusDetails],
    [
      "Error",
      r.errorCode !== undefined || r.errorMessage !== undefined
        ? [r.errorCode, r.errorMessage].filter(Boolean).join(": ")
        : undefined,
    ],
    ["Request id", r.requestId],
  ];
}

function summary(title: string, fields: readonly [string, string | undefined][]): string {
  const rows = fields.filter((f): f is [string, string] => f[1] !== undefined).map(([k, v]) => [`  ${k}`, v]);
  return `${title}\n${table(rows)}`;
}

/** Left-aligned columns two spaces apart; the last column is not padded. */
export function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return (
    rows
      .map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  "))
      .join("\n") + "\n"
  );
}

function time(iso: string): string {
  return iso.replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function duration(seconds: number | undefined): string {
  if (seconds === undefined) return "-";
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor(seconds / 60) % 60).padStart(2, "0")}m`;
}

export function folderName(folderUri: string | undefined): string {
  return folderUri?.split("/").filter(Boolean).at(-1) ?? "-";
}

const REASONS: Record<PruneReason, string> = {
  pastRetention: "past the retention",
  floor: "floor (newest usable)",
  withinRetention: "within the retention",
  hsmBusy: "HSM busy",
  unsettled: "outcome not settled",
  noFolder: "no folder",
  folderOutsideContainer: "folder outside the backup container",
  restoreReads: "a restore reads it",
  sharedFolder: "folder shared with a kept record",
};

/** Prune's plan and outcome: one block per HSM, one line per record, the folders to delete first. */
export function pruneReport(report: PruneReport): string {
  const lines = [
    `Prune${report.dryRun ? " (dry run: nothing changed)" : ""}: retention ${report.retentionDays} days (backups that ended before ${time(report.cutoff)}), floor ${report.minKeep} per HSM`,
  ];
  for (const plan of report.hsms) {
    const deletes = plan.entries.filter((e) => e.action === "delete");
    const head = report.dryRun
      ? `${deletes.length} folder(s) to delete`
      : `${deletes.filter((e) => e.outcome === "pruned").length} folder(s) deleted, ${deletes.filter((e) => e.outcome !== "pruned").length} left`;
    lines.push(
      "",
      `HSM ${plan.hsm}: ${head}, ${plan.entries.length - deletes.length} kept, ${plan.alreadyPruned} pruned before${plan.busy ? `; busy: ${plan.busy}` : ""}`,
    );
    const order = (e: PruneEntry) => (e.action === "delete" ? 0 : 1);
    const rows = [...plan.entries]
      .sort((a, b) => order(a) - order(b))
      .map((e) => [
        `  ${e.action === "delete" ? (e.outcome ?? "delete") : "keep"}`,
        e.recordId,
        e.status,
        time(e.at),
        folderName(e.folderUri),
        `${REASONS[e.reason]}${e.blobsDeleted !== undefined ? `, ${e.blobsDeleted} blob(s)` : ""}${e.detail ? `: ${e.detail}` : ""}`,
      ]);
    if (rows.length > 0) lines.push(table([["  ACTION", "ID", "STATUS", "ENDED", "FOLDER", "WHY"], ...rows]).trimEnd());
  }
  const deletes = report.hsms.flatMap((p) => p.entries.filter((e) => e.action === "delete"));
  lines.push(
    "",
    report.dryRun
      ? `${deletes.length} folder(s) would be deleted. Run without --dry-run to delete them.`
      : `${report.pruned} folder(s) deleted, ${report.left} left.`,
  );
  return `${lines.join("\n")}\n`;
}
