/**
 * The command line: what it accepts (USAGE), how it is parsed, and the exit codes. Values are checked
 * with the HTTP API's own rules (src/lib/validation.ts), so the two accept and refuse the same input.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { RECORD_ID, RECORD_STATUSES, type ListQuery } from "../lib/catalog.js";
import {
  checkKeyName,
  checkRecordId,
  HSM_NAME,
  InvalidInput,
  parseListQuery,
  truncate,
  type RawListQuery,
} from "../lib/validation.js";

export const EXIT = {
  ok: 0,
  /** A backup (of any HSM) or the restore ended Failed or Canceled. */
  failed: 1,
  /** Usage error, missing or malformed setting, or a request the app refused (a ProblemError). */
  refused: 2,
  /** status only: the backup or restore is still running. */
  running: 3,
  /** Storage or an HSM could not be reached, or something unexpected broke: the outcome is not known. */
  error: 4,
  /** Ctrl-C: the wait stopped; what the HSM started keeps running. 128 + SIGINT, as shells report it. */
  interrupted: 130,
} as const;

export const HELP_HINT = "Run 'hsm-backup --help' for usage.";

export const USAGE = `Usage: hsm-backup [--json] [--verbose] <command> [options]

Backs up, lists and restores the Managed HSMs in MANAGED_HSM_URLS. Settings are read from the
environment under the function app's names (MANAGED_HSM_URLS, BackupStorage, BACKUP_CONTAINER, ...),
and from the Values of ./local.settings.json or from ./.env (a deployment's: azd env get-values > .env)
when one exists (the environment wins; both: refused). Azure access uses DefaultAzureCredential (e.g.
az login). AZURE_LOG_LEVEL=info shows the HSM calls on stderr.

Commands:
  backup                      Back up every configured HSM now and wait for the outcome.
    --hsm NAME                  only this HSM (its name as in the catalog)
  list                        List recorded backups, newest first.
    --hsm NAME                  only this HSM's backups
    --status STATUS             only backups in this status: ${RECORD_STATUSES.join(", ")}
    --verification V            only backups whose restorability check was Passed, Failed or Skipped
    --top N                     at most N backups, 1-100 (default 25)
    --continuation-token T      the next page, as printed by the previous list
    --refresh                   ask the HSM about backups still Starting, Running or TimedOut and
                                record what it says first (as GET /api/backups/{id} does)
  restore <backupId>          Restore a backup into the HSM it was taken from and wait for the end.
                              Without --key this is a FULL restore: every key in the HSM is replaced
                              by the backup's, and keys created or changed since are lost.
    --key NAME                  restore only this key (all its versions); the rest is left alone
    --confirm HSM               a full restore must name the HSM it wipes (as the catalog shows it);
                                on a terminal it is asked for, elsewhere it is required
    --no-wait                   return as soon as the HSM has started the restore
  status <id>                 Show a backup's or a restore's state (it says which), asking the HSM
                              while it runs.
  reconcile                   Settle records a bad night left open (Starting, Running, TimedOut),
                              apply the job deadline, and adopt backups the HSM wrote that no record
                              holds (after the HSM's pre-restore check); print what changed.
  prune                       Delete the blobs of backup folders older than RETENTION_DAYS, never the
                              newest RETENTION_MIN_KEEP usable backups of an HSM, a folder without a
                              record, one a restore reads, or anything of an HSM that is busy; the
                              records stay, marked Pruned. A folder storage refuses to delete
                              (immutability, lease, permission) is reported and left.
    --dry-run                   print the plan (what would be deleted and kept, and why) and change
                                nothing

Options for every command (before or after it):
  --json                      print only JSON on stdout: the records as the HTTP API returns them
                              (backup: an array; list: {items, continuationToken}; prune: the
                              report with every record's action and reason); nothing on
                              stdout when the exit code is 2 or 4, except that backup always
                              prints one entry per HSM, saying what happened to each
  --verbose                   also print the app's information log lines on stderr
  -h, --help                  print this help (exit code 0)

Exit codes:
  0  succeeded (restore --no-wait: the restore started)
  1  a backup of at least one HSM, or the restore, ended Failed, Canceled or TimedOut;
     reconcile recorded such an outcome (prune: a folder left because storage refused its
     delete is reported, and is no failure: exit code 0)
  2  usage error, missing or malformed setting, or request refused: malformed or unknown
     backup/restore id (status of an unknown id included), backup not restorable or too recent
     for a full restore, HSM busy, restore disabled, HSM refused the start, unknown --hsm
  3  status: the backup or restore is still running
  4  storage or an HSM could not be reached (nothing was started, or the outcome is not
     known), or an unexpected error
  130  interrupted (Ctrl-C): jobs already started keep running on the HSM
`;

interface Common {
  readonly json: boolean;
  readonly verbose: boolean;
}

export type Command =
  | { readonly name: "help" }
  | (Common & { readonly name: "backup"; readonly hsmName?: string })
  | (Common & { readonly name: "list"; readonly query: ListQuery; readonly refresh: boolean })
  | (Common & {
      readonly name: "restore";
      readonly backupId: string;
      readonly keyName?: string;
      readonly confirm?: string;
      readonly wait: boolean;
    })
  | (Common & { readonly name: "status"; readonly id: string })
  | (Common & { readonly name: "reconcile" })
  | (Common & { readonly name: "prune"; readonly dryRun: boolean });

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

type Options = NonNullable<ParseArgsConfig["options"]>;
const COMMON_OPTIONS: Options = {
  json: { type: "boolean" },
  verbose: { type: "boolean" },
  help: { type: "boolean", short: "h" },
};
const COMMON_FLAGS = new Set(["--json", "--verbose", "--help", "-h"]);
const COMMANDS: Readonly<
  Record<Exclude<Command["name"], "help">, { options: Options; positionals: readonly string[] }>
> = {
  backup: { options: { hsm: { type: "string" } }, positionals: [] },
  list: {
    options: {
      hsm: { type: "string" },
      status: { type: "string" },
      verification: { type: "string" },
      top: { type: "string" },
      "continuation-token": { type: "string" },
      refresh: { type: "boolean" },
    },
    positionals: [],
  },
  restore: {
    options: { key: { type: "string" }, confirm: { type: "string" }, "no-wait": { type: "boolean" } },
    positionals: ["backupId"],
  },
  status: { options: {}, positionals: ["id"] },
  reconcile: { options: {}, positionals: [] },
  prune: { options: { "dry-run": { type: "boolean" } }, positionals: [] },
};

/**
 * Parses the command line. The options every command has (--json, --verbose, --help) may come before
 * the command; a command's own options come after it.
 * @throws UsageError naming the offending argument, in one line.
 */
export function parseCommand(argv: readonly string[]): Command {
  const at = argv.findIndex((arg) => !arg.startsWith("-"));
  const before = at < 0 ? argv : argv.slice(0, at);
  if (before.includes("--help") || before.includes("-h")) return { name: "help" };
  const misplaced = before.find((arg) => !COMMON_FLAGS.has(arg));
  if (misplaced !== undefined) {
    throw new UsageError(
      at < 0
        ? `no command given (${Object.keys(COMMANDS).join(", ")})`
        : `"${truncate(misplaced)}" is not an option of every command: put it after the command`,
    );
  }
  if (at < 0) throw new UsageError(`no command given (${Object.keys(COMMANDS).join(", ")})`);
  const name = argv[at]!;
  const rest = [...before, ...argv.slice(at + 1)];
  if (name === "help") return { name: "help" };
  if (!Object.hasOwn(COMMANDS, name)) {
    throw new UsageError(`unknown command "${truncate(name)}" (commands: ${Object.keys(COMMANDS).join(", ")})`);
  }
  const commandName = name as keyof typeof COMMANDS;
  const spec = COMMANDS[commandName];
  if (rest.includes("--help") || rest.includes("-h")) return { name: "help" };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: rest,
      options: { ...COMMON_OPTIONS, ...spec.options },
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
  } catch (error) {
    // node:util names the option ("Unknown option '--tpo'"); Node 22 adds a hint about '--' with
    // nested quotes that reads as garbage here, so only the first sentence is kept.
    if (error instanceof Error && "code" in error && String(error.code).startsWith("ERR_PARSE_ARGS")) {
      throw new UsageError(`${commandName}: ${error.message.split(/\.\s/)[0]!.replace(/\.$/, "")}`);
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
    throw new UsageError(
      positionals.length < spec.positionals.length
        ? `${commandName}: missing ${expected}`
        : `${commandName}: takes ${expected}, but got ${positionals.map((p) => `"${truncate(p)}"`).join(" ")}`,
    );
  }
  const common: Common = { json: values.json === true, verbose: values.verbose === true };
  const text = (option: string): string | undefined => {
    const value = values[option];
    return typeof value === "string" ? value : undefined;
  };
  switch (commandName) {
    case "backup": {
      const hsm = text("hsm");
      if (hsm !== undefined && !HSM_NAME.test(hsm))
        throw new UsageError(`backup: --hsm "${truncate(hsm)}" is not an HSM name`);
      return { name: "backup", ...common, ...(hsm !== undefined ? { hsmName: hsm } : {}) };
    }
    case "list":
      return {
        name: "list",
        ...common,
        query: listQuery({
          hsm: text("hsm"),
          status: text("status"),
          verification: text("verification"),
          top: text("top"),
          continuationToken: text("continuation-token"),
        }),
        refresh: values.refresh === true,
      };
    case "restore": {
      const key = text("key");
      const keyName = key === undefined ? undefined : usage(() => checkKeyName(key, () => "restore: --key"));
      return {
        name: "restore",
        ...common,
        backupId: usage(() => checkRecordId(positionals[0] ?? "", "backup")),
        ...(keyName !== undefined ? { keyName } : {}),
        ...(text("confirm") !== undefined ? { confirm: text("confirm")! } : {}),
        wait: values["no-wait"] !== true,
      };
    }
    case "status": {
      // Backup and restore ids have the same shape: the record found says which it is.
      const id = positionals[0] ?? "";
      if (!RECORD_ID.test(id))
        throw new UsageError(
          `status: "${truncate(id)}" is not a backup or restore id (13 digits, a hyphen, 8 hex digits)`,
        );
      return { name: "status", ...common, id };
    }
    case "reconcile":
      return { name: "reconcile", ...common };
    case "prune":
      return { name: "prune", ...common, dryRun: values["dry-run"] === true };
  }
}

const LIST_FLAGS = {
  hsm: "--hsm",
  status: "--status",
  verification: "--verification",
  top: "--top",
  continuationToken: "--continuation-token",
  keyName: "--key",
} as const;

function listQuery(raw: RawListQuery): ListQuery {
  return usage(() => parseListQuery(raw, (field) => `list: ${LIST_FLAGS[field]}`));
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
