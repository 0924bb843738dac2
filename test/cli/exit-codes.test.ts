/**
 * hsm-backup's exit codes on the worst night (issue 6): an HSM or the backup storage out of reach is
 * exit 4 (the outcome is not known, or nothing was started) with a short reason on stderr, never a
 * stack; a clean catalog reconciles to exit 0 with a JSON report. Real Azurite and HSM emulator.
 */
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { afterEach, describe, expect, inject, it } from "vitest";
import { EXIT, USAGE } from "../../src/cli/hsm-backup.js";
import { startTestApp, type TestApp } from "../support/app.js";
import { cli, type Run } from "../support/cli.js";
import { withEndpoint } from "../support/fault-proxy.js";
import { listenOnLoopback, type ListeningServer } from "../support/loopback.js";

let app: TestApp | undefined;
afterEach(async () => {
  await app?.stop();
  app = undefined;
});

/** A loopback port that was just listened on and closed: connecting to it is refused. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function lines(text: string): string[] {
  return text.split("\n").filter((l) => l.length > 0);
}

describe("hsm-backup when an HSM cannot be reached", () => {
  it("backup exits 4 with a one-line reason naming the HSM", async () => {
    app = await startTestApp();
    const hsm = app.deps.config.hsms[0]!;
    await app.emulators[0]!.stop();

    const run = await cli(app, ["backup"]);
    expect(run.code).toBe(EXIT.error);
    const summary = lines(run.stderr).at(-1)!;
    expect(summary).toMatch(
      new RegExp(`^Backup did not succeed for 1 of 1 HSM\\(s\\): ${hsm.name} \\(Failed StartNotSent: `),
    );
    expect(summary).toContain(hsm.url);
    expect(summary).toMatch(/ECONNREFUSED/);
    expect(summary).toMatch(/nothing was started/);
    expect(run.stderr).not.toMatch(/^\s+at /m);
  });

  it("backup --json exits 4 and still prints one entry per HSM saying what happened to it, as the usage says", async () => {
    app = await startTestApp();
    await app.emulators[0]!.stop();

    const run = await cli(app, ["backup", "--json"]);
    expect(run.code).toBe(EXIT.error);
    expect(run.stderr).toMatch(/StartNotSent/);
    expect(USAGE).toMatch(/backup always\s+prints one entry per HSM/);
    expect(JSON.parse(run.stdout)).toMatchObject([
      { hsmName: app.deps.config.hsms[0]!.name, status: "Failed", errorCode: "StartNotSent" },
    ]);
  });

  it("restore --key exits 4 saying the restore was not sent", async () => {
    app = await startTestApp();
    app.emulators[0]!.keys.create("k");
    const backup = await cli(app, ["backup", "--json"]);
    expect(backup.code).toBe(EXIT.ok);
    const [record] = JSON.parse(backup.stdout);
    expect(record).toMatchObject({ status: "Succeeded" });
    await app.emulators[0]!.stop();

    const run = await cli(app, ["restore", record.id, "--key", "k"]);
    expect(run.code).toBe(EXIT.error);
    expect(run.stdout).toBe("");
    const reason = lines(run.stderr).find((l) => l.startsWith("hsm-backup: "));
    expect(reason).toMatch(/^hsm-backup: Restore not sent to Managed HSM: .*ECONNREFUSED.*nothing was started$/);
    expect(reason).toContain(app.deps.config.hsms[0]!.url);
    expect(run.stderr).toMatch(/^Check that restore with: hsm-backup status \d{13}-[0-9a-f]{8}$/m);
    expect(run.stderr).not.toMatch(/^\s+at /m);
  });
});

describe("hsm-backup when the backup storage cannot be reached", () => {
  it("list exits 4 with exactly one line naming the storage endpoint", async () => {
    const port = await closedPort();
    const unreachable = `http://127.0.0.1:${port}/devstoreaccount1`;
    const connectionString = withEndpoint(
      withEndpoint(inject("azuriteConnectionString"), "BlobEndpoint", unreachable),
      "TableEndpoint",
      unreachable,
    );
    const env = { MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net", BackupStorage: connectionString };

    const run = await cli(undefined, ["list"], { env });
    expect(run.code).toBe(EXIT.error);
    expect(run.stdout).toBe("");
    expect(lines(run.stderr)).toHaveLength(1);
    expect(run.stderr).toMatch(
      new RegExp(`^hsm-backup: backup storage at 127\\.0\\.0\\.1:${port} could not be reached[^\\n]*\\n$`),
    );
  });
});

describe("hsm-backup when the backup storage never answers", () => {
  let silent: ListeningServer | undefined;
  /** Requests the silent endpoint received (method and path), in order. */
  let received: string[] = [];
  afterEach(async () => {
    await silent?.close();
    silent = undefined;
    received = [];
  });

  /** Settings whose given storage endpoints accept every connection and request and answer none. */
  async function silentStorage(
    endpoints: readonly ("BlobEndpoint" | "TableEndpoint")[],
  ): Promise<Record<string, string>> {
    silent = await listenOnLoopback(
      createHttpServer((request) => void received.push(`${request.method} ${request.url?.split("?")[0]}`)),
    );
    let connectionString = inject("azuriteConnectionString");
    for (const endpoint of endpoints)
      connectionString = withEndpoint(connectionString, endpoint, `${silent.origin}/devstoreaccount1`);
    // HSM_REQUEST_TIMEOUT_SECONDS is "the deadline of every single call to an HSM or to storage".
    return {
      MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
      BackupStorage: connectionString,
      HSM_REQUEST_TIMEOUT_SECONDS: "5",
    };
  }

  function expectOneStorageLine(run: Run): void {
    expect(run.code).toBe(EXIT.error);
    expect(run.stdout).toBe("");
    expect(lines(run.stderr)).toHaveLength(1);
    const host = new URL(silent!.origin).host.replace(/\./g, "\\.");
    expect(run.stderr).toMatch(new RegExp(`^hsm-backup: backup storage at ${host} could not be reached`));
  }

  it("list exits 4 with exactly one line naming the storage endpoint once the calls time out", async () => {
    expectOneStorageLine(
      await cli(undefined, ["list"], { env: await silentStorage(["BlobEndpoint", "TableEndpoint"]) }),
    );
  });

  it("list exits 4 naming the storage endpoint when only the blob endpoint never answers (the catalog answers), within the test's 30 s", async () => {
    expectOneStorageLine(await cli(undefined, ["list"], { env: await silentStorage(["BlobEndpoint"]) }));
  });

  it("retries a catalog call that timed out before list gives up (storage calls are retried where safe)", async () => {
    const run = await cli(undefined, ["list"], { env: await silentStorage(["TableEndpoint"]) });
    expect(run.code).toBe(EXIT.error);
    expect(received.length, JSON.stringify(received)).toBeGreaterThan(1);
    expect(new Set(received).size).toBe(1);
  });
});

describe("hsm-backup with a malformed BackupStorage", () => {
  it("exits 2 naming the setting when an endpoint in the connection string is not a URL", async () => {
    const env = {
      MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
      BackupStorage: withEndpoint(inject("azuriteConnectionString"), "TableEndpoint", "http://[backup-internal"),
    };
    const run = await cli(undefined, ["list"], { env });
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(/^hsm-backup: Setting BackupStorage: /);
    expect(run.code).toBe(EXIT.refused);
  });
});

describe("hsm-backup reconcile", () => {
  it("exits 0 on a clean catalog and prints a JSON report of what it checked and changed", async () => {
    // The app names a loopback HSM "loopback-<port>"; the emulator writes folders under the same
    // name, as a real HSM does under its own, so reconcile's discovery really looks at them.
    const port = await closedPort();
    app = await startTestApp({ emulator: { port, name: `loopback-${port}` } });
    app.emulators[0]!.keys.create("k");
    const backup = await cli(app, ["backup", "--json"]);
    expect(backup.code).toBe(EXIT.ok);
    expect(JSON.parse(backup.stdout)[0].folderUri).toContain(`/mhsm-loopback-${port}-`);
    // Old enough for discovery to consider the folder the backup wrote: it is recorded, so it is not adopted again.
    app.clock.advance(20 * 60_000);

    const run = await cli(app, ["reconcile", "--json"]);
    expect(run.code).toBe(EXIT.ok);
    const report = JSON.parse(run.stdout);
    expect(Object.keys(report).sort()).toEqual(["changed", "checked", "discovered", "errors", "unadopted", "verified"]);
    // The CLI's backup waited for its end and verified it: nothing is left to verify either.
    expect(report).toEqual({ checked: 0, changed: [], discovered: [], unadopted: [], verified: [], errors: [] });
  });
});
