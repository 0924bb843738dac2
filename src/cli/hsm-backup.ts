#!/usr/bin/env node
/**
 * hsm-backup: the operator's command line for what the function app does — back up every configured
 * Managed HSM now, list the catalog, restore a backup and follow a restore. It reads the app's own
 * settings from the environment and runs the same src/lib code, so a backup taken here is recorded
 * like a nightly one (trigger "cli") and a restore obeys the same rules as POST /api/restores.
 *
 * stdout carries results only (a table, or JSON with --json); everything else — warnings, the lib's
 * log lines, progress on a terminal — goes to stderr, and every byte written passes redactSecrets.
 */
import { realpathSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { backupAll, failureSummary } from "../lib/backup.js";
import {
  ACTIVE_STATUSES,
  RECORD_STATUSES,
  type BackupRecord,
  type ListQuery,
  type RestoreRecord,
} from "../lib/catalog.js";
import { ConfigError, parseConfig, type AppConfig, type Env } from "../lib/config.js";
import { createDeps, type AppDeps } from "../lib/deps.js";
import { safeLogger, type Logger } from "../lib/logger.js";
import { ProblemError } from "../lib/problem.js";
import { redactSecrets, toSafeError } from "../lib/redact.js";
import { reconcile, reconcileFailures } from "../lib/reconcile.js";
import { restoreStatus, startRestore, UNREACHED_TITLES } from "../lib/restore.js";
import { StorageUnavailableError } from "../lib/storage.js";
import { checkKeyName, checkRecordId, InvalidInput, parseListQuery, truncate } from "../lib/validation.js";

export const EXIT = {
  ok: 0,
  /** A backup (of any HSM) or the restore ended Failed or Canceled. */
  failed: 1,
  /** Usage error, missing or malformed setting, or a request the app refused (a ProblemError). */
  refused: 2,
  /** status only: the restore is still running. */
  running: 3,
  /** Storage or an HSM could not be reached, or something unexpected broke: the outcome is not known. */
  error: 4,
} as const;

export const USAGE = `Usage: hsm-backup <command> [options]

Backs up, lists and restores the Managed HSMs in MANAGED_HSM_URLS. Settings are read from the
environment under the function app's names (MANAGED_HSM_URLS, BackupStorage, BACKUP_CONTAINER, ...);
Azure access uses DefaultAzureCredential (e.g. az login).

Commands:
  backup                      Back up every configured HSM now and wait for the outcome.
  list                        List recorded backups, newest first.
    --hsm NAME                  only this HSM's backups
    --status STATUS             only backups in this status: ${RECORD_STATUSES.join(", ")}
    --top N                     at most N backups, 1-100 (default 25)
    --continuation-token T      the next page, as printed by the previous list
  restore <backupId>          Restore a backup into the HSM it was taken from and wait for the end.
                              Without --key this is a FULL restore: every key in the HSM is replaced
                              by the backup's, and keys created or changed since are lost.
    --key NAME                  restore only this key (all its versions); the rest is left alone
    --no-wait                   return as soon as the HSM has started the restore
  status <restoreId>          Show a restore's state, asking the HSM while it runs.
  reconcile                   Settle records a bad night left open (Starting, Running, TimedOut),
                              apply the job deadline, and adopt backups the HSM wrote that no record
                              holds (after the HSM's pre-restore check); print what changed.

Options for every command:
  --json                      print only JSON on stdout: the records as the HTTP API returns them
                              (backup: an array; list: {items, continuationToken}); nothing on
                              stdout when the exit code is 2 or 4, except that backup always
                              prints one entry per HSM, saying what happened to each
  --verbose                   also print the app's information log lines on stderr
  -h, --help                  print this help (exit code 0)

Exit codes:
  0  succeeded (restore --no-wait: the restore started)
  1  a backup of at least one HSM, or the restore, ended Failed, Canceled or TimedOut;
     reconcile recorded such an outcome
  2  usage error, missing or malformed setting, or request refused: malformed or unknown
     backup/restore id (status of an unknown id included), backup not restorable or too recent
     for a full restore, HSM busy, restore disabled, HSM refused the start
  3  status: the restore is still running
  4  storage or an HSM could not be reached (nothing was started, or the outcome is not
     known), or an unexpected error
`;

/** The HTTP API's rules (src/lib/http.ts keeps these private; a test holds the two together). */

/** Between restore status reads; recorded restores took 11-39 s, and each read asks the HSM. */
const DEFAULT_POLL_INTERVAL_MS = 5000;
const PROGRESS_TICK_MS = 1000;
/** Carriage return, then erase the whole line (ECMA-48 EL 2): the progress line is redrawn in place. */
const CLEAR_LINE = "\r\x1b[2K";

interface Common {
  readonly json: boolean;
  readonly verbose: boolean;
}

export type Command =
  | { readonly name: "help" }
  | (Common & { readonly name: "backup" })
  | (Common & { readonly name: "list"; readonly query: ListQuery })
  | (Common & { readonly name: "restore"; readonly backupId: string; readonly keyName?: string; readonly wait: boolean })
  | (Common & { readonly name: "status"; readonly restoreId: string })
  | (Common & { readonly name: "reconcile" });

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

type Options = NonNullable<ParseArgsConfig["options"]>;
const COMMON_OPTIONS: Options = { json: { type: "boolean" }, verbose: { type: "boolean" }, help: { type: "boolean", short: "h" } };
const COMMANDS: Readonly<Record<Exclude<Command["name"], "help">, { options: Options; positionals: readonly string[] }>> = {
  backup: { options: {}, positionals: [] },
  list: {
    options: { hsm: { type: "string" }, status: { type: "string" }, top: { type: "string" }, "continuation-token": { type: "string" } },
    positionals: [],
  },
  restore: { options: { key: { type: "string" }, "no-wait": { type: "boolean" } }, positionals: ["backupId"] },
  status: { options: {}, positionals: ["restoreId"] },
  reconcile: { options: {}, positionals: [] },
};

/**
 * Parses the command line; the command comes first. Values are checked with the HTTP API's rules.
 * @throws UsageError naming the offending argument.
 */
export function parseCommand(argv: readonly string[]): Command {
  const [name, ...rest] = argv;
  if (name === undefined) throw new UsageError("no command given");
  if (name === "--help" || name === "-h" || name === "help") return { name: "help" };
  if (!Object.hasOwn(COMMANDS, name)) {
    throw new UsageError(name.startsWith("-")
      ? `the command (${Object.keys(COMMANDS).join(", ")}) comes before options, not "${truncate(name)}"`
      : `unknown command "${truncate(name)}"`);
  }
  const commandName = name as keyof typeof COMMANDS;
  const spec = COMMANDS[commandName];
  if (rest.includes("--help") || rest.includes("-h")) return { name: "help" };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: [...rest], options: { ...COMMON_OPTIONS, ...spec.options }, allowPositionals: true, strict: true, tokens: true });
  } catch (error) {
    // node:util's messages name the option ("Unknown option '--tpo'"); anything else is a bug of ours.
    if (error instanceof Error && "code" in error && String(error.code).startsWith("ERR_PARSE_ARGS")) {
      throw new UsageError(`${commandName}: ${error.message}`);
    }
    throw error;
  }
  const seen = new Set<string>();
  for (const token of parsed.tokens ?? []) {
    if (token.kind !== "option") continue;
    // A repeated option is ambiguous (which --key?): refuse it rather than let the last one win.
    if (seen.has(token.name)) throw new UsageError(`${commandName}: --${token.name} is given more than once`);
    seen.add(token.name);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== spec.positionals.length) {
    const expected = spec.positionals.length === 0 ? "no arguments" : spec.positionals.map((p) => `<${p}>`).join(" ");
    throw new UsageError(positionals.length < spec.positionals.length
      ? `${commandName}: missing ${expected}`
      : `${commandName}: takes ${expected}, but got ${positionals.map((p) => `"${truncate(p)}"`).join(" ")}`);
  }
  const common: Common = { json: values.json === true, verbose: values.verbose === true };
  const text = (option: string): string | undefined => {
    const value = values[option];
    return typeof value === "string" ? value : undefined;
  };
  switch (commandName) {
    case "backup":
      return { name: "backup", ...common };
    case "list":
      return { name: "list", ...common, query: listQuery(text("hsm"), text("status"), text("top"), text("continuation-token")) };
    case "restore": {
      const key = text("key");
      const keyName = key === undefined ? undefined : usage(() => checkKeyName(key, () => "restore: --key"));
      return {
        name: "restore", ...common,
        backupId: recordId(positionals[0] ?? "", "backup"),
        ...(keyName !== undefined ? { keyName } : {}),
        wait: values["no-wait"] !== true,
      };
    }
    case "status":
      return { name: "status", ...common, restoreId: recordId(positionals[0] ?? "", "restore") };
    case "reconcile":
      return { name: "reconcile", ...common };
  }
}

function recordId(id: string, what: "backup" | "restore"): string {
  return usage(() => checkRecordId(id, what));
}

const LIST_FLAGS = { hsm: "--hsm", status: "--status", top: "--top", continuationToken: "--continuation-token", keyName: "--key" } as const;

function listQuery(hsm: string | undefined, status: string | undefined, top: string | undefined, continuationToken: string | undefined): ListQuery {
  return usage(() => parseListQuery({ hsm, status, top, continuationToken }, (field) => `list: ${LIST_FLAGS[field]}`));
}

/** Runs a rule shared with the HTTP API and turns its refusal into a usage error. */
function usage<T>(check: () => T): T {
  try {
    return check();
  } catch (error) {
    if (error instanceof InvalidInput) throw new UsageError(error.message);
    throw error;
  }
}

export interface Output {
  write(text: string): unknown;
}

export interface CliIo {
  readonly env: Env;
  readonly stdout: Output;
  readonly stderr: Output;
  /** Whether stderr is a terminal: progress is shown there only then. */
  readonly isTTY: boolean;
  /** That terminal's width; the progress line is cut to fit so that it can be redrawn in place. Default 80. */
  readonly columns?: number;
}

export interface CliOptions {
  /** Builds the app's dependencies from the parsed settings. Default: createDeps(config), as the app does. */
  readonly createDeps?: (config: AppConfig) => AppDeps;
  /** Wait between restore status reads. Default 5000 ms. */
  readonly pollIntervalMs?: number;
}

/**
 * Runs one command line and resolves with its exit code (EXIT); it never rejects. Results go to
 * io.stdout, everything else to io.stderr.
 */
export async function main(argv: readonly string[], io: CliIo, options: CliOptions = {}): Promise<number> {
  let command: Command;
  try {
    command = parseCommand(argv);
  } catch (error) {
    const safe = toSafeError(error);
    if (!(error instanceof UsageError)) {
      io.stderr.write(`hsm-backup: ${safe.name}: ${safe.message}\n`);
      return EXIT.error;
    }
    io.stderr.write(`hsm-backup: ${safe.message}\n\n${USAGE}`);
    return EXIT.refused;
  }
  if (command.name === "help") {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  const term = new Terminal(io, io.isTTY && !command.json);
  try {
    const config = parseConfig(io.env);
    const deps = (options.createDeps ?? ((c: AppConfig) => createDeps(c)))(config);
    const log = safeLogger({
      log: (...args) => {
        if (command.verbose) term.line(args.join(" "));
      },
      warn: (...args) => term.line(args.join(" ")),
      error: (...args) => term.line(args.join(" ")),
    });
    const context: Context = { deps, log, term, json: command.json, pollIntervalMs: options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS };
    switch (command.name) {
      case "backup":
        return await backup(context);
      case "list":
        return await list(context, command.query);
      case "restore":
        return await restore(context, command.backupId, command.keyName, command.wait);
      case "status":
        return await status(context, command.restoreId);
      case "reconcile":
        return await reconcileCommand(context);
    }
  } catch (error) {
    term.stopProgress();
    if (error instanceof ConfigError) {
      term.line(`hsm-backup: ${error.message}`);
      return EXIT.refused;
    }
    if (error instanceof ProblemError) {
      term.line(`hsm-backup: ${error.title}: ${error.detail}`);
      const restoreId = Object.values(error.extensions)
        .map((v) => (typeof v === "string" ? /^\/api\/restores\/([^/]+)$/.exec(v)?.[1] : undefined))
        .find((id) => id !== undefined);
      if (restoreId !== undefined) term.line(`Check that restore with: hsm-backup status ${restoreId}`);
      return UNREACHED_TITLES.has(error.title) ? EXIT.error : EXIT.refused;
    }
    term.line(`hsm-backup: ${describeFailure(error)}`);
    return EXIT.error;
  } finally {
    term.stopProgress();
  }
}

interface Context {
  readonly deps: AppDeps;
  readonly log: Logger;
  readonly term: Terminal;
  readonly json: boolean;
  readonly pollIntervalMs: number;
}

async function backup({ deps, log, term, json }: Context): Promise<number> {
  const started = Date.now();
  const hsms = new Map(deps.config.hsms.map((h) => [h.name, { status: "Starting", endedAt: undefined as number | undefined }]));
  const elapsed = (endedAt: number | undefined) => `${Math.round(((endedAt ?? Date.now()) - started) / 1000)}s`;
  term.startProgress(() => {
    const running = [...hsms].filter(([, s]) => s.endedAt === undefined);
    if (running.length === 0) return `Recording the outcomes (${elapsed(undefined)})`;
    return `Backing up ${running.length} of ${hsms.size} HSM(s): ${running.map(([name, s]) => `${name} ${s.status} ${elapsed(undefined)}`).join(" | ")}`;
  });
  const results = await backupAll(deps, log, {
    trigger: "cli",
    onProgress: (hsm, state) => {
      const entry = hsms.get(hsm.name);
      if (!entry || entry.endedAt !== undefined) return;
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
  const records = results.map((r): BackupRecord => r.record ?? {
    id: "-", hsmName: r.hsm, hsmUrl: deps.config.hsms.find((h) => h.name === r.hsm)?.url ?? "", status: r.outcome as BackupRecord["status"],
    startedAt: new Date(started).toISOString(), trigger: "cli", ...(r.jobId ? { jobId: r.jobId } : {}), ...(r.detail ? { errorMessage: r.detail } : {}),
  });
  if (json) term.json(records);
  else term.out(backupTable(records));
  for (const r of results.filter((x) => x.outcome === "Pending")) {
    term.line(`HSM ${r.hsm}: job ${r.jobId} is still running; its outcome is recorded by the next reconcile run (or: hsm-backup reconcile)`);
  }
  const failure = failureSummary(results);
  if (failure === undefined) return EXIT.ok;
  term.line(failure);
  // Not reached (nothing was sent, no answer, or the catalog was out of reach) is not the same as failed.
  const unreached = results.some((r) => r.outcome === "Unknown" || r.outcome === "NotRecorded" || r.record?.errorCode === "StartNotSent");
  return unreached ? EXIT.error : EXIT.failed;
}

async function reconcileCommand({ deps, log, term, json }: Context): Promise<number> {
  const report = await reconcile(deps, log);
  if (json) {
    term.json(report);
  } else {
    if (report.changed.length === 0 && report.discovered.length === 0) term.line(`Nothing to change (${report.checked} record(s) checked).`);
    for (const c of report.changed) term.out(`${c.kind} ${c.recordId}  HSM ${c.hsm}  ${c.from} -> ${c.to}${c.detail ? `  ${c.detail}` : ""}\n`);
    for (const d of report.discovered) term.out(`backup ${d.id}  HSM ${d.hsmName}  adopted discovered folder ${folderName(d.folderUri)}\n`);
    for (const u of report.unadopted) term.line(`Not adopted: ${u.folderUri}: ${u.reason}`);
    for (const e of report.errors) term.line(`Could not reconcile: ${e}`);
  }
  const failure = reconcileFailures(report);
  if (failure === undefined) return EXIT.ok;
  if (!json) term.line(failure);
  return report.errors.length > 0 ? EXIT.error : EXIT.failed;
}

/** One line saying what could not be reached, for an error that is not a refusal. */
function describeFailure(error: unknown): string {
  const safe = toSafeError(error);
  if (error instanceof StorageUnavailableError) return safe.message;
  const e = error as { name?: string; code?: string; request?: { url?: string } };
  if (e.name === "RestError" && e.request?.url) {
    let host = "";
    try {
      host = new URL(e.request.url).host;
    } catch {
      // No host to name.
    }
    return `backup storage${host ? ` at ${host}` : ""} could not be reached or refused the call (${e.code ?? safe.message.split("\n")[0]}): check BackupStorage and the network`;
  }
  return `${safe.name}: ${safe.message.split("\n")[0]}`;
}

async function list({ deps, term, json }: Context, query: ListQuery): Promise<number> {
  await deps.prepare();
  const page = await deps.catalog.list("backup", query);
  if (json) {
    term.json(page);
    return EXIT.ok;
  }
  if (page.items.length > 0) term.out(backupTable(page.items));
  else term.line("No backups found.");
  if (page.continuationToken !== undefined) term.line(`More: add --continuation-token ${page.continuationToken}`);
  return EXIT.ok;
}

async function restore(context: Context, backupId: string, keyName: string | undefined, wait: boolean): Promise<number> {
  const { deps, log, term, json } = context;
  if (keyName === undefined) {
    const backup = (await deps.catalog.get("backup", backupId))?.record;
    // An unknown backup gets no warning: startRestore refuses it before anything happens.
    if (backup) {
      term.line(`WARNING: FULL restore of HSM ${backup.hsmName} from backup ${backup.id} (taken ${backup.endedAt ?? backup.startedAt}): every key in the HSM is replaced by the backup's; keys created or changed since then are lost.`);
    }
  }
  const started = await startRestore(deps, log, { backupId, ...(keyName !== undefined ? { keyName } : {}) });
  if (!wait) {
    term.line(`Restore ${started.id} started (job ${started.jobId}); follow it with: hsm-backup status ${started.id}`);
    if (json) term.json(started);
    else term.out(restoreSummary(started));
    return EXIT.ok;
  }
  term.line(`Waiting for restore ${started.id} to end; Ctrl-C stops the wait, not the restore (check it later with: hsm-backup status ${started.id}).`);
  let final: RestoreRecord;
  try {
    final = await waitForRestore(context, started);
  } catch (error) {
    term.stopProgress();
    term.line(`The wait for restore ${started.id} stopped; the restore itself may still be running: hsm-backup status ${started.id}`);
    throw error;
  }
  if (json) term.json(final);
  else term.out(restoreSummary(final));
  return final.status === "Succeeded" ? EXIT.ok : EXIT.failed;
}

async function waitForRestore({ deps, log, term, pollIntervalMs }: Context, started: RestoreRecord): Promise<RestoreRecord> {
  const since = Date.now();
  let current = started;
  const what = `${current.keyName !== undefined ? `Restore of key ${current.keyName}` : "FULL restore"} ${current.id} on HSM ${current.hsmName}`;
  term.startProgress(() => `${what}: ${current.status} ${Math.round((Date.now() - since) / 1000)}s`);
  while (ACTIVE_STATUSES.includes(current.status)) {
    await sleep(pollIntervalMs);
    const next = await restoreStatus(deps, log, current.id);
    if (!next) throw new Error(`Restore record ${current.id} is no longer in catalog table ${deps.config.catalogTable}`);
    current = next;
    term.refreshProgress();
  }
  term.stopProgress();
  return current;
}

async function status({ deps, log, term, json }: Context, restoreId: string): Promise<number> {
  const record = await restoreStatus(deps, log, restoreId);
  if (!record) throw new ProblemError(404, "Restore not found", `No restore with id ${restoreId} is recorded.`);
  if (json) term.json(record);
  else term.out(restoreSummary(record));
  if (record.status === "Succeeded") return EXIT.ok;
  return ACTIVE_STATUSES.includes(record.status) ? EXIT.running : EXIT.failed;
}

function backupTable(records: readonly BackupRecord[]): string {
  const rows = records.map((r) => [r.id, r.hsmName, r.status, time(r.startedAt), duration(r.durationSeconds), folderName(r.folderUri)]);
  return table([["ID", "HSM", "STATUS", "STARTED", "DURATION", "FOLDER"], ...rows]);
}

function restoreSummary(r: RestoreRecord): string {
  const fields: [string, string | undefined][] = [
    ["HSM", `${r.hsmName} (${r.hsmUrl})`],
    ["Backup", `${r.backupId} (${folderName(r.folderUri)})`],
    ["Scope", r.keyName !== undefined ? `key ${r.keyName}` : "full (every key)"],
    ["Job", r.jobId],
    ["Started", time(r.startedAt)],
    ["Ended", r.endedAt !== undefined ? time(r.endedAt) : undefined],
    ["Duration", r.durationSeconds !== undefined ? duration(r.durationSeconds) : undefined],
    ["Details", r.statusDetails],
    ["Error", r.errorCode !== undefined || r.errorMessage !== undefined ? [r.errorCode, r.errorMessage].filter(Boolean).join(": ") : undefined],
  ];
  const rows = fields.filter((f): f is [string, string] => f[1] !== undefined).map(([k, v]) => [`  ${k}`, v]);
  return `Restore ${r.id}  ${r.status}\n${table(rows)}`;
}

/** Left-aligned columns two spaces apart; the last column is not padded. */
function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  ")).join("\n") + "\n";
}

function time(iso: string): string {
  return iso.replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function duration(seconds: number | undefined): string {
  if (seconds === undefined) return "-";
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor(seconds / 60) % 60).padStart(2, "0")}m`;
}

function folderName(folderUri: string | undefined): string {
  return folderUri?.split("/").filter(Boolean).at(-1) ?? "-";
}

/**
 * Owns the two streams: results to stdout; lines to stderr, with at most one progress line kept at
 * the bottom of a terminal (cleared before any other line is written, then redrawn). Everything
 * passes redactSecrets on its way out.
 */
class Terminal {
  private render: (() => string) | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private shown = false;

  constructor(private readonly io: CliIo, private readonly progress: boolean) {}

  out(text: string): void {
    this.io.stdout.write(redactSecrets(text));
  }

  json(value: unknown): void {
    this.out(`${JSON.stringify(value, null, 2)}\n`);
  }

  line(text: string): void {
    this.clear();
    this.io.stderr.write(`${redactSecrets(text)}\n`);
    this.draw();
  }

  /** A permanent line that belongs to the progress display: shown only where progress is. */
  progressLine(text: string): void {
    if (this.progress) this.line(text);
  }

  startProgress(render: () => string): void {
    if (!this.progress) return;
    this.render = render;
    this.draw();
    // Elapsed time moves on between status reads (which may be 10 s apart).
    this.ticker = setInterval(() => this.draw(), PROGRESS_TICK_MS);
    this.ticker.unref();
  }

  refreshProgress(): void {
    this.draw();
  }

  stopProgress(): void {
    clearInterval(this.ticker);
    this.ticker = undefined;
    this.clear();
    this.render = undefined;
  }

  /** Rewrites the progress line in place, in one write so that it never flickers. */
  private draw(): void {
    if (!this.render) return;
    const width = Math.max(20, (this.io.columns ?? 80) - 1);
    const text = redactSecrets(this.render());
    this.io.stderr.write(`${this.shown ? CLEAR_LINE : ""}${text.length > width ? `${text.slice(0, width - 1)}…` : text}`);
    this.shown = true;
  }

  private clear(): void {
    if (!this.shown) return;
    this.io.stderr.write(CLEAR_LINE);
    this.shown = false;
  }
}

/** npm links a bin as a symlink; Node resolves the main module's symlinks, so compare real paths. */
function invokedAsScript(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(script)).href;
  } catch {
    return false; // argv[1] is no file (e.g. node -e): this module was imported, not run.
  }
}

if (invokedAsScript()) {
  const code = await main(process.argv.slice(2), {
    env: process.env,
    stdout: process.stdout,
    stderr: process.stderr,
    isTTY: process.stderr.isTTY === true,
    columns: process.stderr.columns,
  });
  process.exitCode = code;
}
