/**
 * The CLI as a new user meets it (issue 10): options before the command, one HSM at a time, status
 * of either kind of record, list --refresh, Ctrl-C during a backup, the function app's
 * local.settings.json, a credential failure in one line, a progress line that fits the terminal.
 * Real Azurite, the real HSM emulator, the app's own code; main() with captured streams.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChainedTokenCredential, EnvironmentCredential } from "@azure/identity";
import { getLogLevel, setLogLevel } from "@azure/logger";
import { afterEach, describe, expect, it } from "vitest";
import { EXIT, main, type CliOptions } from "../../src/cli/hsm-backup.js";
import { fitLine } from "../../src/cli/terminal.js";
import { getBackup } from "../../src/handlers/backups.js";
import { createDeps } from "../../src/lib/deps.js";
import { bodyOf, get, startTestApp, type TestApp, type TestAppOptions } from "../support/app.js";

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

async function cli(
  app: TestApp,
  argv: string[],
  io: { env?: Record<string, string | undefined>; isTTY?: boolean; columns?: number } = {},
  options: Partial<CliOptions> = {},
): Promise<Run> {
  let stdout = "";
  let stderr = "";
  const code = await main(
    argv,
    {
      env: io.env ?? app.env,
      stdout: { write: (text: string) => (stdout += text) },
      stderr: { write: (text: string) => (stderr += text) },
      isTTY: io.isTTY ?? false,
      columns: io.columns ?? 200,
    },
    {
      createDeps: (config) => createDeps(config, app.depsOptions),
      pollIntervalMs: 25,
      ...options,
    },
  );
  expect(stdout + stderr).not.toMatch(/sig=(?!<redacted>)/i);
  return { code, stdout, stderr };
}

let app: TestApp | undefined;
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await app?.stop();
  app = undefined;
  await Promise.all(cleanups.splice(0).map((c) => c()));
});

async function start(options?: TestAppOptions): Promise<TestApp> {
  app = await startTestApp(options);
  return app;
}

describe("hsm-backup for a new user", () => {
  it("takes --json before the command, backs up one HSM with --hsm, and refuses an HSM it does not know", async () => {
    const app = await start({ hsmCount: 2 });
    const [first, second] = app.deps.config.hsms;
    const one = await cli(app, ["--json", "backup", "--hsm", second!.name]);
    expect(one.code, one.stderr).toBe(EXIT.ok);
    expect(JSON.parse(one.stdout).map((r: { hsmName: string }) => r.hsmName)).toEqual([second!.name]);
    expect(app.emulators[0]!.requests.filter((r) => r.path === "/backup")).toHaveLength(0);

    const listed = await cli(app, ["--json", "list"]);
    expect(JSON.parse(listed.stdout).items).toHaveLength(1);

    const unknown = await cli(app, ["backup", "--hsm", "nosuch"]);
    expect(unknown).toEqual({
      code: EXIT.refused,
      stdout: "",
      stderr: `hsm-backup: Unknown HSM: No configured HSM is named nosuch (MANAGED_HSM_URLS has: ${first!.name}, ${second!.name}).\n`,
    });
  });

  it("Ctrl-C during a backup stops only the wait, says what keeps running; list --refresh and status settle it as the HTTP route does", async () => {
    const app = await start({ emulator: { jobDurationMs: 1500 } });
    app.emulators[0]!.faults.setJobDurationMs(100, "prebackup"); // only the backup is slow
    const interrupt = new AbortController();
    const running = cli(app, ["backup"], {}, { signal: interrupt.signal });
    // Until the backup itself runs (the pre-backup check before it polls the same status route); a
    // loaded machine may take seconds to get there, and an abort before it would hit the start call.
    // The backup's own status read means the app has its job id: an abort just after the HSM answered
    // the start, before the app read that answer, would leave the start's outcome unknown.
    const backupStarted = () => {
      const requests = app.emulators[0]!.requests;
      const start = requests.findIndex((r) => r.path === "/backup" && r.status === 202);
      return start >= 0 && requests.slice(start + 1).some((r) => /^\/backup\/.+\/pending$/.test(r.path));
    };
    for (let i = 0; i < 500 && !backupStarted(); i++) await new Promise((r) => setTimeout(r, 20));
    expect(backupStarted()).toBe(true);
    interrupt.abort(new Error("interrupted (Ctrl-C)"));
    const run = await running;
    expect(run.code).toBe(EXIT.interrupted);
    const id = /^(\d{13}-[0-9a-f]{8})  /m.exec(run.stdout)![1]!;
    expect(run.stderr).toMatch(
      new RegExp(`job [0-9a-f]{32} keeps running on the HSM; follow it with: hsm-backup status ${id}`),
    );
    expect(run.stderr).toMatch(/^Interrupted: only the wait stopped\. .*hsm-backup list --refresh/m);

    const plain = await cli(app, ["list", "--json"]);
    expect(JSON.parse(plain.stdout).items[0]).toMatchObject({ id, status: "Running" });
    const runningStatus = await cli(app, ["status", id]);
    expect(runningStatus.code).toBe(EXIT.running);
    expect(runningStatus.stdout).toMatch(new RegExp(`^Backup ${id}  Running\\n`));

    await new Promise((r) => setTimeout(r, 1600));
    const refreshed = await cli(app, ["list", "--refresh", "--json"]);
    const [record] = JSON.parse(refreshed.stdout).items;
    expect(record).toMatchObject({ id, status: "Succeeded" });
    expect(bodyOf(await getBackup(get(`/api/backups/${id}`), app.context(), app.deps))).toEqual(record);

    const done = await cli(app, ["status", id]);
    expect(done.code).toBe(EXIT.ok);
    expect(done.stdout).toMatch(new RegExp(`^Backup ${id}  Succeeded\\n(.|\\n)*^  Folder\\s+http`, "m"));
  });

  it("reads the function app's local.settings.json Values, the environment winning", async () => {
    const app = await start();
    expect((await cli(app, ["backup"])).code).toBe(EXIT.ok);
    const dir = await mkdtemp(join(tmpdir(), "hsm-backup-settings-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(
      join(dir, "local.settings.json"),
      JSON.stringify({
        IsEncrypted: false,
        Values: { ...app.env, CATALOG_TABLE: "othertable", FUNCTIONS_WORKER_RUNTIME: "node" },
      }),
    );

    const fromFile = await cli(
      app,
      ["list", "--json", "--verbose"],
      { env: { CATALOG_TABLE: app.table } },
      { settingsDir: dir },
    );
    expect(fromFile.code, fromFile.stderr).toBe(EXIT.ok);
    expect(JSON.parse(fromFile.stdout).items).toHaveLength(1);
    expect(fromFile.stderr).toContain(`Settings: the environment, then ${join(dir, "local.settings.json")}`);

    await writeFile(join(dir, "local.settings.json"), "{ not json");
    const broken = await cli(app, ["list"], { env: {} }, { settingsDir: dir });
    expect(broken.code).toBe(EXIT.refused);
    expect(broken.stderr).toMatch(
      /^hsm-backup: \S+local\.settings\.json is not JSON \(.*\); fix it or run from another folder\n$/,
    );
  });

  it("a credential that cannot get a token is one line saying what to do", async () => {
    const app = await start();
    // Identity-based storage (https, as bearer tokens require): the token is asked for before any connection.
    const env = {
      ...app.env,
      BackupStorage: undefined,
      BackupStorage__blobServiceUri: "https://127.0.0.1:9/devstoreaccount1",
      BackupStorage__tableServiceUri: "https://127.0.0.1:9/devstoreaccount1",
    };
    // Real @azure/identity credentials with nothing to go on, as on a machine nobody signed in to.
    const credential = new ChainedTokenCredential(new EnvironmentCredential(), new EnvironmentCredential());
    const run = await cli(app, ["list"], { env }, { createDeps: (config) => createDeps(config, { credential }) });
    expect(run.code).toBe(EXIT.error);
    expect(run.stderr).toMatch(
      /^hsm-backup: AggregateAuthenticationError: no Azure token could be acquired \(ChainedTokenCredential authentication failed\.\): sign in with az login, or check the managed identity/,
    );
    expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
  });

  it("at AZURE_LOG_LEVEL=verbose, list and backup show the Azure SDKs' wire logs on stderr, without a SAS", async () => {
    const app = await start();
    const level = getLogLevel();
    setLogLevel("verbose");
    try {
      const backup = await cli(app, ["backup", "--json"]);
      expect(backup.code, backup.stderr).toBe(EXIT.ok);
      expect(backup.stderr).toMatch(
        /^azure:mhsm-backup:info Request: \{\n\s+"url": "https:\/\/testhsm0\.managedhsm\.azure\.net\/backup\?api-version=7\.6"/m,
      );
      const list = await cli(app, ["list"]);
      expect(list.code).toBe(EXIT.ok);
      expect(list.stderr).toMatch(/^azure:(core-rest-pipeline|data-tables|storage-blob):info Request: /m);
      expect(JSON.parse(backup.stdout)).toHaveLength(1);
      // cli() checks every run for an unredacted sig= on both streams.
    } finally {
      setLogLevel(level);
    }
  });

  it("fits the progress line to the terminal: whole HSM names or '+N more', never half a word", async () => {
    expect(fitLine("Backing up 3 of 3 HSM(s), 4s", ["alpha Running", "beta Running", "gamma Starting"], 200)).toBe(
      "Backing up 3 of 3 HSM(s), 4s: alpha Running | beta Running | gamma Starting",
    );
    expect(fitLine("Backing up 3 of 3 HSM(s), 4s", ["alpha Running", "beta Running", "gamma Starting"], 60)).toBe(
      "Backing up 3 of 3 HSM(s), 4s: alpha Running | +2 more",
    );
    expect(fitLine("Backing up 3 of 3 HSM(s), 4s", ["alpha Running", "beta Running", "gamma Starting"], 30)).toBe(
      "Backing up 3 of 3 HSM(s), 4s",
    );

    const app = await start({ hsmCount: 3, emulator: { jobDurationMs: 300 } });
    const run = await cli(app, ["backup"], { isTTY: true, columns: 50 });
    expect(run.code, run.stderr).toBe(EXIT.ok);
    const frames = run.stderr
      .split("\r\x1b[2K")
      .map((f) => f.split("\n").at(-1)!)
      .filter(Boolean);
    expect(frames.length).toBeGreaterThan(0);
    for (const frame of frames) {
      expect(frame.length).toBeLessThanOrEqual(49);
      expect(frame).toMatch(
        /^(Backing up \d of 3 HSM\(s\), \d+s(: testhsm\d (Starting|Running)( \| testhsm\d (Starting|Running))*)?( \| \+\d more)?|Recording the outcomes \(\d+s\))$/,
      );
    }
  });
});
