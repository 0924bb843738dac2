#!/usr/bin/env node
/**
 * hsm-backup: the operator's command line for what the function app does — back up the configured
 * Managed HSMs now, list the catalog, restore a backup and follow a backup or restore. It reads the
 * app's own settings (the environment, over ./local.settings.json's Values or ./.env) and runs the same src/lib
 * code, so a backup taken here is recorded like a nightly one (trigger "cli") and a restore obeys the
 * same rules as POST /api/restores.
 *
 * stdout carries results only (a table, or JSON with --json); everything else — warnings, the lib's
 * log lines, Azure SDK logs (AZURE_LOG_LEVEL), progress — goes to stderr, and every byte written
 * passes redactSecrets. Modules: args (parsing, USAGE, EXIT), commands, format (tables), terminal
 * (streams and progress), settings (local.settings.json or a deployment's .env).
 */
import { realpathSync } from "node:fs";
import { createInterface } from "node:readline/promises";
import { pathToFileURL } from "node:url";
import { format } from "node:util";
import { AzureLogger } from "@azure/logger";
import { ConfigError, parseConfig, type AppConfig } from "../lib/config.js";
import { createDeps, type AppDeps } from "../lib/deps.js";
import { safeLogger } from "../lib/logger.js";
import { ProblemError } from "../lib/problem.js";
import { toSafeError } from "../lib/redact.js";
import { UNREACHED_TITLES } from "../lib/restore.js";
import { EXIT, HELP_HINT, parseCommand, UsageError, USAGE, type Command } from "./args.js";
import {
  backup,
  describeFailure,
  list,
  pruneCommand,
  reconcileCommand,
  restore,
  status,
  type Context,
} from "./commands.js";
import { signedInAs } from "./identity.js";
import { SettingsFileError, withLocalSettings } from "./settings.js";
import { Terminal, type CliIo } from "./terminal.js";

export { EXIT, parseCommand, USAGE, UsageError, type Command } from "./args.js";
export type { CliIo, Output } from "./terminal.js";

export interface CliOptions {
  /** Builds the app's dependencies from the parsed settings. Default: createDeps(config), as the app does. */
  readonly createDeps?: (config: AppConfig) => AppDeps;
  /** Wait between restore status reads. Default 5000 ms. */
  readonly pollIntervalMs?: number;
  /** Folder whose local.settings.json Values or .env fill in settings the environment lacks. Default: none. */
  readonly settingsDir?: string;
  /** Aborted on Ctrl-C: backup and restore stop waiting and say what keeps running. */
  readonly signal?: AbortSignal;
}

/** Between restore status reads; recorded restores took 11-39 s, and each read asks the HSM. */
const DEFAULT_POLL_INTERVAL_MS = 5000;

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
    io.stderr.write(`hsm-backup: ${safe.message}. ${HELP_HINT}\n`);
    return EXIT.refused;
  }
  if (command.name === "help") {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  const term = new Terminal(io, command.json ? "none" : io.isTTY ? "live" : "plain");
  // The Azure SDKs' own logs (AZURE_LOG_LEVEL) pass the redactor and keep clear of the progress line.
  const sdkLog = AzureLogger.log;
  AzureLogger.log = (...args: unknown[]) => term.line(format(...args));
  try {
    const settings =
      options.settingsDir !== undefined ? withLocalSettings(io.env, options.settingsDir) : { env: io.env };
    if (settings.file !== undefined && command.verbose) term.line(`Settings: the environment, then ${settings.file}`);
    const config = parseConfig(settings.env);
    const deps = (options.createDeps ?? ((c: AppConfig) => createDeps(c)))(config);
    const log = safeLogger({
      log: (...args) => {
        if (command.verbose) term.line(args.join(" "));
      },
      warn: (...args) => term.line(args.join(" ")),
      error: (...args) => term.line(args.join(" ")),
    });
    const context: Context = {
      deps,
      log,
      term,
      json: command.json,
      pollIntervalMs: options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS,
      signal: options.signal,
      readLine: io.readLine,
      requestedBy: once(() =>
        signedInAs(deps.credential, {
          // The scope the command is about to use anyway: storage's with identity-based storage, else the HSM's.
          scope:
            config.storage.kind === "identity"
              ? "https://storage.azure.com/.default"
              : "https://managedhsm.azure.net/.default",
          timeoutMs: config.requestTimeoutMs,
        }),
      ),
    };
    switch (command.name) {
      case "backup":
        return await backup(context, command.hsmName);
      case "list":
        return await list(context, command.query, command.refresh);
      case "restore":
        return await restore(context, command.backupId, command.keyName, command.confirm, command.wait);
      case "status":
        return await status(context, command.id);
      case "reconcile":
        return await reconcileCommand(context);
      case "prune":
        return await pruneCommand(context, command.dryRun);
    }
  } catch (error) {
    term.stopProgress();
    if (error instanceof ConfigError || error instanceof SettingsFileError) {
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
    AzureLogger.log = sdkLog;
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
  const argv = process.argv.slice(2);
  const interrupt = new AbortController();
  // The first Ctrl-C stops the wait (backup and restore then say what keeps running on the HSM); a
  // second one, or one during a command that does not wait, quits at once.
  const waits = (() => {
    try {
      const name = parseCommand(argv).name;
      return name === "backup" || name === "restore";
    } catch {
      return false;
    }
  })();
  process.on("SIGINT", () => {
    if (!waits || interrupt.signal.aborted) process.exit(EXIT.interrupted);
    interrupt.abort(new Error("interrupted (Ctrl-C)"));
  });
  const stderr = process.stderr;
  process.exitCode = await main(
    argv,
    {
      env: process.env,
      stdout: process.stdout,
      stderr,
      isTTY: stderr.isTTY === true,
      get columns() {
        return stderr.columns;
      },
      ...(process.stdin.isTTY ? { readLine: askTerminal } : {}),
    },
    { settingsDir: process.cwd(), signal: interrupt.signal },
  );
}

/** Asked at most once per command, and only by the commands that record who asked. */
function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= fn());
}

/** A question on stderr, the answer from the terminal's stdin. */
async function askTerminal(prompt: string): Promise<string> {
  const lines = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  try {
    return await lines.question(prompt);
  } finally {
    lines.close();
  }
}
