import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postBackup } from "../../src/handlers/backups.js";
import { health } from "../../src/handlers/health.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { Catalog } from "../../src/lib/catalog.js";
import { bodyOf, get, headerOf, onTime, postJson, startTestApp, waitForBackup, type TestApp } from "../support/app.js";

describe("GET /api/health", () => {
  let app: TestApp;
  beforeAll(async () => {
    app = await startTestApp({ hsmCount: 2, env: { HEALTH_MAX_AGE_HOURS: "26" } });
  });
  afterAll(() => app.stop());
  const [first, second] = [0, 1];

  it("is 503 naming every HSM that has no successful backup yet", async () => {
    const response = await health(get("/api/health"), app.context("health"), app.deps);
    expect(response.status).toBe(503);
    const body = bodyOf(response);
    expect(body.status).toBe("stale");
    expect(body.detail).toContain(app.deps.config.hsms[first]!.name);
    expect(body.detail).toContain(app.deps.config.hsms[second]!.name);
  });

  it("is 200 once every HSM has a recent successful backup, and says nothing about folders or hosts", async () => {
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const response = await health(get("/api/health"), app.context("health"), app.deps);
    expect(response.status).toBe(200);
    expect(headerOf(response, "content-type")).toBe("application/json");
    const body = bodyOf(response);
    expect(body).toMatchObject({ status: "healthy", healthy: true, maxAgeHours: 26 });
    expect(body.hsms.map((h: any) => h.stale)).toEqual([false, false]);
    const text = JSON.stringify(body);
    expect(text).not.toMatch(/mhsm-|http:|https:|folder/i);
  });

  it("turns 503 when the newest success is older than HEALTH_MAX_AGE_HOURS, naming only the stale HSM", async () => {
    const other = await startTestApp({ hsmCount: 2 });
    try {
      // The second HSM's last success was 27 hours ago; tonight it fails. The first succeeds tonight.
      const hsm = other.deps.config.hsms[second]!;
      const then = await recordOldSuccess(other, second, 27);
      other.emulators[second]!.faults.failNextJob("backup");
      await expect(nightlyBackup(onTime, other.context("nightlyBackup"), other.deps)).rejects.toThrow(/1 of 2/);

      const response = await health(get("/api/health"), other.context("health"), other.deps);
      expect(response.status).toBe(503);
      const body = bodyOf(response);
      const stale = body.hsms.filter((h: any) => h.stale);
      expect(stale).toHaveLength(1);
      expect(stale[0]).toMatchObject({ name: hsm.name, lastSuccessAt: then.toISOString() });
      expect(stale[0].ageHours).toBeGreaterThanOrEqual(27);
      expect(body.detail).not.toContain(other.deps.config.hsms[first]!.name);
    } finally {
      await other.stop();
    }
  });
});

describe("GET /api/health in the grace period after deployment (DEPLOYED_AT + HEALTH_GRACE_HOURS)", () => {
  const HOUR = 3_600_000;
  let app: TestApp;
  let deployedAt: Date;
  const read = async () => {
    const response = await health(get("/api/health"), app.context("health"), app.deps);
    return { status: response.status, body: bodyOf(response) };
  };

  beforeAll(async () => {
    deployedAt = new Date(Date.now() - HOUR);
    app = await startTestApp({
      hsmCount: 2,
      env: { DEPLOYED_AT: deployedAt.toISOString(), HEALTH_GRACE_HOURS: "26", HEALTH_MAX_AGE_HOURS: "40" },
    });
  });
  afterAll(() => app.stop());

  it("is healthy while an HSM awaits its first backup, even after that backup failed, and says until when", async () => {
    const [first, second] = app.deps.config.hsms.map((h) => h.name);
    const started = await postBackup(postJson("/api/backups", { hsm: first }), app.context("postBackup"), app.deps);
    expect((await waitForBackup(app, bodyOf(started).backups[0].statusUrl)).status).toBe("Succeeded");
    app.emulators[1]!.faults.failNextJob("backup");
    const failing = await postBackup(postJson("/api/backups", { hsm: second }), app.context("postBackup"), app.deps);
    expect((await waitForBackup(app, bodyOf(failing).backups[0].statusUrl)).status).toBe("Failed");

    const { status, body } = await read();
    expect(status).toBe(200);
    expect(body).toMatchObject({ status: "healthy", healthy: true });
    const graceEndsAt = new Date(deployedAt.getTime() + 26 * HOUR).toISOString();
    expect(body.hsms).toEqual([
      expect.objectContaining({ name: first, stale: false }),
      { name: second, stale: false, awaitingFirstBackup: true, graceEndsAt },
    ]);
    expect(body.hsms[0]).not.toHaveProperty("awaitingFirstBackup");
    expect(body.detail).toContain(`Awaiting the first backup, within the grace period after deployment: ${second}`);
  });

  it("is 503 naming the never-backed-up HSM once the grace has ended, and only that one", async () => {
    const [first, second] = app.deps.config.hsms.map((h) => h.name);
    app.clock.advance(25 * HOUR); // 26 h after deployment: the grace ends exactly now
    const { status, body } = await read();
    expect(status).toBe(503);
    expect(body.status).toBe("stale");
    expect(body.hsms).toEqual([expect.objectContaining({ name: first, stale: false }), { name: second, stale: true }]);
    expect(body.detail).toMatch(new RegExp(`did not refuse for: ${second}(\\.|$)`));
    expect(body.detail).not.toMatch(/Awaiting/);
  });
});

describe("GET /api/health grants no grace to an HSM that has been backed up", () => {
  it("is 503 for an HSM whose only success is too old, within the grace after a new deployment", async () => {
    const app = await startTestApp({ env: { DEPLOYED_AT: new Date().toISOString(), HEALTH_GRACE_HOURS: "26" } });
    try {
      const hsm = app.deps.config.hsms[0]!;
      const then = await recordOldSuccess(app, 0, 30);
      const response = await health(get("/api/health"), app.context("health"), app.deps);
      expect(response.status).toBe(503);
      expect(bodyOf(response).hsms).toEqual([
        expect.objectContaining({ name: hsm.name, stale: true, lastSuccessAt: then.toISOString() }),
      ]);
      expect(bodyOf(response).hsms[0]).not.toHaveProperty("awaitingFirstBackup");
    } finally {
      await app.stop();
    }
  });

  it("gives none at all with HEALTH_GRACE_HOURS=0", async () => {
    const app = await startTestApp({ env: { DEPLOYED_AT: new Date().toISOString(), HEALTH_GRACE_HOURS: "0" } });
    try {
      const response = await health(get("/api/health"), app.context("health"), app.deps);
      expect(response.status).toBe(503);
      expect(bodyOf(response).hsms).toEqual([{ name: app.deps.config.hsms[0]!.name, stale: true }]);
    } finally {
      await app.stop();
    }
  });
});

/** Records a successful backup of HSM number `index` that ended `hoursAgo` hours ago; returns when. */
async function recordOldSuccess(app: TestApp, index: number, hoursAgo: number): Promise<Date> {
  const hsm = app.deps.config.hsms[index]!;
  const then = new Date(Date.now() - hoursAgo * 3_600_000);
  await app.deps.prepare();
  await app.deps.catalog.insert("backup", {
    id: Catalog.newId(then),
    hsmName: hsm.name,
    hsmUrl: hsm.url,
    status: "Succeeded",
    trigger: "timer",
    startedAt: then.toISOString(),
    endedAt: then.toISOString(),
    folderUri: "http://127.0.0.1/x/mhsm-old",
  });
  return then;
}
