/**
 * The worst night, reproduced: hostile HSM answers, hangs, a failing catalog, a recycled worker.
 * Each test is one defect found by an adversarial review (issue 6), named after the behaviour that
 * must hold instead. Real Azurite, the real HSM emulator, a scripted hostile HSM stand-in and fault
 * proxies; the app's own code throughout.
 */
import { afterEach, describe, expect, it } from "vitest";
import { getBackup } from "../../src/handlers/backups.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { postRestore } from "../../src/handlers/restores.js";
import { backupAll } from "../../src/lib/backup.js";
import { Catalog, type BackupRecord } from "../../src/lib/catalog.js";
import { staleStartMs } from "../../src/lib/config.js";
import { safeLogger } from "../../src/lib/logger.js";
import { bodyOf, catalogEntities, get, jobStartRequests, onTime, postJson, type TestApp } from "../support/app.js";
import { events, Night } from "../support/bad-night.js";
import {
  folderName,
  hostile,
  jobStatus,
  keyVaultError,
  RETRY_AFTER_DAY,
  RETRY_AFTER_FAR_DATE,
  sasEcho,
  started,
  type SasEchoForm,
} from "../support/hostile-hsm.js";

const night = new Night();
afterEach(() => night.stopAll());

const STATUS = /^\/backup\/[^/]+\/pending$/;

async function backups(app: TestApp): Promise<BackupRecord[]> {
  return (await app.deps.catalog.list("backup", { top: 100 })).items;
}

function byHsm(records: readonly BackupRecord[], name: string): BackupRecord[] {
  return records.filter((r) => r.hsmName === name);
}

/** Authenticated backup starts the emulator accepted (not the pre-backup or pre-restore checks around them). */
function acceptedStarts(emulator: {
  requests: { method: string; path: string; status: number; headers: Record<string, string> }[];
}): number {
  return jobStartRequests(emulator as never).filter(
    (r) => r.headers.authorization && r.status === 202 && r.method === "POST" && r.path === "/backup",
  ).length;
}

describe("the worst night", () => {
  it("1. an unusable job id or an impossible time from one HSM never stops another HSM's backup, in this run or later ones", async () => {
    const bad = await night.hostile();
    bad.on("POST", "/backup", hostile.badJobIdStart("backup"));
    const odd = await night.hostile();
    let containerUrl = "";
    odd.on(
      "GET",
      STATUS,
      jobStatus("backup", () => ({
        status: "Succeeded",
        startTime: 1e15,
        endTime: 1e15,
        azureStorageBlobContainerUri: `${containerUrl}/${folderName(odd.name)}`,
      })),
    );
    const good = await night.emulator();
    const { app } = await night.app([bad.url, odd.url, good.url]);
    containerUrl = app.deps.storage.containerUrl(app.container);
    const [badName, oddName, goodName] = app.deps.config.hsms.map((h) => h.name) as [string, string, string];

    for (let run = 1; run <= 3; run++) {
      app.clock.advance(24 * 3_600_000); // one run per night: each its own schedule slot
      await expect(nightlyBackup(onTime, app.context("nightlyBackup"), app.deps)).rejects.toThrow(
        new RegExp(`1 of 3 HSM\\(s\\): ${badName} \\(Failed InvalidServiceResponse`),
      );
    }
    expect(acceptedStarts(good)).toBe(3);
    const all = await backups(app);
    expect(byHsm(all, goodName).map((r) => r.status)).toEqual(["Succeeded", "Succeeded", "Succeeded"]);
    for (const record of byHsm(all, badName)) {
      expect(record).toMatchObject({ status: "Failed", errorCode: "InvalidServiceResponse" });
      expect(record.errorMessage).toMatch(
        /"job-1" is not a Managed HSM job id.*a job may be running that cannot be followed/,
      );
    }
    // endTime 1e15 is no time at all: the outcome is kept, the impossible time is not.
    for (const record of byHsm(all, oddName)) {
      expect(record.status).toBe("Succeeded");
      expect(Date.parse(record.endedAt!)).toBeGreaterThan(Date.now() - 60_000);
      expect(Date.parse(record.endedAt!)).toBeLessThanOrEqual(app.clock.now().getTime());
    }

    // A record an older version left with such a job id is settled by a read, never a 500, and stops no run.
    const at = app.clock.now();
    const { record: legacy } = await app.deps.catalog.insert("backup", {
      id: Catalog.newId(at),
      hsmName: badName,
      hsmUrl: app.deps.config.hsms[0]!.url,
      status: "Running",
      jobId: "job-1",
      startedAt: at.toISOString(),
      trigger: "timer",
    });
    const read = await getBackup(get(`/api/backups/${legacy.id}`), app.context("getBackup"), app.deps);
    expect(read.status).toBe(200);
    expect(bodyOf(read)).toMatchObject({ status: "Failed", errorCode: "InvalidServiceResponse" });
    app.clock.advance(24 * 3_600_000);
    await expect(nightlyBackup(onTime, app.context("nightlyBackup"), app.deps)).rejects.toThrow(/1 of 3/);
    expect(acceptedStarts(good)).toBe(4);
  });

  it("2. a status read that never answers, or answers a status word nobody documented, ends at the deadline and never holds up a healthy HSM", async () => {
    const hung = await night.hostile();
    hung.on("GET", STATUS, "hang");
    const odd = await night.hostile();
    odd.on("GET", STATUS, hostile.timedOut("backup"));
    const good = await night.emulator();
    const { app } = await night.app([hung.url, odd.url, good.url], {
      deps: { hsmClientOptions: { requestTimeoutMs: 300, maxStatusAttempts: 1 } },
    });
    const [hungName, oddName, goodName] = app.deps.config.hsms.map((h) => h.name) as [string, string, string];
    const log = safeLogger(app.context("nightlyBackup"));

    // The run stops waiting at its own deadline (the timer's is the function timeout less a margin).
    const first = await backupAll(app.deps, log, {
      trigger: "timer",
      runDeadline: new Date(app.clock.now().getTime() + 2000),
    });
    expect(Object.fromEntries(first.map((r) => [r.hsm, r.outcome]))).toEqual({
      [hungName]: "Pending",
      [oddName]: "Pending",
      [goodName]: "Succeeded",
    });
    expect(first.find((r) => r.hsm === hungName)!.record!.errorMessage).toMatch(
      /Outcome not yet known: .*deadline.*no answer within 0.3 s/,
    );
    expect(first.find((r) => r.hsm === oddName)!.record!.errorMessage).toMatch(
      /status "TimedOut" is not one Managed HSM documents/,
    );

    // Past the job deadline the next run records TimedOut with what is known, and backs up the healthy HSM as usual.
    app.clock.advance(121 * 60_000);
    const second = await backupAll(app.deps, log, {
      trigger: "timer",
      runDeadline: new Date(app.clock.now().getTime() + 2000),
    });
    expect(second.find((r) => r.hsm === goodName)!.outcome).toBe("Succeeded");
    expect(acceptedStarts(good)).toBe(2);
    const all = await backups(app);
    for (const name of [hungName, oddName]) {
      const [, earlier] = byHsm(all, name);
      expect(earlier).toMatchObject({ status: "TimedOut", errorCode: "JobTimeout" });
      expect(earlier!.errorMessage).toMatch(/had not ended by the deadline .*may still finish it/);
    }
    expect(events(app.logs, "MhsmBackupOutcome").filter((e) => e.status === "TimedOut")).toHaveLength(2);
  });

  it("3a. a catalog write that fails after the HSM accepted the backup loses no job id: logged at once, recorded with the outcome", async () => {
    const hsm = await night.emulator();
    const { app, table } = await night.app([hsm.url], { tableProxy: true });
    await app.deps.prepare();
    // Every try of the write that records the job id (the SDK's 3, then the app's 4) fails.
    table!.inject({ kind: "status", status: 503 }, { method: "PATCH", path: /\(PartitionKey='backup'/, times: 12 });

    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const accepted = events(app.logs, "MhsmJobAccepted");
    expect(accepted).toHaveLength(1);
    const [record] = await backups(app);
    expect(record).toMatchObject({ status: "Succeeded", jobId: accepted[0].jobId });
    expect(app.logs.join("\n")).toMatch(
      new RegExp(`Backup job ${accepted[0].jobId} .* was accepted, but recording it failed`),
    );
    expect(acceptedStarts(hsm)).toBe(1);
  });

  it("3b. a restore the HSM accepted is answered 202 with its job id and the started event even when the catalog cannot record it, and keeps the HSM busy", async () => {
    const hsm = await night.emulator();
    const { app, table } = await night.app([hsm.url], { tableProxy: true });
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const [backup] = await backups(app);
    hsm.keys.create("k1");
    table!.inject({ kind: "status", status: 503 }, { method: "PATCH", path: /\(PartitionKey='restore'/, times: 1000 });

    const answer = await postRestore(
      postJson("/api/restores", { backupId: backup!.id, keyName: "k1" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(answer.status).toBe(202);
    expect(bodyOf(answer)).toMatchObject({
      status: "Running",
      jobId: expect.stringMatching(/^[0-9a-f]{32}$/),
      errorMessage: expect.stringMatching(/^Accepted by the HSM, but not yet recorded/),
    });
    expect(events(app.logs, "MhsmRestoreStarted")).toMatchObject([{ jobId: bodyOf(answer).jobId, keyName: "k1" }]);

    const again = await postRestore(
      postJson("/api/restores", { backupId: backup!.id, keyName: "k1" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(again.status).toBe(409);
    expect(
      hsm.requests.filter((r) => r.method === "PUT" && /^\/keys\/k1\/restore$/.test(r.path) && r.status === 202),
    ).toHaveLength(1);
  });

  it("4. Retry-After is obeyed only up to MAX_POLL_INTERVAL_SECONDS, and a status route reads once without sleeping", async () => {
    const waits: number[] = [];
    const hsm = await night.hostile();
    hsm.on("POST", "/backup", [
      keyVaultError(429, "Throttled", "slow down", { "retry-after": RETRY_AFTER_DAY }),
      keyVaultError(503, "Busy", "later", { "retry-after": RETRY_AFTER_FAR_DATE }),
      started("backup"),
    ]);
    hsm.on("GET", STATUS, [
      hostile.comeBackLater("backup"),
      hostile.comeBackLater("backup", RETRY_AFTER_FAR_DATE),
      keyVaultError(503, "Busy", "later", { "retry-after": "4" }),
    ]);
    let app!: TestApp;
    // Waiting costs nothing here: the app's clock moves by what it asked to wait.
    // eslint-disable-next-line prefer-const -- app is declared before the closures that read it and assigned once they exist
    ({ app } = await night.app([hsm.url], {
      env: { MAX_POLL_INTERVAL_SECONDS: "45" },
      deps: {
        hsmClientOptions: {
          delay: async (ms) => {
            waits.push(ms);
            app.clock.advance(ms);
          },
        },
      },
    }));

    const [result] = await backupAll(app.deps, safeLogger(app.context()), {
      trigger: "timer",
      runDeadline: new Date(app.clock.now().getTime() + 3_600_000),
    });
    expect(result!.outcome).toBe("Pending");
    // The pre-backup check's 202 asks for 0; then the backup: 429 for a day, 503 until 9999, the 202's
    // own 0, then status reads asking for a day and for 9999.
    expect(waits.slice(0, 6)).toEqual([0, 45_000, 45_000, 0, 45_000, 45_000]);
    expect(Math.max(...waits)).toBe(45_000);

    const statusReads = () => hsm.authenticated("GET", STATUS).length;
    const before = statusReads();
    const delays = waits.length;
    const response = await getBackup(get(`/api/backups/${result!.record!.id}`), app.context("getBackup"), app.deps);
    expect(response.status).toBe(200);
    expect(bodyOf(response).status).toBe("Running");
    expect(statusReads() - before).toBe(1);
    expect(waits.length).toBe(delays);
  });

  it("5. an outcome is written once: an early 'start outcome unknown' is corrected by the HSM's answer, with its own event, never silently overwritten", async () => {
    const hsm = await night.hostile();
    // eslint-disable-next-line prefer-const -- app is declared before the closures that read it and assigned once they exist
    let app!: TestApp;
    let corrected = false;
    hsm.on("POST", "/backup", [
      keyVaultError(429, "Throttled", "slow down", { "retry-after": "1" }),
      started("backup"),
    ]);
    hsm.on(
      "GET",
      STATUS,
      jobStatus("backup", () => ({
        status: "Succeeded",
        azureStorageBlobContainerUri: `${app.deps.storage.containerUrl(app.container)}/${folderName(hsm.name)}`,
      })),
    );
    ({ app } = await night.app([hsm.url], {
      deps: {
        hsmClientOptions: {
          // While the start call waits out the 429, a reader decides the worker is gone (clock past the stale age).
          delay: async () => {
            if (corrected) return;
            corrected = true;
            app.clock.advance(staleStartMs(app.deps.config) + 60_000);
            const [starting] = await app.deps.catalog.active("backup");
            const read = await getBackup(
              get(`/api/backups/${starting!.record.id}`),
              app.context("getBackup"),
              app.deps,
            );
            expect(bodyOf(read)).toMatchObject({ status: "Failed", errorCode: "StartOutcomeUnknown" });
          },
        },
      },
    }));

    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const [record] = await backups(app);
    expect(record).toMatchObject({ status: "Succeeded", correctedFrom: "Failed StartOutcomeUnknown" });
    expect(record!.jobId).toMatch(/^[0-9a-f]{32}$/);
    expect(record!.errorCode).toBeUndefined();
    const outcomes = events(app.logs, "MhsmBackupOutcome");
    expect(outcomes.map((e) => [e.status, e.correctionOf])).toEqual([
      ["Failed", undefined],
      ["Succeeded", "Failed StartOutcomeUnknown"],
    ]);
  });

  it("6. the restore start lock is renewed by its live holder: a taker of a lock gone stale wins alone, and the HSM gets one restore", async () => {
    const target = await night.hostile();
    const proxy = await night.proxy(target.url);
    const { app } = await night.app([proxy.url]);
    await app.deps.prepare();
    const hsm = app.deps.config.hsms[0]!;
    const now = app.clock.now();
    const container = app.deps.storage.containerUrl(app.container);
    const { record: backup } = await app.deps.catalog.insert("backup", {
      id: Catalog.newId(now),
      hsmName: hsm.name,
      hsmUrl: hsm.url,
      status: "Succeeded",
      startedAt: now.toISOString(),
      endedAt: now.toISOString(),
      folderUri: `${container}/${folderName(hsm.name)}`,
      trigger: "timer",
    });
    await app.deps.catalog.insert("restore", {
      id: Catalog.newId(now),
      hsmName: hsm.name,
      hsmUrl: hsm.url,
      status: "Running",
      jobId: "0123456789abcdef0123456789abcdef",
      startedAt: now.toISOString(),
      backupId: backup.id,
      folderUri: backup.folderUri!,
    });
    // The first request's idle check (its status read of the running restore) is slow.
    proxy.inject({ kind: "delay", ms: 1500 }, { method: "GET", path: /^\/restore\/.+\/pending$/, skip: 1, times: 1 });

    const first = postRestore(
      postJson("/api/restores", { backupId: backup.id, keyName: "k1" }),
      app.context("postRestore"),
      app.deps,
    );
    await expect.poll(() => proxy.log.filter((l) => l.fault === "delay").length, { timeout: 5000 }).toBe(1);
    app.clock.advance(6 * 60_000);
    const second = await postRestore(
      postJson("/api/restores", { backupId: backup.id, keyName: "k1" }),
      app.context("postRestore"),
      app.deps,
    );
    const firstAnswer = await first;

    expect([firstAnswer.status, second.status].sort()).toEqual([202, 409]);
    expect(second.status).toBe(202);
    expect(bodyOf(firstAnswer).detail).toMatch(/took over the start while this one was checking; nothing was started/);
    expect(target.authenticated("PUT", /^\/keys\/k1\/restore$/)).toHaveLength(1);
  });

  it("7a. a lost answer to the catalog insert is our own row: the backup goes on, once", async () => {
    const hsm = await night.emulator();
    const { app, table } = await night.app([hsm.url], { tableProxy: true });
    await app.deps.prepare();
    // Every insert loses its answer once: the schedule-slot claim's, then the record's.
    table!.inject(
      { kind: "lostResponse" },
      { method: "POST", path: new RegExp(`^/devstoreaccount1/${app.table}$`), times: 1 },
    );
    table!.inject(
      { kind: "lostResponse" },
      { method: "POST", path: new RegExp(`^/devstoreaccount1/${app.table}$`), skip: 1, times: 1 },
    );

    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const all = await backups(app);
    expect(all.map((r) => r.status)).toEqual(["Succeeded"]);
    expect(acceptedStarts(hsm)).toBe(1);
    expect(table!.stats().lostResponse).toBe(2);
  });

  it("7b. a catalog that refuses every insert fails the run naming each HSM, after all of them, and starts nothing", async () => {
    const [a, b] = [await night.emulator(), await night.emulator()];
    const { app, table } = await night.app([a.url, b.url], { tableProxy: true });
    await app.deps.prepare();
    table!.inject(
      { kind: "status", status: 503 },
      { method: "POST", path: new RegExp(`^/devstoreaccount1/${app.table}$`), times: 1000 },
    );

    const names = app.deps.config.hsms.map((h) => h.name);
    const error = await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps).catch((e: Error) => e);
    expect((error as Error).message).toMatch(
      new RegExp(
        `2 of 2 HSM\\(s\\): ${names[0]} \\(NotRecorded: the catalog could not be written .*no backup was started.*; ${names[1]} \\(NotRecorded`,
      ),
    );
    expect(jobStartRequests(a).length + jobStartRequests(b).length).toBe(0);
  });

  it("8. a SAS the HSM echoes back, in any encoding, reaches no record, log line, event or answer", async () => {
    const forms: SasEchoForm[] = ["urlEncoded", "doubleEncoded", "json", "header"];
    const signatures: string[] = [];
    const echo = (form: SasEchoForm, status: number) => (request: { body: unknown }) => {
      const token =
        (request.body as { token?: string; sasTokenParameters?: { token?: string } }).token ??
        (request.body as { sasTokenParameters?: { token?: string } }).sasTokenParameters?.token ??
        "";
      const signature = new URLSearchParams(token).get("sig") ?? "";
      signatures.push(signature);
      return keyVaultError(status, "InvalidParameter", sasEcho(signature, form));
    };
    const hsms = await Promise.all(forms.map(() => night.hostile()));
    forms.forEach((form, i) => hsms[i]!.on("POST", "/backup", echo(form, 400)));
    const good = await night.emulator();
    const { app } = await night.app([...hsms.map((h) => h.url), good.url]);
    const runError = await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps).catch((e: Error) => e.message);

    // A restore refused with an echo of its SAS: the problem+json answer carries none either.
    const [backup] = (await backups(app)).filter((r) => r.status === "Succeeded");
    hsms[0]!.on("PUT", /^\/keys\/.+\/restore$/, echo("json", 400));
    const hostileBackup = await app.deps.catalog.insert("backup", {
      ...backup!,
      id: Catalog.newId(app.clock.now()),
      hsmName: app.deps.config.hsms[0]!.name,
      hsmUrl: app.deps.config.hsms[0]!.url,
    });
    const refused = await postRestore(
      postJson("/api/restores", { backupId: hostileBackup.record.id, keyName: "k1" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(refused.status).toBe(502);

    expect(signatures.filter(Boolean)).toHaveLength(5);
    const everything = [
      String(runError),
      ...app.logs,
      JSON.stringify(await catalogEntities(app)),
      String(refused.body),
    ].join("\n");
    expect(everything).toMatch(/InvalidParameter/);
    for (const signature of signatures) {
      const once = encodeURIComponent(signature);
      for (const form of [signature, once, encodeURIComponent(once), Buffer.from(signature).toString("base64")]) {
        expect(everything.includes(form), `a form of the signature leaked: ${form}`).toBe(false);
      }
    }
  });

  it("9a. an HSM's Succeeded is not trusted as given: no folder, or a folder on another account, is a Failed backup and health stays unhealthy", async () => {
    const noFolder = await night.hostile();
    noFolder.on("GET", STATUS, hostile.succeededWithoutFolder());
    const foreign = await night.hostile();
    foreign.on("GET", STATUS, hostile.foreignFolder());
    const { app } = await night.app([noFolder.url, foreign.url]);
    const [a, b] = app.deps.config.hsms.map((h) => h.name) as [string, string];

    await expect(nightlyBackup(onTime, app.context("nightlyBackup"), app.deps)).rejects.toThrow(/2 of 2/);
    const all = await backups(app);
    expect(byHsm(all, a)[0]).toMatchObject({
      status: "Failed",
      errorCode: "InvalidServiceResponse",
      errorMessage: expect.stringMatching(/Succeeded, but it gave no backup folder/),
    });
    expect(byHsm(all, b)[0]).toMatchObject({
      status: "Failed",
      errorCode: "InvalidServiceResponse",
      errorMessage: expect.stringMatching(/attacker\.blob\.core\.windows\.net.* is not on the app's storage account/),
    });
    expect(all.every((r) => r.folderUri === undefined)).toBe(true);
    const { checkHealth } = await import("../../src/lib/health.js");
    expect((await checkHealth(app.deps)).healthy).toBe(false);
  });

  it("9b. a status for another job, or a redirect, is not the job's outcome; a 202 with an unusable body is followed through Azure-AsyncOperation", async () => {
    const other = await night.hostile();
    other.on("GET", STATUS, hostile.otherJob("backup", "Failed"));
    const moved = await night.hostile();
    moved.on("GET", STATUS, hostile.redirect());
    const html = await night.hostile();
    html.on("POST", "/backup", hostile.htmlStart("backup"));
    html.on(
      "GET",
      STATUS,
      jobStatus("backup", () => ({
        status: "Succeeded",
        azureStorageBlobContainerUri: `${app.deps.storage.containerUrl(app.container)}/${folderName(html.name)}`,
      })),
    );
    const { app } = await night.app([other.url, moved.url, html.url], {
      deps: { hsmClientOptions: { maxStatusAttempts: 1 } },
    });
    const [o, m, h] = app.deps.config.hsms.map((x) => x.name) as [string, string, string];

    const results = await backupAll(app.deps, safeLogger(app.context()), {
      trigger: "timer",
      runDeadline: new Date(app.clock.now().getTime() + 1500),
    });
    const of = (name: string) => results.find((r) => r.hsm === name)!;
    expect(of(o)).toMatchObject({ outcome: "Pending" });
    expect(of(o).record!.errorMessage).toMatch(/the status is for job [0-9a-f]{32}, not for job/);
    expect(of(m)).toMatchObject({ outcome: "Pending" });
    expect(of(m).record!.errorMessage).toMatch(/HTTP 302 \(a redirect, not followed\)/);
    expect(moved.requests.some((r) => r.path.includes("attacker"))).toBe(false);
    expect(of(h)).toMatchObject({ outcome: "Succeeded" });
    expect(of(h).record!.jobId).toBe(
      // The last status read: the first ones were the pre-backup check's.
      /\/backup\/([0-9a-f]{32})\/pending/.exec(html.authenticated("GET", STATUS).at(-1)!.path)![1],
    );
  });

  it("11. a rerun over a live job is Skipped with the running job's id, fails nothing, and the earlier job's outcome still lands", async () => {
    const hsm = await night.emulator({ jobDurationMs: 1500 });
    const { app } = await night.app([hsm.url]);
    const abort = new AbortController();
    const [first] = await backupAll(app.deps, safeLogger(app.context()), {
      trigger: "timer",
      abortSignal: abort.signal,
      onProgress: () => abort.abort(new Error("worker recycled")),
    });
    expect(first).toMatchObject({ outcome: "Pending" });

    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const [skipped] = await backups(app);
    expect(skipped).toMatchObject({
      status: "Skipped",
      errorCode: "PreviousJobRunning",
      activeRecordId: first!.record!.id,
      activeJobId: first!.jobId,
    });
    expect(acceptedStarts(hsm)).toBe(1);

    await expect
      .poll(
        async () => bodyOf(await getBackup(get(`/api/backups/${first!.record!.id}`), app.context(), app.deps)).status,
        { timeout: 10_000, interval: 200 },
      )
      .toBe("Succeeded");
    expect(events(app.logs, "MhsmBackupOutcome").map((e) => e.status)).toEqual(["Skipped", "Succeeded"]);
  });
});

describe("one backup per schedule slot", () => {
  it("two invocations of the timer for the same slot start one backup per HSM; the loser fails nothing", async () => {
    const [a, b] = [await night.emulator(), await night.emulator()];
    const { app } = await night.app([a.url, b.url]);
    await app.deps.prepare();
    const pastDue = { ...onTime, isPastDue: true };

    await Promise.all([
      nightlyBackup(onTime, app.context("nightlyBackup"), app.deps),
      nightlyBackup(pastDue, app.context("nightlyBackup"), app.deps),
    ]);
    expect(acceptedStarts(a)).toBe(1);
    expect(acceptedStarts(b)).toBe(1);
    const all = await backups(app);
    expect(all.map((r) => r.status)).toEqual(["Succeeded", "Succeeded"]);
    expect(new Set(all.map((r) => r.slot)).size).toBe(1);
    expect(app.logs.join("\n")).toMatch(/another invocation already took the backup of schedule slot/);

    // The next slot is a new night.
    app.clock.advance(24 * 3_600_000);
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    expect(acceptedStarts(a)).toBe(2);
  });
});
