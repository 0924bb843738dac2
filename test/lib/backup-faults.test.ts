/**
 * The worst nights: an HSM that fails, throttles, is busy, or a worker that dies mid-wait. Real
 * emulators with injected faults, real Azurite, the real handlers.
 */
import { afterEach, describe, expect, it } from "vitest";
import { getBackup } from "../../src/handlers/backups.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { backupAll } from "../../src/lib/backup.js";
import { Catalog } from "../../src/lib/catalog.js";
import { staleStartMs } from "../../src/lib/config.js";
import { safeLogger } from "../../src/lib/logger.js";
import { bodyOf, get, onTime, startTestApp, type TestApp } from "../support/app.js";
import { events } from "../support/bad-night.js";

let app: TestApp | undefined;
afterEach(async () => {
  await app?.stop();
  app = undefined;
});

describe("backup under faults", () => {
  it("backs up the healthy HSM when another fails, and fails the invocation naming the failed one", async () => {
    app = await startTestApp({ hsmCount: 2 });
    const [, bad] = app.emulators;
    const [good, badHsm] = app.deps.config.hsms;
    bad!.faults.failNextJob("backup", { code: "StorageUnavailable", message: "the HSM could not write the backup" });
    app.clock.advance(3_600_000); // the app's clock runs an hour ahead: times must come from the HSM

    const run = nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const badName = badHsm!.name;
    await expect(run).rejects.toThrow(new RegExp(`1 of 2 HSM\\(s\\): ${badName} \\(Failed StorageUnavailable`));

    const page = await app.deps.catalog.list("backup", { top: 10 });
    const byHsm = Object.fromEntries(page.items.map((r) => [r.hsmUrl, r]));
    expect(byHsm[good!.url]).toMatchObject({ status: "Succeeded" });
    expect(byHsm[badHsm!.url]).toMatchObject({ status: "Failed", errorCode: "StorageUnavailable" });
    expect(byHsm[badHsm!.url]!.errorMessage!.match(/could not write the backup/g)).toHaveLength(1);
    // The HSM's end time, not the app's clock, even for a failed job.
    expect(Math.abs(Date.parse(byHsm[badHsm!.url]!.endedAt!) - Date.now())).toBeLessThan(60_000);
    expect(byHsm[badHsm!.url]!.durationSeconds).toBeLessThan(60);
    const outcomes = events(app.logs, "MhsmBackupOutcome");
    expect(outcomes.map((e) => e.status).sort()).toEqual(["Failed", "Succeeded"]);
    expect(outcomes.find((e) => e.status === "Failed")).toMatchObject({
      hsm: badName,
      errorCode: "StorageUnavailable",
    });
  });

  it("waits out 429s on the start call, honouring Retry-After, and starts exactly one job", async () => {
    const waits: number[] = [];
    // The backup's own start call: with the pre-flight on, the throttled calls would be the pre-backup's.
    app = await startTestApp({
      env: { PREFLIGHT: "false" },
      deps: { hsmClientOptions: { delay: async (ms) => void waits.push(ms) } },
    });
    const hsm = app.emulators[0]!;
    hsm.faults.throttleNext(2, 429, 7);

    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);

    const starts = hsm.requests.filter((r) => r.method === "POST" && r.path === "/backup" && r.headers.authorization);
    expect(starts.map((r) => r.status)).toEqual([429, 429, 202]);
    expect(waits.slice(0, 2)).toEqual([7000, 7000]);
    expect((await app.deps.catalog.list("backup", { top: 1 })).items[0]).toMatchObject({ status: "Succeeded" });
  });

  it("skips, without failing the run, when the HSM answers 409 because another operation is running; never retries the start", async () => {
    app = await startTestApp({ emulator: { jobDurationMs: 3000 } });
    const hsm = app.emulators[0]!;
    const container = app.deps.storage.containerUrl(app.container);
    await app.deps.prepare();
    const sas = await app.deps.storage.containerSas(app.container, "backup", 10);
    await app.deps.hsmClient(app.deps.config.hsms[0]!).beginBackup(container, sas.token); // someone else's backup

    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const record = (await app.deps.catalog.list("backup", { top: 1 })).items[0]!;
    expect(record).toMatchObject({ status: "Skipped", errorCode: "Conflict" });
    expect(record.errorMessage).toMatch(/another backup or restore is running/);
    // The HSM refuses the pre-backup check that comes first; the backup itself is never asked for.
    const answered = hsm.requests.filter((r) => r.method === "POST" && r.headers.authorization);
    expect(answered.map((r) => [r.path, r.status])).toEqual([
      ["/backup", 202],
      ["/prebackup", 409],
    ]);
    expect(events(app.logs, "MhsmBackupOutcome")).toMatchObject([{ status: "Skipped" }]);
  });

  it("lets another worker finish the wait of a worker that stopped after the start", async () => {
    app = await startTestApp({ emulator: { jobDurationMs: 400 } });
    const abort = new AbortController();
    // The first worker stops waiting as soon as the job runs (a recycled worker).
    const [result] = await backupAll(app.deps, safeLogger(app.context()), {
      trigger: "timer",
      abortSignal: abort.signal,
      onProgress: () => abort.abort(new Error("worker recycled")),
    });
    expect(result).toMatchObject({ outcome: "Pending" });
    const record = result!.record;
    expect(record).toMatchObject({ status: "Running" });
    expect(record!.jobId).toMatch(/^[0-9a-f]{32}$/);
    expect(record!.errorMessage).toMatch(/Outcome not yet known: .*worker recycled/);

    await new Promise((r) => setTimeout(r, 600));
    const response = await getBackup(get(`/api/backups/${record!.id}`), app.context("getBackup"), app.deps);
    expect(bodyOf(response)).toMatchObject({ id: record!.id, status: "Succeeded", jobId: record!.jobId });
    expect(bodyOf(response).folderUri).toMatch(/\/mhsm-testhsm0-\d{16}$/);
    expect(events(app.logs, "MhsmBackupOutcome")).toHaveLength(1);
  });

  it("settles a record whose worker died before the HSM answered, once it is stale", async () => {
    app = await startTestApp();
    await app.deps.prepare();
    const hsm = app.deps.config.hsms[0]!;
    const startedAt = app.clock.now();
    const { record } = await app.deps.catalog.insert("backup", {
      id: Catalog.newId(startedAt),
      hsmName: hsm.name,
      hsmUrl: hsm.url,
      status: "Starting",
      startedAt: startedAt.toISOString(),
      trigger: "timer",
    });

    const fresh = bodyOf(await getBackup(get(`/api/backups/${record.id}`), app.context(), app.deps));
    expect(fresh.status).toBe("Starting");

    app.clock.advance(staleStartMs(app.deps.config) + 60_000);
    const stale = bodyOf(await getBackup(get(`/api/backups/${record.id}`), app.context(), app.deps));
    expect(stale).toMatchObject({ status: "Failed", errorCode: "StartOutcomeUnknown" });
    expect(stale.errorMessage).toMatch(/check its audit log/);
  });

  it("records a start that never left the app (connection refused) as Failed StartNotSent with its cause and an event, not as 'maybe started'", async () => {
    app = await startTestApp();
    await app.emulators[0]!.stop();
    await expect(nightlyBackup(onTime, app.context("nightlyBackup"), app.deps)).rejects.toThrow(
      /1 of 1 HSM\(s\): .*StartNotSent/,
    );
    const record = (await app.deps.catalog.list("backup", { top: 1 })).items[0]!;
    expect(record).toMatchObject({ status: "Failed", errorCode: "StartNotSent" });
    expect(record.errorMessage).toMatch(/was not sent \(.*ECONNREFUSED.*\); nothing was started/);
    expect(events(app.logs, "MhsmBackupOutcome")).toMatchObject([{ status: "Failed", errorCode: "StartNotSent" }]);
  });

  it("retries status reads the HSM answers with 503 and follows the 202's Retry-After", async () => {
    const waits: number[] = [];
    app = await startTestApp({
      emulator: { retryAfterSeconds: 3, jobDurationMs: 50 },
      deps: {
        hsmClientOptions: {
          delay: (ms) => {
            waits.push(ms);
            return new Promise((r) => setTimeout(r, 60));
          },
        },
      },
    });
    const hsm = app.emulators[0]!;
    const client = app.deps.hsmClient(app.deps.config.hsms[0]!);
    await app.deps.prepare();
    const sas = await app.deps.storage.containerSas(app.container, "backup", 10);
    const poller = await client.beginBackup(app.deps.storage.containerUrl(app.container), sas.token);
    hsm.faults.throttleNext(1, 503, 2);
    const final = await poller.pollUntilDone();
    expect(final.status).toBe("Succeeded");
    expect(waits[0]).toBe(3000); // the 202's Retry-After
    expect(waits).toContain(2000); // the 503's Retry-After
    const polls = hsm.requests.filter((r) => r.method === "GET" && r.path.startsWith("/backup/"));
    expect(polls.map((r) => r.status)).toContain(503);
    expect(polls.at(-1)!.status).toBe(200);
  });
});
