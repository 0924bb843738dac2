/**
 * The soak's verdict: the catalog against what the emulators actually did. Pure functions over
 * what the soak collected, so each rule can be read (and printed) on its own.
 */
import type { BackupRecord } from "../../src/lib/catalog.js";

/** One backup job an emulator accepted (202 on POST /backup), as the emulator itself reports it at the end. */
export interface EmulatorJob {
  readonly hsm: string;
  readonly jobId: string;
  /** The emulator's own status answer, read directly (not through a proxy) after every fault was healed. */
  readonly status: string;
  readonly folderUri?: string;
  /** Epoch ms, the emulator's (simulated) clock. */
  readonly startTime?: number;
}

export interface Truth {
  readonly jobs: ReadonlyMap<string, EmulatorJob>;
  /** Every backup folder in the container (plain URL). */
  readonly folders: ReadonlySet<string>;
  /** Job ids whose status answer the soak rewrote into a lie (Succeeded without or with a foreign folder). */
  readonly tampered: ReadonlySet<string>;
}

export interface RunWindow {
  readonly run: number;
  /** Simulated epoch ms when the run started and when the next one did. */
  readonly from: number;
  readonly to: number;
  readonly killed: boolean;
  readonly faults: string;
}

export interface Violation {
  readonly check:
    "duplicate" | "unsettled" | "disagrees" | "lostJob" | "unofferedBackup" | "healthy" | "secret" | "stuck";
  readonly detail: string;
}

export const RULES = `Verification rules (every count must be 0):
  duplicates        two backup records with the same jobId, or two naming the same folderUri
  still open        records Starting or Running after the final reconcile
  disagree          a record with a jobId: the emulator must know that job on that HSM, and
                      Succeeded  <-> job Succeeded and folderUri == the folder the job wrote
                      Failed/Canceled <-> job Failed, or errorCode InvalidServiceResponse when the soak
                                 rewrote that job's status answer into a lie (the app rightly refused it)
                      TimedOut, Skipped or any other status with a jobId: disagrees (faults are healed
                                 and the clock is past every deadline, so a status read settles it)
                    a record without a jobId: Succeeded only as origin "discovered" naming a folder a
                      Succeeded job of that HSM wrote; Failed (the start got no usable answer: StartNotSent,
                      StartOutcomeUnknown, InvalidServiceResponse, a refusal) or Skipped (PreviousJobRunning,
                      Conflict); anything else disagrees
                    each job an emulator accepted belongs to the newest timer record of its HSM created
                      before the job started; that record must name the job, or be jobless with errorCode
                      StartOutcomeUnknown or InvalidServiceResponse, or hold the job's folder as a discovered
                      backup (a record saying the start was refused or never sent while a job started lies)
  lost jobs         a job an emulator accepted that no record holds (by jobId, or by folderUri for a
                      Succeeded job); a Failed job whose start answer never reached the app counts as held
                      when a jobless Failed record of that HSM was started in the hour before it
  unoffered backups a Succeeded job whose folder no Succeeded record names (the backup exists, the catalog
                      does not offer it), or a folder in the container no accepted job wrote
  healthy misses    each run must leave exactly one timer record for the healthy HSM (no HSM faults), and
                      it must be Succeeded, or Skipped PreviousJobRunning over a job of that HSM that Succeeded
  secrets           in app logs, catalog entities or the soak's output: a SAS signature or bearer token the
                      app sent, the storage account key, sig= not followed by <redacted, a JWT, or Bearer <token>`;

/** Record ids start with 13 digits of inverted epoch ms (catalog.ts): the time the record was created. */
export function createdAt(id: string): number {
  return 9_999_999_999_999 - Number(id.slice(0, 13));
}

/** The run during which a record was created (its id's time within a run's window). */
function runOf(record: BackupRecord, windows: readonly RunWindow[]): string {
  // A discovered record's id carries its folder's time in whole seconds: up to a second before its run began.
  const at = createdAt(record.id) + (record.trigger === "reconcile" ? 999 : 0);
  const run = windows.find((w) => at >= w.from && at < w.to);
  return run ? `run ${run.run}` : "after the last run";
}

function showIn(record: BackupRecord, windows: readonly RunWindow[]): string {
  const { id, hsmName, status, jobId, errorCode, folderUri, trigger, origin, activeJobId, correctedFrom } = record;
  const message = record.errorMessage ? ` message=${JSON.stringify(record.errorMessage.slice(0, 240))}` : "";
  return (
    `record ${id} (${runOf(record, windows)}) hsm=${hsmName} ${status}${errorCode ? ` ${errorCode}` : ""}${jobId ? ` job=${jobId}` : ""}${folderUri ? ` folder=${folderUri}` : ""}` +
    ` trigger=${trigger}${origin ? ` origin=${origin}` : ""}${activeJobId ? ` activeJob=${activeJobId}` : ""}${correctedFrom ? ` correctedFrom=${correctedFrom}` : ""}${message}`
  );
}

function jobText(job: EmulatorJob | undefined): string {
  return job
    ? `emulator job ${job.jobId} on ${job.hsm}: ${job.status}${job.folderUri ? ` folder=${job.folderUri}` : ""}`
    : "no such emulator job";
}

export function checkRecords(
  records: readonly BackupRecord[],
  truth: Truth,
  windows: readonly RunWindow[],
): Violation[] {
  const show = (r: BackupRecord) => showIn(r, windows);
  const violations: Violation[] = [];
  const byJob = new Map<string, BackupRecord[]>();
  const byFolder = new Map<string, BackupRecord[]>();
  for (const r of records) {
    if (r.jobId) byJob.set(r.jobId, [...(byJob.get(r.jobId) ?? []), r]);
    if (r.folderUri) byFolder.set(r.folderUri, [...(byFolder.get(r.folderUri) ?? []), r]);
  }
  for (const [key, group] of [...byJob, ...byFolder]) {
    if (group.length > 1)
      violations.push({
        check: "duplicate",
        detail: `${group.length} records for ${key}: ${group.map(show).join(" | ")}`,
      });
  }

  for (const r of records) {
    if (r.status === "Starting" || r.status === "Running") violations.push({ check: "unsettled", detail: show(r) });
    const problem = disagreement(r, truth);
    if (problem) violations.push({ check: "disagrees", detail: `${show(r)}: ${problem}` });
  }

  const failedJobless = records.filter((r) => !r.jobId && r.status === "Failed");
  for (const job of truth.jobs.values()) {
    const holders = [
      ...new Set([...(byJob.get(job.jobId) ?? []), ...(job.folderUri ? (byFolder.get(job.folderUri) ?? []) : [])]),
    ];
    if (holders.length === 0) {
      const explained =
        job.status === "Failed" &&
        job.startTime !== undefined &&
        failedJobless.some(
          (r) =>
            r.hsmName === job.hsm &&
            createdAt(r.id) <= job.startTime! + 1000 &&
            createdAt(r.id) >= job.startTime! - 3_600_000,
        );
      if (!explained)
        violations.push({
          check: "lostJob",
          detail: `${jobText(job)} started ${job.startTime ? new Date(job.startTime).toISOString() : "?"}: no record holds it`,
        });
    }
    if (
      job.status === "Succeeded" &&
      job.folderUri &&
      !holders.some((r) => r.status === "Succeeded" && r.folderUri === job.folderUri)
    ) {
      violations.push({
        check: "unofferedBackup",
        detail: `${jobText(job)}: no Succeeded record names its folder; held by: ${holders.map(show).join(" | ") || "nothing"}`,
      });
    }
  }
  violations.push(...checkAttribution(records, truth, windows));
  const written = new Set([...truth.jobs.values()].flatMap((j) => (j.folderUri ? [j.folderUri] : [])));
  for (const folder of truth.folders) {
    if (!written.has(folder))
      violations.push({
        check: "unofferedBackup",
        detail: `folder ${folder} in the container was written by no job an emulator accepted`,
      });
  }
  return violations;
}

/** Error codes of a start whose answer never said which job it started (or whether it started one). */
const NO_USABLE_ANSWER = new Set(["StartOutcomeUnknown", "InvalidServiceResponse"]);

/**
 * Each job belongs to the newest timer record of its HSM created before the job started (one start
 * per HSM and run; throttled starts are re-sent, but a throttled call starts nothing). That record
 * must name the job, or say the start's answer was unusable, or hold its folder as a discovered
 * backup: a record that says "refused" or "never sent" while the HSM did start a job tells a lie.
 */
function checkAttribution(records: readonly BackupRecord[], truth: Truth, windows: readonly RunWindow[]): Violation[] {
  const timer = records.filter((r) => r.trigger === "timer").sort((a, b) => createdAt(a.id) - createdAt(b.id));
  const violations: Violation[] = [];
  for (const job of truth.jobs.values()) {
    if (job.startTime === undefined) continue;
    // startTime is whole seconds: the record may be up to a second younger than the job's start.
    const owner = timer.filter((r) => r.hsmName === job.hsm && createdAt(r.id) <= job.startTime! + 999).at(-1);
    const fits =
      owner !== undefined &&
      (owner.jobId === job.jobId ||
        (owner.jobId === undefined &&
          ((owner.errorCode !== undefined && NO_USABLE_ANSWER.has(owner.errorCode)) ||
            (owner.status === "Succeeded" && owner.origin === "discovered" && owner.folderUri === job.folderUri))));
    if (!fits)
      violations.push({
        check: "disagrees",
        detail: `${jobText(job)} started ${new Date(job.startTime).toISOString()}, but the run's record says otherwise: ${owner ? showIn(owner, windows) : "no timer record before it"}`,
      });
  }
  return violations;
}

function disagreement(r: BackupRecord, truth: Truth): string | undefined {
  if (r.jobId) {
    const job = truth.jobs.get(r.jobId);
    if (!job || job.hsm !== r.hsmName)
      return `names a job the emulator of ${r.hsmName} never accepted (${jobText(job)})`;
    switch (r.status) {
      case "Succeeded":
        if (job.status !== "Succeeded") return `recorded Succeeded, but ${jobText(job)}`;
        if (r.folderUri !== job.folderUri) return `recorded folder differs: ${jobText(job)}`;
        return undefined;
      case "Failed":
      case "Canceled":
        if (job.status === "Failed") return undefined;
        if (r.errorCode === "InvalidServiceResponse" && truth.tampered.has(r.jobId)) return undefined;
        return `recorded ${r.status}, but ${jobText(job)}${truth.tampered.has(r.jobId) ? " (its status answer was tampered with)" : ""}`;
      case "Starting":
      case "Running":
        return undefined; // counted as still open
      default:
        return `recorded ${r.status} with a job id, but ${jobText(job)}`;
    }
  }
  switch (r.status) {
    case "Succeeded": {
      const job = [...truth.jobs.values()].find((j) => j.folderUri === r.folderUri);
      if (r.origin !== "discovered") return "Succeeded without a job id, but not a discovered backup";
      if (!job || job.status !== "Succeeded" || job.hsm !== r.hsmName)
        return `discovered folder is not one a Succeeded job of ${r.hsmName} wrote (${jobText(job)})`;
      return undefined;
    }
    case "Failed":
      return undefined; // the start got no usable answer; a job it may have started is checked as a lost job
    case "Skipped":
      return r.errorCode === "PreviousJobRunning" || r.errorCode === "Conflict"
        ? undefined
        : `Skipped with errorCode ${r.errorCode}`;
    case "Starting":
    case "Running":
      return undefined;
    default:
      return `${r.status} without a job id`;
  }
}

/** Healthy-HSM runs that did not back up (rule in RULES). */
export function checkHealthy(
  records: readonly BackupRecord[],
  truth: Truth,
  healthy: string,
  runs: readonly RunWindow[],
  logs: readonly string[],
): Violation[] {
  const show = (r: BackupRecord) => showIn(r, runs);
  // What the app said about the healthy HSM in that run's invocations: the cause, in its own words.
  const said = (run: number) =>
    logs
      .filter((l) => l.startsWith(`[run ${run} `) && l.includes(healthy) && / (error|warn|warning)\] /.test(l))
      .slice(0, 3);
  const timerRecords = records.filter((r) => r.hsmName === healthy && r.trigger === "timer");
  const violations: Violation[] = [];
  for (const run of runs) {
    const mine = timerRecords.filter((r) => createdAt(r.id) >= run.from && createdAt(r.id) < run.to);
    const context = `run ${run.run}${run.killed ? " (wait killed)" : ""}, faults ${run.faults}`;
    if (mine.length !== 1) {
      violations.push({
        check: "healthy",
        detail: `${context}: ${mine.length} timer records for healthy HSM ${healthy}${mine.length ? `: ${mine.map(show).join(" | ")}` : ""}; the app logged: ${said(run.run).join(" // ") || "nothing"}`,
      });
      continue;
    }
    const r = mine[0]!;
    if (r.status === "Succeeded") continue;
    const active = r.activeJobId ? truth.jobs.get(r.activeJobId) : undefined;
    if (
      r.status === "Skipped" &&
      r.errorCode === "PreviousJobRunning" &&
      active?.status === "Succeeded" &&
      active.hsm === healthy
    )
      continue;
    violations.push({
      check: "healthy",
      detail: `${context}: ${show(r)}${r.activeJobId ? `; active ${jobText(active)}` : ""}; the app logged: ${said(run.run).join(" // ") || "nothing"}`,
    });
  }
  return violations;
}

/** Secrets in any of the texts: the exact values the app sent, and the shapes a secret has. */
export function checkSecrets(
  texts: readonly { where: string; text: string }[],
  exact: ReadonlySet<string>,
): Violation[] {
  const shapes: [string, RegExp][] = [
    ["sig= value", /(?<![A-Za-z])sig(?:=|%3D)(?!<redacted|%3Credacted)[^&\s"'<>]{4,}/i],
    ["JWT", /\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\./],
    ["bearer token", /\bBearer\s+(?!<redacted)[A-Za-z0-9\-._~+/]{12,}/i],
  ];
  const violations: Violation[] = [];
  for (const { where, text } of texts) {
    const found = [...exact].find((secret) => text.includes(secret));
    if (found) {
      violations.push({
        check: "secret",
        detail: `${where}: contains a secret the app sent (${found.slice(0, 6)}…): ${mask(text, found)}`,
      });
      continue;
    }
    for (const [name, shape] of shapes) {
      const match = shape.exec(text);
      if (match) {
        violations.push({ check: "secret", detail: `${where}: ${name}: ${mask(text, match[0])}` });
        break;
      }
    }
  }
  return violations;
}

/** The text around a secret, the secret itself cut to its first characters. */
function mask(text: string, secret: string): string {
  const at = text.indexOf(secret);
  return JSON.stringify(`${text.slice(Math.max(0, at - 80), at)}${secret.slice(0, 6)}…[${secret.length} chars]`);
}
