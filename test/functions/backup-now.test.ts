/**
 * POST /api/backups — the timer's backup on demand, through the real handler with real
 * HttpRequest/InvocationContext, against Azurite and the HSM emulator: it answers 202 as soon as the
 * jobs are started and recorded, and the status URL settles the outcome later.
 */
import { HttpRequest, type HttpResponseInit } from "@azure/functions";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getBackup, postBackup } from "../../src/handlers/backups.js";
import {
  bodyOf,
  catalogEntities,
  events,
  get,
  headerOf,
  jobStartRequests,
  postJson,
  request,
  startTestApp,
  waitForBackup,
  type TestApp,
} from "../support/app.js";

/** A POST /api/backups with exactly these headers and body (request() adds a JSON content type). */
function rawPost(body: string | undefined, headers: Record<string, string> = {}): HttpRequest {
  return new HttpRequest({
    method: "POST",
    url: "http://localhost:7071/api/backups",
    headers,
    ...(body !== undefined ? { body: { string: body } } : {}),
  });
}

describe("POST /api/backups", () => {
  let app: TestApp;
  let names: string[];
  const post = (req: HttpRequest): Promise<HttpResponseInit> => postBackup(req, app.context("postBackup"), app.deps);

  beforeAll(async () => {
    app = await startTestApp({ hsmCount: 2 });
    names = app.deps.config.hsms.map((h) => h.name);
  });
  afterAll(() => app?.stop());

  it("backs up the one HSM named, answers 202 at once with the Running record and its status URL, which later says Succeeded", async () => {
    const [first, second] = app.emulators;
    app.emulators[0]!.faults.setJobDurationMs(400);
    const startsOfSecond = jobStartRequests(second!).length;
    const response = await post(postJson("/api/backups", { hsm: names[0] }));
    expect(response.status).toBe(202);
    const { backups } = bodyOf(response);
    expect(backups).toHaveLength(1);
    const [entry] = backups;
    expect(entry).toMatchObject({ hsm: names[0], outcome: "Pending" });
    expect(entry.record).toMatchObject({
      hsmName: names[0],
      status: "Running",
      trigger: "http",
      requestedBy: "function key",
    });
    expect(entry.record.jobId).toMatch(/^[0-9a-f]{32}$/);
    expect(entry.statusUrl).toBe(`/api/backups/${entry.record.id}`);
    expect(headerOf(response, "location")).toBe(entry.statusUrl);
    expect(Number(headerOf(response, "retry-after"))).toBeGreaterThan(0);
    // The answer came before the job ended: the HSM still reports it in progress.
    expect(first!.jobs().find((j) => j.jobId === entry.record.jobId)).toMatchObject({
      kind: "backup",
      status: "InProgress",
    });
    expect(jobStartRequests(second!).length).toBe(startsOfSecond);

    const settled = await waitForBackup(app, entry.statusUrl);
    expect(settled).toMatchObject({
      id: entry.record.id,
      status: "Succeeded",
      trigger: "http",
      requestedBy: "function key",
    });
    expect(settled.folderUri).toMatch(/\/mhsm-testhsm0-\d+$/);
    app.emulators[0]!.faults.setJobDurationMs(100);
  });

  it.each([
    ["no body at all", () => rawPost(undefined)],
    ["an empty JSON object", () => postJson("/api/backups", {})],
    ["whitespace without a content type", () => rawPost("  \n")],
  ])("backs up every configured HSM for %s, each with its own record", async (_name, make) => {
    const response = await post(make());
    expect(response.status).toBe(202);
    const { backups } = bodyOf(response);
    expect(backups.map((b: any) => b.hsm)).toEqual(names);
    expect(backups.map((b: any) => b.record.status)).toEqual(["Running", "Running"]);
    expect(headerOf(response, "location")).toBeUndefined();
    const settled = await Promise.all(backups.map((b: any) => waitForBackup(app, b.statusUrl)));
    expect(settled.map((b) => `${b.hsmName} ${b.status}`)).toEqual(names.map((n) => `${n} Succeeded`));
  });

  it("records who asked: the App Service Authentication principal, with its id", async () => {
    const response = await post(
      request("POST", "/api/backups", JSON.stringify({ hsm: names[1] }), {
        "x-ms-client-principal-name": "oncall@contoso.com",
        "x-ms-client-principal-id": "11111111-2222-3333-4444-555555555555",
      }),
    );
    expect(response.status).toBe(202);
    const [entry] = bodyOf(response).backups;
    const who = "oncall@contoso.com (11111111-2222-3333-4444-555555555555)";
    expect(entry.record.requestedBy).toBe(who);
    expect((await waitForBackup(app, entry.statusUrl)).requestedBy).toBe(who);
    // The outcome event (and so the workbook and the "backup failed" alert) says who asked, too.
    expect(events(app.logs, "MhsmBackupOutcome").find((e) => e.recordId === entry.record.id)).toMatchObject({
      status: "Succeeded",
      requestedBy: who,
    });
  });

  it("records a Skipped backup, naming the running job, when the HSM is still busy; the HSM sees one start", async () => {
    const hsm = app.emulators[1]!;
    hsm.faults.setJobDurationMs(60_000, "backup"); // the pre-backup check stays quick
    try {
      const starts = jobStartRequests(hsm).length;
      const first = bodyOf(await post(postJson("/api/backups", { hsm: names[1] }))).backups[0];
      expect(first.record.status).toBe("Running");
      const response = await post(postJson("/api/backups", { hsm: names[1] }));
      expect(response.status).toBe(202);
      const [second] = bodyOf(response).backups;
      expect(second).toMatchObject({ hsm: names[1], outcome: "Skipped" });
      expect(second.record).toMatchObject({
        status: "Skipped",
        errorCode: "PreviousJobRunning",
        activeRecordId: first.record.id,
        activeJobId: first.record.jobId,
        trigger: "http",
      });
      expect(second.record.errorMessage).toContain(`Backup ${first.record.id}`);
      // The first call's pre-flight and backup; the second call starts nothing.
      const authorized = jobStartRequests(hsm)
        .slice(starts)
        .filter((r) => r.headers.authorization);
      expect(authorized.map((r) => r.path)).toEqual(["/prebackup", "/backup"]);
      const status = bodyOf(await getBackup(get(second.statusUrl), app.context("getBackup"), app.deps));
      expect(status.status).toBe("Skipped");
    } finally {
      // Stopping the emulator at the end ends the slow job; the next tests use the first HSM only.
      hsm.faults.setJobDurationMs(100);
    }
  });

  it("answers within its budget when the HSM's pre-backup check does not end: the pre-flight fails, saying so, and no backup starts", async () => {
    const own = await startTestApp();
    try {
      const hsm = own.emulators[0]!;
      hsm.faults.setJobDurationMs(60_000, "prebackup");
      const answer = postBackup(postJson("/api/backups", {}), own.context("postBackup"), own.deps);
      for (let i = 0; i < 500 && !hsm.requests.some((r) => /^\/backup\/[^/]+\/pending$/.test(r.path)); i++)
        await new Promise((r) => setTimeout(r, 10));
      // The check still runs when the call's 120 s are up (the app's clock; the host would cut it at 230 s).
      own.clock.advance(121_000);
      const response = await answer;
      expect(response.status).toBe(202);
      const [entry] = bodyOf(response).backups;
      expect(entry.record).toMatchObject({ status: "Failed", errorCode: "PreflightFailed" });
      expect(entry.record.errorMessage).toMatch(/the HSM's pre-backup check \(job [0-9a-f]{32}\) did not finish/);
      expect(
        jobStartRequests(hsm)
          .filter((r) => r.headers.authorization)
          .map((r) => r.path),
      ).toEqual(["/prebackup"]);
    } finally {
      await own.stop();
    }
  });

  describe("refuses bad requests with 400/415 problem+json, recording and starting nothing", () => {
    async function expectRefused(req: HttpRequest, status: number, title: RegExp, detail: RegExp): Promise<any> {
      const entitiesBefore = await catalogEntities(app);
      const startsBefore = app.emulators.map((e) => jobStartRequests(e).length);
      const response = await post(req);
      expect(response.status).toBe(status);
      expect(headerOf(response, "content-type")).toBe("application/problem+json");
      const body = bodyOf(response);
      expect(body).toMatchObject({ type: "about:blank", status, instance: "/api/backups" });
      expect(body.title).toMatch(title);
      expect(body.detail).toMatch(detail);
      expect(await catalogEntities(app)).toEqual(entitiesBefore);
      expect(app.emulators.map((e) => jobStartRequests(e).length)).toEqual(startsBefore);
      return body;
    }

    it("an HSM name that is not configured, naming the configured ones", async () => {
      const body = await expectRefused(postJson("/api/backups", { hsm: "contoso" }), 400, /Unknown hsm/, /"contoso"/);
      expect(body.detail).toContain(`configured: ${names.join(", ")}`);
    });

    it.each([
      ["a number", { hsm: 5 }, /hsm of type number is not an HSM name/],
      ["null", { hsm: null }, /hsm of type null/],
      ["an empty string", { hsm: "" }, /hsm "" is not an HSM name/],
      ["an OData clause", { hsm: "x' or '1' eq '1" }, /is not an HSM name/],
      ["a host name", { hsm: "testhsm0.managedhsm.azure.net" }, /is not an HSM name/],
    ])("an hsm that is %s", async (_name, body, detail) => {
      await expectRefused(postJson("/api/backups", body), 400, /Invalid hsm/, detail);
    });

    it.each([
      ["a misspelt field", { hsms: ["a"] }, /Unknown field\(s\): hsms\. Known: hsm/],
      ["a field beside hsm", { hsm: "testhsm0", force: true }, /Unknown field\(s\): force/],
    ])("%s", async (_name, body, detail) => {
      await expectRefused(postJson("/api/backups", body), 400, /Invalid backup request/, detail);
    });

    it.each([
      ["malformed JSON", '{"hsm": '],
      ["plain text", "backup please"],
    ])("%s", async (_name, text) => {
      await expectRefused(request("POST", "/api/backups", text), 400, /Malformed JSON/, /not valid JSON/);
    });

    it.each([
      ["an array", "[]"],
      ["a string", '"testhsm0"'],
      ["null", "null"],
    ])("a body that is %s", async (_name, text) => {
      await expectRefused(
        request("POST", "/api/backups", text),
        400,
        /Invalid backup request/,
        /must be a JSON object/,
      );
    });

    it("a body that is not sent as JSON", async () => {
      await expectRefused(
        rawPost(JSON.stringify({ hsm: names[0] }), { "content-type": "text/plain" }),
        415,
        /Unsupported media type/,
        /Send the backup request as application\/json/,
      );
    });

    it("a body over 4096 bytes", async () => {
      const text = JSON.stringify({ hsm: names[0] }) + " ".repeat(4096);
      await expectRefused(
        request("POST", "/api/backups", text),
        413,
        /Request too large/,
        /backup request is at most 4096/,
      );
    });
  });
});

describe("POST /api/backups when the HSM refuses the start", () => {
  let app: TestApp;
  beforeAll(async () => {
    // RBAC on and no role granted: the start is answered 403, as for an app whose role was never assigned.
    app = await startTestApp({ emulator: { enforceRbac: true } });
  });
  afterAll(() => app?.stop());

  it("answers 202 with the record Failed and the HSM's reason: the request was valid, the HSM said no", async () => {
    const response = await postBackup(rawPost(undefined), app.context("postBackup"), app.deps);
    expect(response.status).toBe(202);
    const [entry] = bodyOf(response).backups;
    expect(entry.outcome).toBe("Failed");
    expect(entry.record).toMatchObject({ status: "Failed", trigger: "http", requestedBy: "function key" });
    expect(entry.record.errorMessage).toMatch(/403|Forbidden|not authorized|permission/i);
    expect(bodyOf(await getBackup(get(entry.statusUrl), app.context("getBackup"), app.deps)).status).toBe("Failed");
  });
});

describe("POST /api/backups when the catalog's storage cannot be reached", () => {
  it("answers 503 problem+json with each HSM's reason, and starts nothing", async () => {
    const app = await startTestApp({ hsmCount: 2 });
    try {
      // The real dependencies, with the storage account down: its first call fails as a refused connection does.
      const deps = {
        ...app.deps,
        prepare: () => Promise.reject(new Error("connect ECONNREFUSED 127.0.0.1:10002")),
      };
      const response = await postBackup(rawPost(undefined), app.context("postBackup"), deps);
      expect(response.status).toBe(503);
      expect(headerOf(response, "content-type")).toBe("application/problem+json");
      const body = bodyOf(response);
      expect(body.title).toBe("Backup not started");
      expect(body.detail).toMatch(
        /testhsm0: backup storage could not be reached \(.*ECONNREFUSED.*\); no backup was started; testhsm1: /,
      );
      expect(body.backups.map((b: any) => `${b.hsm} ${b.outcome}`)).toEqual([
        "testhsm0 NotRecorded",
        "testhsm1 NotRecorded",
      ]);
      expect(app.emulators.map((e) => jobStartRequests(e).length)).toEqual([0, 0]);
    } finally {
      await app.stop();
    }
  });
});
