/**
 * Every backup verified restorable: right after a backup ends, the HSM's own pre-restore check runs on
 * the new folder, and the record, the listing, the outcome event and /api/health say what it found.
 */
import { afterEach, describe, expect, it } from "vitest";
import { listBackups } from "../../src/handlers/backups.js";
import { health } from "../../src/handlers/health.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { bodyOf, get, onTime, type TestApp } from "../support/app.js";
import { events, Night } from "../support/bad-night.js";

const night = new Night();
afterEach(() => night.stopAll());

async function nightly(app: TestApp): Promise<void> {
  app.clock.advance(24 * 3_600_000);
  await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
}

describe("backup verification", () => {
  it("records Passed when the HSM's pre-restore check accepts the new folder, and health is green", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url]);
    await nightly(app);
    const [record] = (await app.deps.catalog.list("backup", { top: 5 })).items;
    expect(record).toMatchObject({ status: "Succeeded", verification: "Passed" });
    expect(Date.parse(record!.verifiedAt!)).toBeGreaterThanOrEqual(Date.parse(record!.endedAt!) - 1000);
    expect(hsm.jobs().map((j) => j.kind)).toEqual(["preBackup", "backup", "preRestore"]);
    expect(events(app.logs, "MhsmBackupOutcome")).toMatchObject([{ status: "Succeeded", verification: "Passed" }]);
    const answer = await health(get("/api/health"), app.context(), app.deps);
    expect(answer.status).toBe(200);
    expect(bodyOf(answer).hsms).toMatchObject([{ verification: "Passed", unverified: false, stale: false }]);
  });

  it("records Failed with the HSM's message when its check refuses the folder; health answers 503 and the listing filters on it", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url]);
    await nightly(app);
    hsm.faults.failNextJob("restore", { code: "InvalidBackup", message: "Invalid backup provided" });
    await nightly(app);

    const failed = bodyOf(await listBackups(get("/api/backups?verification=Failed"), app.context(), app.deps)).items;
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({
      status: "Succeeded",
      verification: "Failed",
      verificationMessage: expect.stringMatching(/refused it: .*Invalid backup provided/),
    });
    const passed = bodyOf(await listBackups(get("/api/backups?verification=Passed"), app.context(), app.deps)).items;
    expect(passed).toHaveLength(1);
    expect(passed[0].id).not.toBe(failed[0].id);

    // The newest backup is one the HSM says it cannot restore: that is no backup.
    const answer = await health(get("/api/health"), app.context(), app.deps);
    expect(answer.status).toBe(503);
    expect(bodyOf(answer)).toMatchObject({ hsms: [{ verification: "Failed", stale: true }] });
    expect(events(app.logs, "MhsmBackupOutcome").map((e) => e.verification)).toEqual(["Passed", "Failed"]);
  });

  it("records Skipped, saying why, where the HSM has no such check (api-version 7.5); health reports it unverified but stays green", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url], { env: { HSM_API_VERSION: "7.5" } });
    await nightly(app);
    const [record] = (await app.deps.catalog.list("backup", { top: 5 })).items;
    expect(record).toMatchObject({
      status: "Succeeded",
      verification: "Skipped",
      verificationMessage: expect.stringMatching(/needs HSM_API_VERSION 7.6/),
    });
    expect(hsm.jobs().map((j) => j.kind)).toEqual(["backup"]);
    const answer = await health(get("/api/health"), app.context(), app.deps);
    expect(answer.status).toBe(200);
    expect(bodyOf(answer)).toMatchObject({
      detail: expect.stringMatching(/Newest backup not verified restorable for: /),
      hsms: [{ verification: "Skipped", unverified: true }],
    });
  });

  it("refuses a verification filter that is not one of the verdicts, changing nothing", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url]);
    const answer = await listBackups(get("/api/backups?verification=passed"), app.context(), app.deps);
    expect(answer.status).toBe(400);
    expect(bodyOf(answer).detail).toMatch(/verification "passed" is not one of Passed, Failed, Skipped/);
  });
});
