/**
 * The operator CLI against the real local services (Azurite, the HSM emulator, the managed-identity
 * endpoint), called in-process through main() with captured streams, and once as a real child
 * process through the package's bin path (bundled as `npm run build` does, in beforeAll, into a temporary directory).
 */
import { spawn } from "node:child_process";
import { access, chmod, mkdir, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from "vitest";
import { EXIT, USAGE, parseCommand, UsageError } from "../../src/cli/hsm-backup.js";
import { listBackups } from "../../src/handlers/backups.js";
import { listQuery, restoreRequest } from "../../src/lib/http.js";
import { buildBundle } from "../../tools/build.js";
import { deleteAndPurge, liveKeyId } from "../../tools/key-client.js";
import { bodyOf, get, keyClient, postJson, startTestApp, type TestApp, type TestAppOptions } from "../support/app.js";
import { cli, type Run } from "../support/cli.js";

const PROGRESS = /\r|\x1b\[|Backing up|Waiting for|backup job/;

describe("hsm-backup arguments", () => {
  it.each([
    [[]],
    [["frobnicate"]],
    [["--top", "5", "list"]],
    [["--json"]],
    [["backup", "--bogus"]],
    [["backup", "extra"]],
    [["list", "--top"]],
    [["list", "--top", "0"]],
    [["list", "--top", "101"]],
    [["list", "--top", "1e2"]],
    [["list", "--status", "succeeded"]],
    [["list", "--hsm", "a b"]],
    [["list", "--hsm", "x'; drop"]],
    [["list", "--continuation-token", "x".repeat(1025)]],
    [["restore"]],
    [["restore", "not-an-id"]],
    [["restore", "8235-abc"]],
    [["restore", "1234567890123-0123abcd", "extra"]],
    [["restore", "1234567890123-0123abcd", "--key", "bad_name"]],
    [["restore", "1234567890123-0123abcd", "--key"]],
    [["restore", "1234567890123-0123abcd", "--key", "a", "--key", "b"]],
    [["restore", "1234567890123-0123abcd", "--keyName", "a"]],
    [["status"]],
    [["status", "1234567890123-0123ABCD"]],
  ])(
    "refuses %j with one line on stderr saying what was wrong and how to get help, exit 2, touching nothing",
    async (argv) => {
      // No settings at all: a usage error is found before any setting is read.
      const run = await cli(undefined, argv, { env: {} });
      expect(run.code).toBe(EXIT.refused);
      expect(run.stdout).toBe("");
      expect(run.stderr).toMatch(/^hsm-backup: [^\n]+\. Run 'hsm-backup --help' for usage\.\n$/);
      expect(run.stderr).not.toMatch(/'--'|as in/);
      expect(run.stderr).not.toMatch(/Setting /);
    },
  );

  it("names the offending value", () => {
    expect(() => parseCommand(["list", "--top", "500"])).toThrow(
      /--top must be a whole number from 1 to 100, not "500"/,
    );
    expect(() => parseCommand(["restore", "1234567890123-0123abcd", "--key", "a", "--key", "b"])).toThrow(
      /--key is given more than once/,
    );
    expect(() => parseCommand(["backup", "--tpo"])).toThrow(UsageError);
    expect(() => parseCommand(["status", "nope"])).toThrow(/"nope" is not a backup or restore id/);
  });

  it("prints the help on stdout with exit 0, wherever --help is", async () => {
    for (const argv of [["--help"], ["-h"], ["help"], ["restore", "--help"], ["list", "--top", "0", "-h"]]) {
      const run = await cli(undefined, argv, { env: {} });
      expect(run).toEqual({ code: EXIT.ok, stdout: USAGE, stderr: "" });
    }
    expect(USAGE).toMatch(/status of an unknown id included/);
  });

  it("fails with exit 2 naming a missing or malformed setting", async () => {
    const missing = await cli(undefined, ["list"], { env: {} });
    expect(missing.code).toBe(EXIT.refused);
    expect(missing.stdout).toBe("");
    expect(missing.stderr).toMatch(/^hsm-backup: Setting MANAGED_HSM_URLS: is required/);

    const env = {
      MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
      BackupStorage: "UseDevelopmentStorage=true",
      SAS_TTL_MINUTES: "1",
    };
    const malformed = await cli(undefined, ["backup", "--json"], { env });
    expect(malformed).toMatchObject({ code: EXIT.refused, stdout: "" });
    expect(malformed.stderr).toMatch(/Setting SAS_TTL_MINUTES: "1" is not a whole number from 5 to 1440/);
  });

  it("accepts and refuses exactly what the HTTP API does", async () => {
    const accepts = (f: () => unknown) => {
      try {
        f();
        return true;
      } catch {
        return false;
      }
    };
    const lists: [string, string][] = [
      ["hsm", "contoso"],
      ["hsm", "loopback-8443"],
      ["hsm", "a".repeat(63)],
      ["hsm", "a".repeat(64)],
      ["hsm", "a_b"],
      ["hsm", "a.b"],
      ["status", "Succeeded"],
      ["status", "Canceled"],
      ["status", "failed"],
      ["status", "Done"],
      ["top", "1"],
      ["top", "100"],
      ["top", "007"],
      ["top", "0"],
      ["top", "101"],
      ["top", "-1"],
      ["top", "2.5"],
      ["top", " 5"],
    ];
    for (const [name, value] of lists) {
      const cliFlag = accepts(() => parseCommand(["list", `--${name}`, value]));
      const http = accepts(() => listQuery(get(`/api/backups?${name}=${encodeURIComponent(value)}`)));
      expect(cliFlag, `list --${name} "${value}"`).toBe(http);
    }
    const id = "8235123456789-0123abcd";
    const restores: [string, string | undefined][] = [
      [id, undefined],
      [id, "tokens-ec"],
      [id, "A-1"],
      [id, "k".repeat(127)],
      [id, "k".repeat(128)],
      [id, "a_b"],
      [id, "a.b"],
      [id, "ключ"],
      ["8235123456789-0123ABCD", undefined],
      ["823512345678-0123abcd", undefined],
      [`${id} `, undefined],
      [`${id}x`, undefined],
    ];
    for (const [backupId, keyName] of restores) {
      const cliArgs = accepts(() =>
        parseCommand(["restore", backupId, ...(keyName !== undefined ? [`--key=${keyName}`] : [])]),
      );
      let http = true;
      await restoreRequest(postJson("/api/restores", { backupId, keyName })).catch(() => (http = false));
      expect(cliArgs, `restore "${backupId}" --key "${keyName}"`).toBe(http);
    }
  });
});

describe("hsm-backup against Azurite and the HSM emulator", () => {
  let app: TestApp | undefined;
  afterEach(async () => {
    await app?.stop();
    app = undefined;
  });

  async function start(options?: TestAppOptions): Promise<TestApp> {
    app = await startTestApp(options);
    return app;
  }

  /** A Succeeded backup of the first HSM, taken through the CLI. */
  async function backupNow(app: TestApp): Promise<any> {
    const run = await cli(app, ["backup", "--json"]);
    expect(run.code, run.stderr).toBe(EXIT.ok);
    const [record] = JSON.parse(run.stdout);
    expect(record).toMatchObject({ status: "Succeeded", trigger: "cli" });
    expect(record.requestedBy).toMatch(/^cli \S+/);
    return record;
  }

  it("backs up every HSM with exit 0, and list --json shows the backup as GET /api/backups does", async () => {
    const app = await start({ hsmCount: 2 });
    const backup = await cli(app, ["backup"]);
    expect(backup.code, backup.stderr).toBe(EXIT.ok);
    // Not a terminal: milestones as plain lines, no escape codes.
    expect(backup.stderr).toMatch(/^(HSM \S+: backup job (?:[0-9a-f]{32} started|Succeeded after \d+s)\n){4}$/);
    const lines = backup.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+HSM\s+STATUS\s+STARTED\s+DURATION\s+VERIFIED\s+FOLDER$/);
    expect(lines).toHaveLength(3);
    for (const hsm of app.deps.config.hsms) {
      expect(backup.stdout).toMatch(
        new RegExp(
          `^\\d{13}-[0-9a-f]{8}  ${hsm.name}\\s+Succeeded  \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ  \\d+s\\s+Passed\\s+mhsm-testhsm\\d-\\d{16}$`,
          "m",
        ),
      );
    }

    const list = await cli(app, ["list", "--json"]);
    expect(list.code).toBe(EXIT.ok);
    expect(list.stderr).toBe("");
    const page = JSON.parse(list.stdout);
    expect(page.items).toHaveLength(2);
    expect(page.items.map((r: any) => r.trigger)).toEqual(["cli", "cli"]);
    expect(page.items.map((r: any) => r.status)).toEqual(["Succeeded", "Succeeded"]);
    expect(page).toEqual(bodyOf(await listBackups(get("/api/backups"), app.context(), app.deps)));

    const hsm = app.deps.config.hsms[1]!.name;
    const one = JSON.parse(
      (await cli(app, ["list", "--json", "--hsm", hsm, "--status", "Succeeded", "--top", "1"])).stdout,
    );
    expect(one.items).toHaveLength(1);
    expect(one.items[0].hsmName).toBe(hsm);
    expect(one.continuationToken).toBeUndefined();

    const paged = await cli(app, ["list", "--top", "1"]);
    expect(paged.stdout.trimEnd().split("\n")).toHaveLength(2);
    const token = /^More: add --continuation-token (\S+)$/m.exec(paged.stderr)?.[1];
    expect(token).toBeDefined();
    const next = JSON.parse((await cli(app, ["list", "--json", "--top", "1", "--continuation-token", token!])).stdout);
    expect(next.items).toHaveLength(1);
    expect(paged.stdout).not.toContain(next.items[0].id);

    const none = await cli(app, ["list", "--status", "Failed"]);
    expect(none).toEqual({ code: EXIT.ok, stdout: "", stderr: "No backups found.\n" });
  });

  it("exits 1 and names the HSM whose backup failed; the healthy one is backed up", async () => {
    const app = await start({ hsmCount: 2 });
    app.emulators[1]!.faults.failNextJob("backup", {
      code: "StorageUnavailable",
      message: "the HSM could not write the backup",
    });
    const run = await cli(app, ["backup"]);
    expect(run.code).toBe(EXIT.failed);
    const [good, bad] = app.deps.config.hsms;
    expect(run.stderr).toMatch(
      new RegExp(
        `Backup did not succeed for 1 of 2 HSM\\(s\\): ${bad!.name} \\(Failed StorageUnavailable: .*could not write the backup`,
      ),
    );
    expect(run.stdout).toMatch(new RegExp(`  ${good!.name}\\s+Succeeded `));
    expect(run.stdout).toMatch(new RegExp(`  ${bad!.name}\\s+Failed `));

    const json = await cli(app, ["backup", "--json"]);
    expect(json.code).toBe(EXIT.ok); // the fault was for one job only
    expect(JSON.parse(json.stdout)).toHaveLength(2);
  });

  it("shows progress on a terminal only, never with --json, and the lib's info lines only with --verbose", async () => {
    const app = await start();
    const name = app.deps.config.hsms[0]!.name;

    const tty = await cli(app, ["backup"], { isTTY: true });
    expect(tty.code).toBe(EXIT.ok);
    expect(tty.stderr).toMatch(
      new RegExp(`\\r\\x1b\\[2KBacking up 1 of 1 HSM\\(s\\), \\d+s: ${name} (Starting|Running)`),
    );
    expect(tty.stderr).toMatch(new RegExp(`HSM ${name}: backup job Succeeded after \\d+s\\n`));
    expect(tty.stderr.endsWith("\r\x1b[2K"), "the progress line is cleared at the end").toBe(true);
    expect(tty.stdout).not.toMatch(PROGRESS);

    const pipe = await cli(app, ["backup"]);
    expect(pipe.code).toBe(EXIT.ok);
    expect(pipe.stderr).toMatch(
      new RegExp(`^HSM ${name}: backup job [0-9a-f]{32} started\\nHSM ${name}: backup job Succeeded after \\d+s\\n$`),
    );

    const json = await cli(app, ["backup", "--json"], { isTTY: true });
    expect(json.code).toBe(EXIT.ok);
    expect(json.stderr).toBe("");
    expect(JSON.parse(json.stdout)).toHaveLength(1);

    const verbose = await cli(app, ["backup", "--verbose"]);
    expect(verbose.stderr).toMatch(new RegExp(`^Backup of HSM ${name} started: job [0-9a-f]{32}, record `, "m"));
    expect(verbose.stderr).toMatch(/^MhsmBackupOutcome \{/m);
    expect(verbose.stderr).not.toMatch(/\r|\x1b\[|Backing up/);
  });

  it("refuses a full restore of a too-recent backup with exit 2, and restores the whole HSM after 30 minutes", async () => {
    const app = await start();
    const hsm = app.emulators[0]!;
    const keys = keyClient(app);
    for (const key of ["payments-rsa", "tokens-ec"]) await keys.createRsaKey(key);
    const backup = await backupNow(app);
    await deleteAndPurge(keys, "payments-rsa");

    // Off a terminal a full restore needs --confirm: refused, saying what to add, before anything happens.
    const unconfirmed = await cli(app, ["restore", backup.id]);
    expect(unconfirmed.code).toBe(EXIT.refused);
    expect(unconfirmed.stderr).toMatch(
      new RegExp(
        `^hsm-backup: a full restore must be confirmed: add --confirm ${backup.hsmName} .*Nothing was started\\.$`,
        "m",
      ),
    );
    const mistyped = await cli(app, ["restore", backup.id], { typed: "some-other-hsm" });
    expect(mistyped.code).toBe(EXIT.refused);
    expect(mistyped.prompts).toEqual([`Type the HSM name (${backup.hsmName}) to confirm the FULL restore: `]);
    expect(mistyped.stderr).toMatch(/^hsm-backup: Confirmation names another HSM: confirm is "some-other-hsm"/m);
    expect(await app.deps.catalog.list("restore", { top: 5 })).toEqual({ items: [] });

    const tooSoon = await cli(app, ["restore", backup.id, "--confirm", backup.hsmName]);
    expect(tooSoon.code).toBe(EXIT.refused);
    expect(tooSoon.stdout).toBe("");
    expect(tooSoon.stderr).toMatch(
      new RegExp(
        `^WARNING: FULL restore of HSM ${backup.hsmName} from backup ${backup.id} .*every key in the HSM is replaced`,
        "m",
      ),
    );
    expect(tooSoon.stderr).toMatch(
      /^hsm-backup: Backup too recent for a full restore: Managed HSM requires a full backup to have completed at least 30 minutes before a full restore\..* retry after \d{4}-/m,
    );
    expect(hsm.requests.filter((r) => r.path === "/restore")).toHaveLength(0);

    app.clock.advance(31 * 60_000);
    hsm.faults.setJobDurationMs(300);
    // On a terminal the person types the name.
    const run = await cli(app, ["restore", backup.id], { isTTY: true, typed: backup.hsmName });
    expect(run.code, run.stderr).toBe(EXIT.ok);
    expect(run.stderr).toMatch(
      new RegExp(`\\r\\x1b\\[2KFULL restore \\d{13}-[0-9a-f]{8} on HSM ${backup.hsmName}: Running \\d+s`),
    );
    expect(run.stderr.endsWith("\r\x1b[2K")).toBe(true);
    const warning = run.stderr.indexOf("WARNING: FULL restore");
    expect(warning).toBeGreaterThanOrEqual(0);
    expect(warning).toBeLessThan(
      run.stderr.indexOf(`FULL restore of HSM ${backup.hsmName} started from backup ${backup.id}`),
    );
    expect(run.stdout).toMatch(/^Restore \d{13}-[0-9a-f]{8}  Succeeded\n/);
    expect(run.stdout).toMatch(/^  Scope\s+full \(every key\)$/m);
    expect(await liveKeyId(keys, "payments-rsa")).toBeDefined();
    // Who asked: the identity the CLI's credential signed in as (here the local managed identity).
    const [recorded] = (await app.deps.catalog.list("restore", { top: 1 })).items;
    expect(recorded!.requestedBy).toMatch(
      new RegExp(`^cli app [0-9a-f-]{36} \\(oid ${inject("identityPrincipalId")}\\)$`),
    );
  });

  it("restores one key and waits for it: exit 0, the key is back, no wipe warning", async () => {
    const app = await start();
    const keys = keyClient(app);
    await keys.createRsaKey("payments-rsa");
    await keys.createEcKey("tokens-ec");
    const backup = await backupNow(app);
    await deleteAndPurge(keys, "tokens-ec");
    await keys.createRsaKey("unrelated-new-key");

    const run = await cli(app, ["restore", backup.id, "--key", "tokens-ec", "--json"], { isTTY: true });
    expect(run.code, run.stderr).toBe(EXIT.ok);
    const record = JSON.parse(run.stdout);
    expect(record).toMatchObject({
      status: "Succeeded",
      keyName: "tokens-ec",
      backupId: backup.id,
      folderUri: backup.folderUri,
    });
    expect(record.statusDetails).toMatch(/Number of successful key versions restored: 1/);
    expect(run.stderr).not.toMatch(/WARNING/);
    expect(run.stderr).not.toMatch(/\r|\x1b\[/);
    expect((await keys.getKey("tokens-ec")).keyType).toBe("EC-HSM");
    expect(await liveKeyId(keys, "unrelated-new-key")).toBeDefined();

    const status = await cli(app, ["status", record.id, "--json"]);
    expect(status.code).toBe(EXIT.ok);
    expect(JSON.parse(status.stdout)).toEqual(record);
  });

  it("restore --no-wait returns at once; status exits 3 while it runs, then 0", async () => {
    const app = await start();
    const hsm = app.emulators[0]!;
    hsm.keys.create("tokens-ec");
    const backup = await backupNow(app);
    hsm.faults.setJobDurationMs(1500);
    hsm.keys.delete("tokens-ec");
    hsm.keys.purge("tokens-ec");

    const started = await cli(app, ["restore", backup.id, "--key", "tokens-ec", "--no-wait", "--json"]);
    expect(started.code, started.stderr).toBe(EXIT.ok);
    const record = JSON.parse(started.stdout);
    expect(record).toMatchObject({ status: "Running", keyName: "tokens-ec" });
    expect(started.stderr).toContain(`follow it with: hsm-backup status ${record.id}`);

    const running = await cli(app, ["status", record.id]);
    expect(running.code).toBe(EXIT.running);
    expect(running.stdout).toMatch(new RegExp(`^Restore ${record.id}  Running\\n`));

    let final: { code: number; stdout: string } = running;
    for (let i = 0; i < 100 && final.code === EXIT.running; i++) {
      await new Promise((r) => setTimeout(r, 50));
      final = await cli(app, ["status", record.id]);
    }
    expect(final.code).toBe(EXIT.ok);
    expect(final.stdout).toMatch(/^  Duration\s+\d+s$/m);
  });

  it("exits 1 when the restore job fails, with the HSM's error", async () => {
    const app = await start();
    const hsm = app.emulators[0]!;
    hsm.keys.create("tokens-ec");
    const backup = await backupNow(app);
    hsm.faults.failNextJob("restore", { code: "KeyRestoreFailed", message: "the emulator refused this key" });

    const run = await cli(app, ["restore", backup.id, "--key", "tokens-ec"]);
    expect(run.code).toBe(EXIT.failed);
    expect(run.stdout).toMatch(/  Failed\n/);
    expect(run.stdout).toMatch(/^  Error\s+KeyRestoreFailed: .*the emulator refused this key/m);
    const id = /^Restore (\S+)/.exec(run.stdout)![1]!;
    expect((await cli(app, ["status", id])).code).toBe(EXIT.failed);
  });

  it("exits 2 for an unknown restore or backup id, and for a backup that cannot be restored", async () => {
    const app = await start();
    const unknownRestore = await cli(app, ["status", "8235123456789-0123abcd"]);
    expect(unknownRestore).toEqual({
      code: EXIT.refused,
      stdout: "",
      stderr: "hsm-backup: Not found: No backup or restore with id 8235123456789-0123abcd is recorded.\n",
    });

    const unknownBackup = await cli(app, ["restore", "8235123456789-0123abcd", "--json"]);
    expect(unknownBackup).toEqual({
      code: EXIT.refused,
      stdout: "",
      stderr: "hsm-backup: Backup not found: No backup with id 8235123456789-0123abcd is recorded.\n",
    });

    app.emulators[0]!.faults.failNextJob("backup");
    const failed = JSON.parse((await cli(app, ["backup", "--json"])).stdout)[0];
    const notRestorable = await cli(app, ["restore", failed.id, "--key", "k"]);
    expect(notRestorable.code).toBe(EXIT.refused);
    expect(notRestorable.stderr).toMatch(
      /^hsm-backup: Backup cannot be restored: .* is Failed; only a Succeeded backup can be restored\.$/m,
    );

    const disabled = await cli(undefined, ["restore", failed.id, "--key", "k"], {
      env: { ...app.env, RESTORE_ENABLED: "false" } as Record<string, string>,
    });
    expect(disabled.code).toBe(EXIT.refused);
    expect(disabled.stderr).toMatch(/^hsm-backup: Restore is disabled: .*RESTORE_ENABLED=false/m);
  });
});

describe("the hsm-backup bin as a child process", () => {
  const root = fileURLToPath(new URL("../../", import.meta.url));
  let out: string;
  let bin: string;
  let app: TestApp;

  beforeAll(async () => {
    // Bundles the app and the CLI exactly as `npm run build` does, into a temporary tree laid out
    // like the project, so the run neither needs nor disturbs the project's own build.
    out = await mkdtemp(join(tmpdir(), "hsm-backup-cli-"));
    await buildBundle(join(out, "dist"));
    const pkg = JSON.parse(await readFile(join(root, "package.json"), "utf8")) as { bin?: Record<string, string> };
    const target = pkg.bin?.["hsm-backup"];
    expect(target, "package.json bin.hsm-backup").toBe("dist/cli/hsm-backup.js");
    const compiled = join(out, target!);
    await access(compiled);
    // What npm does for a bin: a symlink to the file, made executable; the shebang picks node.
    await chmod(compiled, 0o755);
    bin = join(out, "node_modules-bin", "hsm-backup");
    await mkdir(dirname(bin));
    await symlink(relative(dirname(bin), compiled), bin);
    // A child process gets settings only, no transport: it reaches its emulator the `npm run local`
    // way, plain http on 127.0.0.1, where the HSM is named by its port on both sides.
    app = await startTestApp({ hsmAccess: "loopback-http" });
  }, 180_000);

  afterAll(async () => {
    await app?.stop();
    if (out) await rm(out, { recursive: true, force: true });
  });

  it("runs a backup through the symlinked bin: exit 0, a table on stdout, no progress on a piped stderr", async () => {
    const env = { ...process.env, ...Object.fromEntries(Object.entries(app.env).filter(([, v]) => v !== undefined)) };
    const run = await exec(bin, ["backup"], env);
    expect(run.code, run.stderr).toBe(EXIT.ok);
    const hsm = app.deps.config.hsms[0]!.name;
    expect(hsm).toBe(app.emulators[0]!.name);
    expect(run.stdout).toMatch(new RegExp(`  ${hsm}\\s+Succeeded\\s.*  mhsm-${hsm}-\\d{16}$`, "m"));
    // A pipe gets plain milestone lines, and nothing from @azure/functions or any other library.
    expect(run.stderr).toMatch(
      /^HSM \S+: backup job [0-9a-f]{32} started\nHSM \S+: backup job Succeeded after \d+s\n$/,
    );
    const page = await app.deps.catalog.list("backup", { top: 10 });
    expect(page.items.map((r) => [r.status, r.trigger])).toEqual([["Succeeded", "cli"]]);

    // The local http mode names the HSM as its folders do, so filtering by that name finds the backup.
    const listed = await exec(bin, ["list", "--hsm", hsm, "--json"], env);
    expect(listed.code, listed.stderr).toBe(EXIT.ok);
    expect(JSON.parse(listed.stdout).items.map((r: { folderUri: string }) => r.folderUri.split("/").pop())).toEqual([
      expect.stringMatching(new RegExp(`^mhsm-${hsm}-\\d{16}$`)),
    ]);

    const help = await exec(bin, ["--help"], env);
    expect(help).toEqual({ code: EXIT.ok, stdout: USAGE, stderr: "" });
  }, 60_000);
});

function exec(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}
