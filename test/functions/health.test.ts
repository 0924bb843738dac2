import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { health } from "../../src/handlers/health.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { Catalog } from "../../src/lib/catalog.js";
import { bodyOf, get, headerOf, onTime, startTestApp, type TestApp } from "../support/app.js";

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
      const then = new Date(Date.now() - 27 * 3_600_000);
      await other.deps.prepare();
      await other.deps.catalog.insert("backup", {
        id: Catalog.newId(then),
        hsmName: hsm.name,
        hsmUrl: hsm.url,
        status: "Succeeded",
        trigger: "timer",
        startedAt: then.toISOString(),
        endedAt: then.toISOString(),
        folderUri: "http://127.0.0.1/x/mhsm-old",
      });
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
