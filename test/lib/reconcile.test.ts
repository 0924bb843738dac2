/**
 * Reconcile: the records a bad night left open are settled, deadlines applied, corrections made
 * explicit, and backups the HSM wrote without a record are adopted only when the HSM vouches for
 * them. Real Azurite, the HSM emulator (with its pre-restore check) and fault proxies.
 */
import { afterEach, describe, expect, it } from "vitest";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { reconcileTimer } from "../../src/handlers/reconcile.js";
import { Catalog, type BackupRecord } from "../../src/lib/catalog.js";
import { staleStartMs } from "../../src/lib/config.js";
import { safeLogger } from "../../src/lib/logger.js";
import { reconcile } from "../../src/lib/reconcile.js";
import { backupAll } from "../../src/lib/backup.js";
import { jobStartRequests, onTime, type TestApp } from "../support/app.js";
import { events, Night } from "../support/bad-night.js";

const night = new Night();
afterEach(() => night.stopAll());

async function backups(app: TestApp): Promise<BackupRecord[]> {
  return (await app.deps.catalog.list("backup", { top: 100 })).items;
}

/** Starts a backup on the HSM behind the app's back (someone else's, or one whose record was lost). */
async function unrecordedBackup(app: TestApp, index = 0): Promise<string> {
  await app.deps.prepare();
  const sas = await app.deps.storage.containerSas(app.container, "backup", 10);
  const poller = await app.deps
    .hsmClient(app.deps.config.hsms[index]!)
    .beginBackup(app.deps.storage.containerUrl(app.container), sas.token);
  const final = await poller.pollUntilDone();
  return final.folderUri!;
}

describe("reconcile", () => {
  it("adopts the folder of a start whose answer was lost, once the HSM's pre-restore check accepts it", async () => {
    const { emulator, proxy } = await night.emulatorBehindProxy();
    const { app } = await night.app([proxy.url]);
    // The HSM starts the job, its answer never arrives (the challenge probe was the pre-backup check's).
    proxy.inject({ kind: "lostResponse" }, { method: "POST", path: /^\/backup$/, times: 1 });
    await expect(nightlyBackup(onTime, app.context("nightlyBackup"), app.deps)).rejects.toThrow(
      /Unknown: Outcome not yet known/,
    );
    const [open] = await backups(app);
    expect(open).toMatchObject({ status: "Starting" });
    app.clock.advance(staleStartMs(app.deps.config) + 60_000);

    // Until the job has ended the HSM refuses the check: the record waits for a later run.
    let report = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    for (let run = 0; run < 50 && report.changed.length === 0; run++) {
      expect((await backups(app))[0]!.status).toBe("Starting");
      await new Promise((r) => setTimeout(r, 100));
      report = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    }
    expect(report.changed).toMatchObject([{ kind: "backup", recordId: open!.id, from: "Starting", to: "Succeeded" }]);
    const [adopted] = await backups(app);
    expect(adopted).toMatchObject({ id: open!.id, status: "Succeeded", origin: "discovered" });
    expect(adopted!.folderUri).toMatch(new RegExp(`/${app.container}/mhsm-${emulator.name}-\\d{16}$`));
    expect(
      emulator.requests.filter((r) => r.method === "PUT" && r.path === "/prerestore" && r.status === 202),
    ).toHaveLength(1);
    expect(events(app.logs, "MhsmBackupOutcome")).toMatchObject([
      { recordId: open!.id, status: "Succeeded", origin: "discovered" },
    ]);
  });

  it("records a backup found in the container without any record, once, and never one the HSM's check refuses", async () => {
    const emulator = await night.emulator();
    const { app } = await night.app([emulator.url]);
    const folder = await unrecordedBackup(app);
    app.clock.advance(11 * 60_000);

    const log = safeLogger(app.context("reconcile"));
    const first = await reconcile(app.deps, log);
    expect(first.discovered).toMatchObject([
      { folderUri: folder, status: "Succeeded", origin: "discovered", trigger: "reconcile" },
    ]);
    const second = await reconcile(app.deps, log);
    expect(second.discovered).toEqual([]);
    expect((await backups(app)).map((r) => r.folderUri)).toEqual([folder]);

    // A folder the HSM's check refuses stays unadopted, with the reason.
    const other = await unrecordedBackup(app);
    app.clock.advance(11 * 60_000);
    emulator.faults.failNextJob("restore", { code: "InvalidBackup", message: "Invalid backup provided" });
    const third = await reconcile(app.deps, log);
    expect(third.discovered).toEqual([]);
    expect(third.unadopted).toMatchObject([
      { folderUri: other, reason: expect.stringMatching(/pre-restore check refused it: .*Invalid backup provided/) },
    ]);
  });

  it("does not adopt without the HSM's own check: before api-version 7.6 a found folder is reported, not recorded", async () => {
    const emulator = await night.emulator();
    const { app } = await night.app([emulator.url], { env: { HSM_API_VERSION: "7.5" } });
    const folder = await unrecordedBackup(app);
    app.clock.advance(11 * 60_000);
    const report = await reconcile(app.deps, safeLogger(app.context()));
    expect(report.discovered).toEqual([]);
    expect(report.unadopted).toMatchObject([
      { folderUri: folder, reason: expect.stringMatching(/needs HSM_API_VERSION 7.6/) },
    ]);
    expect(await backups(app)).toEqual([]);
  });

  it("applies the job deadline (TimedOut, failing the timer run) and corrects it, explicitly, when the HSM later reports the end", async () => {
    const emulator = await night.emulator({ jobDurationMs: 1500 });
    const { app } = await night.app([emulator.url]);
    await app.deps.prepare();
    const sas = await app.deps.storage.containerSas(app.container, "backup", 10);
    const poller = await app.deps
      .hsmClient(app.deps.config.hsms[0]!)
      .beginBackup(app.deps.storage.containerUrl(app.container), sas.token);
    const hsm = app.deps.config.hsms[0]!;
    const at = app.clock.now();
    const { record } = await app.deps.catalog.insert("backup", {
      id: Catalog.newId(at),
      hsmName: hsm.name,
      hsmUrl: hsm.url,
      status: "Running",
      jobId: poller.jobId,
      startedAt: at.toISOString(),
      deadlineAt: new Date(at.getTime() - 1000).toISOString(),
      trigger: "timer",
    });

    await expect(reconcileTimer(onTime, app.context("reconcile"), app.deps)).rejects.toThrow(
      new RegExp(`backup ${record.id} of HSM ${hsm.name}: Running \\(job ${poller.jobId}\\) → TimedOut JobTimeout`),
    );
    await poller.pollUntilDone();
    const report = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    expect(report.changed).toMatchObject([{ recordId: record.id, from: "TimedOut JobTimeout", to: "Succeeded" }]);
    const [settled] = await backups(app);
    expect(settled).toMatchObject({ status: "Succeeded", correctedFrom: "TimedOut JobTimeout", jobId: poller.jobId });
    expect(settled!.errorCode).toBeUndefined();
    expect(events(app.logs, "MhsmBackupOutcome").map((e) => [e.status, e.correctionOf])).toEqual([
      ["TimedOut", undefined],
      ["Succeeded", "TimedOut JobTimeout"],
    ]);
  });

  it("keeps each HSM its own failure domain: a hung HSM leaves its record open and another HSM's record is settled", async () => {
    const hung = await night.hostile();
    hung.on("GET", /^\/backup\/[^/]+\/pending$/, "hang");
    const good = await night.emulator();
    const { app } = await night.app([hung.url, good.url], { deps: { hsmClientOptions: { requestTimeoutMs: 300 } } });
    await app.deps.prepare();
    const at = app.clock.now();
    const [h, g] = app.deps.config.hsms as [{ name: string; url: string }, { name: string; url: string }];
    const sas = await app.deps.storage.containerSas(app.container, "backup", 10);
    const poller = await app.deps.hsmClient(g).beginBackup(app.deps.storage.containerUrl(app.container), sas.token);
    await poller.pollUntilDone();
    for (const [hsm, jobId] of [
      [h, "0123456789abcdef0123456789abcdef"],
      [g, poller.jobId],
    ] as const) {
      await app.deps.catalog.insert("backup", {
        id: Catalog.newId(at),
        hsmName: hsm.name,
        hsmUrl: hsm.url,
        status: "Running",
        jobId,
        startedAt: at.toISOString(),
        trigger: "timer",
      });
    }

    const report = await reconcile(app.deps, safeLogger(app.context()));
    expect(report.changed).toMatchObject([{ hsm: g.name, to: "Succeeded" }]);
    expect(report.errors).toEqual([]);
    const statuses = Object.fromEntries((await backups(app)).map((r) => [r.hsmName, r.status]));
    expect(statuses).toEqual({ [h.name]: "Running", [g.name]: "Succeeded" });
    // One backup start (the test's own); the settled backup then gets the verification no run made.
    expect(
      jobStartRequests(good)
        .filter((r) => r.headers.authorization)
        .map((r) => r.path),
    ).toEqual(["/backup", "/prerestore"]);
    expect(report.verified).toMatchObject([{ hsm: g.name, verification: "Passed" }]);
  });
});

describe("reconcile and the nightly run under a failing catalog or status outage (found by npm run soak)", () => {
  it("does not adopt a TimedOut backup's folder as an orphan: its own correction names it, and there is one record", async () => {
    const { emulator, proxy } = await night.emulatorBehindProxy({ jobDurationMs: 50 });
    let app!: TestApp;
    // Waiting costs nothing: the app's clock moves by what it asked to wait.
    // eslint-disable-next-line prefer-const -- app is declared before the closures that read it and assigned once they exist
    ({ app } = await night.app([proxy.url], {
      // The backup job's status outage; with the pre-flight on, it would take the pre-backup check's reads.
      env: { JOB_TIMEOUT_MINUTES: "10", PREFLIGHT: "false" },
      deps: {
        hsmClientOptions: {
          requestTimeoutMs: 1000,
          maxStatusAttempts: 1,
          defaultPollIntervalMs: 60_000,
          delay: async (ms) => app.clock.advance(ms),
        },
      },
    }));
    proxy.chaos({ status: 1 }, { method: "GET", path: /^\/backup\/[^/]+\/pending$/, status: 503 });
    const [result] = await backupAll(app.deps, safeLogger(app.context()), { trigger: "timer" });
    expect(result).toMatchObject({ outcome: "TimedOut" });

    await expect.poll(() => emulator.jobs().map((j) => j.status)).toEqual(["Succeeded"]);
    app.clock.advance(20 * 60_000);
    // The job did end, but its status still cannot be read: its folder is there, and is not an orphan.
    const during = await reconcile(app.deps, safeLogger(app.context()));
    expect(during.discovered).toEqual([]);

    proxy.clear();
    const after = await reconcile(app.deps, safeLogger(app.context()));
    expect(after.changed).toMatchObject([
      { recordId: result!.record!.id, from: "TimedOut JobTimeout", to: "Succeeded" },
    ]);
    const all = await backups(app);
    expect(all).toHaveLength(1);
    expect(all[0]!.folderUri).toMatch(new RegExp(`/mhsm-${emulator.name}-\\d{16}$`));
  });

  it("a catalog read that hangs once does not cost a healthy HSM its backup", async () => {
    const hsm = await night.emulator();
    const { app, table } = await night.app([hsm.url], { tableProxy: true, env: { HSM_REQUEST_TIMEOUT_SECONDS: "5" } });
    await app.deps.prepare();
    // The first query of the night (settling this HSM's earlier records) never answers.
    table!.inject(
      { kind: "hang" },
      { method: "GET", path: new RegExp(`^/devstoreaccount1/${app.table}\\(\\)$`), times: 1 },
    );
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    expect((await backups(app)).map((r) => r.status)).toEqual(["Succeeded"]);
    expect(table!.stats().hang).toBe(1);
  });
});

describe("verification of backups no run waited for (POST /api/backups)", () => {
  /** A backup started as POST /api/backups starts one: recorded Running, nobody waits for its end. */
  async function startedOnly(app: TestApp): Promise<BackupRecord> {
    const [result] = await backupAll(app.deps, safeLogger(app.context("postBackup")), {
      trigger: "http",
      waitForOutcome: false,
    });
    expect(result).toMatchObject({ outcome: "Pending", record: { status: "Running" } });
    await new Promise((r) => setTimeout(r, 300)); // the emulator's job (100 ms) ends
    return result!.record!;
  }
  const preRestores = (emulator: { requests: { method: string; path: string; status?: number }[] }) =>
    emulator.requests.filter((r) => r.method === "PUT" && r.path === "/prerestore" && r.status === 202);

  it("settles it and runs the HSM's pre-restore check on its folder in the same run, once", async () => {
    const emulator = await night.emulator();
    const { app } = await night.app([emulator.url]);
    const started = await startedOnly(app);
    expect(preRestores(emulator)).toHaveLength(0);

    const report = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    expect(report.changed).toMatchObject([
      { recordId: started.id, from: expect.stringMatching(/^Running/), to: "Succeeded" },
    ]);
    expect(report.verified).toEqual([{ hsm: emulator.name, recordId: started.id, verification: "Passed" }]);
    const [record] = await backups(app);
    expect(record).toMatchObject({ id: started.id, status: "Succeeded", verification: "Passed" });
    expect(Date.parse(record!.verifiedAt!)).toBeGreaterThanOrEqual(Date.parse(record!.endedAt!));
    expect(preRestores(emulator)).toHaveLength(1);
    expect(preRestores(emulator)[0]).toBeDefined();

    const again = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    expect(again.verified).toEqual([]);
    expect(preRestores(emulator)).toHaveLength(1);
  });

  it("records Failed with the HSM's words when the check refuses the folder, and logs it as an error", async () => {
    const emulator = await night.emulator();
    const { app } = await night.app([emulator.url]);
    const started = await startedOnly(app);
    emulator.faults.failNextJob("restore", { code: "InvalidBackup", message: "The backup folder is incomplete" });
    const report = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    expect(report.verified).toEqual([{ hsm: emulator.name, recordId: started.id, verification: "Failed" }]);
    const [record] = await backups(app);
    expect(record).toMatchObject({ status: "Succeeded", verification: "Failed" });
    expect(record!.verificationMessage).toMatch(/refused it: .*The backup folder is incomplete/);
    expect(app.logs.some((l) => /^error: Reconcile: verified backup .* after the fact: Failed/.test(l))).toBe(true);
  });

  it("writes nothing when the HSM gives no verdict now, and verifies on a later run", async () => {
    const { emulator, proxy } = await night.emulatorBehindProxy();
    const { app } = await night.app([proxy.url]);
    const started = await startedOnly(app);
    // Refused at the door (not the HSM's verdict on the folder): e.g. the role is not yet granted.
    proxy.inject(
      {
        kind: "status",
        status: 403,
        contentType: "application/json",
        body: JSON.stringify({ error: { code: "Forbidden", message: "Caller is not authorized" } }),
      },
      { method: "PUT", path: /^\/prerestore$/, times: 1 },
    );
    const first = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    expect(first.verified).toEqual([]);
    expect(first.errors.join("\n")).toMatch(new RegExp(`backup record ${started.id}: not verified yet`));
    expect((await backups(app))[0]!.verification).toBeUndefined();

    proxy.clear();
    const second = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    expect(second.verified).toMatchObject([{ recordId: started.id, verification: "Passed" }]);
    expect(preRestores(emulator)).toHaveLength(1);
  });

  it("starts no check of its own within 15 minutes of a scheduled backup, before or after the slot", async () => {
    const emulator = await night.emulator();
    const soon = new Date(Date.now() + 5 * 60_000);
    const { app } = await night.app([emulator.url], {
      env: { BACKUP_SCHEDULE: `0 ${soon.getUTCMinutes()} ${soon.getUTCHours()} * * *` },
    });
    const started = await startedOnly(app);
    const before = await reconcile(app.deps, safeLogger(app.context("reconcile")));
    expect(before.changed).toMatchObject([{ recordId: started.id, to: "Succeeded" }]);
    expect(before.verified).toEqual([]);
    // Ten minutes after the slot: still held back (the timer's backup may be starting its jobs).
    app.clock.advance(15 * 60_000);
    expect((await reconcile(app.deps, safeLogger(app.context("reconcile")))).verified).toEqual([]);
    expect(preRestores(emulator)).toHaveLength(0);
    // Sixteen minutes after it: the check runs.
    app.clock.advance(6 * 60_000);
    expect((await reconcile(app.deps, safeLogger(app.context("reconcile")))).verified).toMatchObject([
      { recordId: started.id, verification: "Passed" },
    ]);
    expect(preRestores(emulator)).toHaveLength(1);
  });
});
