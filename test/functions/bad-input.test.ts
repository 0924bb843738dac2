/**
 * Client mistakes on every route: each is answered with a 4xx application/problem+json that says what
 * was wrong, and changes nothing — no catalog entity is added or modified (raw entities, etags
 * included, are compared before and after) and no job start reaches the HSM emulator.
 */
import { HttpRequest, type HttpResponseInit } from "@azure/functions";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getBackup, listBackups } from "../../src/handlers/backups.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { getRestore, postRestore } from "../../src/handlers/restores.js";
import { Catalog } from "../../src/lib/catalog.js";
import { parseConfig, type Env } from "../../src/lib/config.js";
import { createDeps, type AppDeps } from "../../src/lib/deps.js";
import { startHsmEmulator, type HsmEmulator } from "../../tools/hsm-emulator/index.js";
import {
  bodyOf,
  catalogEntities,
  Clock,
  get,
  headerOf,
  jobStartRequests,
  onTime,
  postJson,
  request,
  startTestApp,
  waitForRestore,
  type TestApp,
} from "../support/app.js";

const URL_BASE = "http://localhost:7071";
const HALF_HOUR_AND_A_BIT = 31 * 60_000;

/** A POST /api/restores with exactly these headers (request() always adds a JSON content type). */
function rawPost(body: string | undefined, headers: Record<string, string>): HttpRequest {
  return new HttpRequest({
    method: "POST",
    url: `${URL_BASE}/api/restores`,
    headers,
    ...(body !== undefined ? { body: { string: body } } : {}),
  });
}

interface Expected {
  readonly status: number;
  readonly title: RegExp;
  readonly detail: RegExp;
}

/**
 * Sends one request and checks that it was refused as expected and left no trace: the catalog's raw
 * entities are unchanged and no emulator saw a new backup/restore start request.
 */
async function expectRefused(
  app: TestApp,
  send: () => Promise<HttpResponseInit>,
  expected: Expected,
  emulators: readonly HsmEmulator[] = app.emulators,
): Promise<HttpResponseInit> {
  const entitiesBefore = await catalogEntities(app);
  const startsBefore = emulators.map((e) => jobStartRequests(e).length);
  const response = await send();
  const body = bodyOf(response);
  expect({ status: response.status, body }).toMatchObject({ status: expected.status });
  expect(headerOf(response, "content-type")).toBe("application/problem+json");
  expect(body).toMatchObject({ type: "about:blank", status: expected.status });
  expect(body.title).toMatch(expected.title);
  expect(body.detail).toMatch(expected.detail);
  // Echoed input is cut short: a megabyte of it never comes back.
  expect(body.detail.length).toBeLessThan(400);
  expect(await catalogEntities(app)).toEqual(entitiesBefore);
  expect(emulators.map((e) => jobStartRequests(e).length)).toEqual(startsBefore);
  return response;
}

/** A second deployment reading and writing the same catalog, with other settings and its own clock. */
function otherDeployment(app: TestApp, env: Env, clock = new Clock()): AppDeps {
  return createDeps(parseConfig({ ...app.env, ...env }), { ...app.depsOptions, now: clock.now });
}

/** An id that has the right shape but names no record. */
const unknownId = (): string => Catalog.newId(new Date(Date.UTC(2001, 0, 1)));

describe("POST /api/restores refuses client mistakes and changes nothing", () => {
  let app: TestApp;
  let hsm: HsmEmulator;
  let succeeded: any;
  let failed: any;
  let restoreId: string;

  const post =
    (req: HttpRequest, deps: AppDeps = app.deps) =>
    () =>
      postRestore(req, app.context("postRestore"), deps);
  const postBody = (body: unknown) => post(postJson("/api/restores", body));
  const postText = (text: string) => post(request("POST", "/api/restores", text));

  beforeAll(async () => {
    app = await startTestApp();
    hsm = app.emulators[0]!;
    hsm.keys.create("k1");
    hsm.keys.create("k2");
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    hsm.faults.failNextJob("backup");
    app.clock.advance(24 * 3_600_000); // the next night: a schedule slot of its own
    // The nightly run fails the invocation when a backup fails: that is the point here.
    await expect(nightlyBackup(onTime, app.context("nightlyBackup"), app.deps)).rejects.toThrow(
      /Backup did not succeed/,
    );
    const { items } = bodyOf(await listBackups(get("/api/backups"), app.context(), app.deps));
    succeeded = items.find((b: any) => b.status === "Succeeded");
    failed = items.find((b: any) => b.status === "Failed");
    expect(succeeded).toBeDefined();
    expect(failed).toBeDefined();
    // A real restore record, so its id can be offered where a backup id belongs.
    const started = await postRestore(
      postJson("/api/restores", { backupId: succeeded.id, keyName: "k1" }),
      app.context(),
      app.deps,
    );
    expect(started.status).toBe(202);
    restoreId = (await waitForRestore(app, bodyOf(started).statusUrl)).id;
  });
  afterAll(() => app?.stop());

  it("accepts a well-formed request (the baseline the refusals below differ from)", async () => {
    const starts = jobStartRequests(hsm).length;
    const response = await postRestore(
      postJson("/api/restores", { backupId: succeeded.id, keyName: "k2" }),
      app.context(),
      app.deps,
    );
    expect(response.status).toBe(202);
    await waitForRestore(app, bodyOf(response).statusUrl);
    expect(jobStartRequests(hsm).length).toBeGreaterThan(starts);
  });

  it.each([
    ["an unterminated object", '{"backupId": "'],
    ["a missing value", '{"backupId": }'],
    ["plain text", "restore please"],
    ["single quotes", "{'backupId': '0000000000000-00000000'}"],
    ["a trailing comma", '{"backupId": "0000000000000-00000000",}'],
    ["an empty body", ""],
  ])("refuses malformed JSON: %s", async (_name, text) => {
    await expectRefused(app, postText(text), { status: 400, title: /Malformed JSON/, detail: /not valid JSON/ });
  });

  it.each([
    ["an array", "[]"],
    ["an array holding the request", () => JSON.stringify([{ backupId: succeeded.id }])],
    ["a string", () => JSON.stringify(succeeded.id)],
    ["null", "null"],
    ["a number", "42"],
    ["a boolean", "true"],
  ])("refuses a body that is not a JSON object: %s", async (_name, text) => {
    await expectRefused(app, postText(typeof text === "function" ? text() : text), {
      status: 400,
      title: /Invalid restore request/,
      detail: /must be a JSON object/,
    });
  });

  it.each([
    ["an empty object", {}],
    ["only a keyName", { keyName: "k1" }],
  ])("refuses a request without backupId: %s", async (_name, body) => {
    await expectRefused(app, postBody(body), {
      status: 400,
      title: /Invalid restore request/,
      detail: /backupId is required/,
    });
  });

  it.each([
    ["number", 8204170141003],
    ["object", { id: "x" }],
    ["array", ["0000000000000-00000000"]],
    ["null", null],
    ["boolean", true],
  ])("refuses a backupId of type %s", async (type, backupId) => {
    await expectRefused(app, postBody({ backupId }), {
      status: 400,
      title: /Invalid restore request/,
      detail: new RegExp(`backupId of type ${type}`),
    });
  });

  it.each([
    ["a quote", () => "'"],
    ["an OData tautology", () => "' or '1' eq '1"],
    ["a valid id followed by an OData clause", () => `${succeeded.id}' or '1' eq '1`],
    ["a valid id followed by ' or '", () => `${succeeded.id} or `],
    ["a percent-encoded quote", () => "%27"],
    ["a percent-encoded quote after a valid id", () => `${succeeded.id}%27`],
    ["' or ' alone", () => " or "],
    ["path traversal", () => "../../restores"],
    ["path traversal after a valid id", () => `${succeeded.id}/../../x`],
    ["an encoded path traversal", () => "..%2F..%2Fbackup"],
    ["a trailing newline", () => `${succeeded.id}\n`],
    ["upper-case hex", () => succeeded.id.replace(/-.*/, "-ABCDEF12")],
    ["an empty string", () => ""],
    ["1000 characters", () => "1".repeat(1000)],
  ])("refuses a backupId with %s", async (_name, make) => {
    const backupId = make();
    const response = await expectRefused(app, postBody({ backupId }), {
      status: 400,
      title: /Invalid restore request/,
      detail: /backupId .* is not a backup id/s,
    });
    if (backupId.length > 100) expect(bodyOf(response).detail).not.toContain(backupId);
  });

  it("answers 404 for a well-formed backupId that is not recorded, naming it", async () => {
    const id = unknownId();
    await expectRefused(app, postBody({ backupId: id }), {
      status: 404,
      title: /Backup not found/,
      detail: new RegExp(id),
    });
    await expectRefused(app, postBody({ backupId: id, keyName: "k1" }), {
      status: 404,
      title: /Backup not found/,
      detail: new RegExp(id),
    });
  });

  it("answers 404 for the id of a restore offered as a backupId", async () => {
    await expectRefused(app, postBody({ backupId: restoreId, keyName: "k1" }), {
      status: 404,
      title: /Backup not found/,
      detail: new RegExp(restoreId),
    });
  });

  it.each([
    ["a number", 5, /keyName of type number/],
    ["null", null, /keyName of type null/],
    ["an array", ["k1"], /keyName of type array/],
    ["an object", { name: "k1" }, /keyName of type object/],
    ["a boolean", false, /keyName of type boolean/],
    ["an empty string", "", /keyName "" is not a key name/],
    ["a space", "k 1", /keyName "k 1" is not a key name/],
    ["a quote", "k1'", /keyName "k1'" is not a key name/],
    ["an OData clause", "k1' or '1' eq '1", /keyName .* is not a key name/],
    ["a slash (path traversal)", "../k1", /keyName .* is not a key name/],
    ["a path into another route", "k1/restore", /keyName .* is not a key name/],
    ["an underscore", "k_1", /keyName .* is not a key name/],
    ["non-ASCII letters", "schlüssel", /keyName .* is not a key name/],
    ["128 characters", "k".repeat(128), /keyName .* is not a key name \(1-127/],
  ])("refuses a keyName that is %s", async (_name, keyName, detail) => {
    await expectRefused(app, postBody({ backupId: succeeded.id, keyName }), {
      status: 400,
      title: /Invalid restore request/,
      detail,
    });
  });

  it.each([
    ["keyname (misspelt keyName)", { keyname: "k1" }, /Unknown field\(s\): keyname/],
    ["KeyName (wrong case)", { KeyName: "k1" }, /Unknown field\(s\): KeyName/],
    ["key", { key: "k1" }, /Unknown field\(s\): key\b/],
    ["an extra field beside a valid keyName", { keyName: "k1", force: true }, /Unknown field\(s\): force/],
    ["hsm (no choosing another target)", { hsm: "elsewhere" }, /Unknown field\(s\): hsm/],
  ])(
    "refuses an unknown field: %s — a one-key restore must never turn into a full one",
    async (_name, extra, detail) => {
      await expectRefused(app, postBody({ backupId: succeeded.id, ...extra }), {
        status: 400,
        title: /Invalid restore request/,
        detail,
      });
    },
  );

  it("refuses an unknown field even when it is __proto__", async () => {
    const text = `{"backupId":"${succeeded.id}","__proto__":{"keyName":"k1"}}`;
    await expectRefused(app, postText(text), {
      status: 400,
      title: /Invalid restore request/,
      detail: /Unknown field\(s\): __proto__/,
    });
  });

  it("refuses the whole list of unknown fields, not just the first", async () => {
    await expectRefused(app, postBody({ BackupId: succeeded.id, keyname: "k1" }), {
      status: 400,
      title: /Invalid restore request/,
      detail: /BackupId, keyname/,
    });
  });

  it.each([
    ["text/plain", { "content-type": "text/plain" }],
    ["application/x-www-form-urlencoded", { "content-type": "application/x-www-form-urlencoded" }],
    ["application/xml", { "content-type": "application/xml" }],
    ["application/jsonp (a prefix is not a match)", { "content-type": "application/jsonp" }],
    ["no content type at all", {}],
  ])("refuses a valid body sent as %s with 415", async (_name, headers) => {
    const body = JSON.stringify({ backupId: succeeded.id, keyName: "k1" });
    await expectRefused(app, post(rawPost(body, headers)), {
      status: 415,
      title: /Unsupported media type/,
      detail: /application\/json/,
    });
  });

  describe("oversized bodies (a valid selective restore padded past 4096 bytes, so only the size is wrong)", () => {
    const padded = (bytes: number) => {
      const text = JSON.stringify({ backupId: succeeded.id, keyName: "k1" });
      return text + " ".repeat(bytes - text.length);
    };
    const tooLarge = { status: 413, title: /Request too large/, detail: /at most 4096 bytes/ };

    it("accepts exactly 4096 bytes", async () => {
      const starts = jobStartRequests(hsm).length;
      const response = await postRestore(
        rawPost(padded(4096), { "content-type": "application/json" }),
        app.context(),
        app.deps,
      );
      expect(response.status).toBe(202);
      await waitForRestore(app, bodyOf(response).statusUrl);
      expect(jobStartRequests(hsm).length).toBe(starts + 1);
    });

    it.each([
      ["no Content-Length", {}],
      ["an honest Content-Length", { "content-length": "4097" }],
      ["a Content-Length that lies smaller", { "content-length": "10" }],
      ["a Content-Length of zero", { "content-length": "0" }],
      ["a Content-Length that is not a number", { "content-length": "small" }],
    ])("refuses 4097 bytes with %s", async (_name, headers) => {
      await expectRefused(
        app,
        post(rawPost(padded(4097), { "content-type": "application/json", ...headers })),
        tooLarge,
      );
    });

    it("refuses a declared Content-Length over the limit before reading the body", async () => {
      await expectRefused(
        app,
        post(rawPost(padded(200), { "content-type": "application/json", "content-length": "1048576" })),
        tooLarge,
      );
    });

    it("counts bytes, not characters", async () => {
      const text = JSON.stringify({ backupId: succeeded.id, keyName: "k1", note: "é".repeat(2100) });
      expect(text.length).toBeLessThan(4096);
      await expectRefused(app, post(rawPost(text, { "content-type": "application/json; charset=utf-8" })), tooLarge);
    });

    it("refuses a megabyte without echoing it", async () => {
      const response = await expectRefused(
        app,
        post(rawPost(padded(1024 * 1024), { "content-type": "application/json" })),
        tooLarge,
      );
      expect(JSON.stringify(bodyOf(response)).length).toBeLessThan(1000);
    });
  });

  it("answers 409 for a backup that Failed, full or selective", async () => {
    const detail = new RegExp(`Backup ${failed.id} .* is Failed; only a Succeeded backup can be restored`);
    await expectRefused(app, postBody({ backupId: failed.id, keyName: "k1" }), {
      status: 409,
      title: /Backup cannot be restored/,
      detail,
    });
    const later = otherDeployment(app, {}, new Clock(HALF_HOUR_AND_A_BIT));
    await expectRefused(app, post(postJson("/api/restores", { backupId: failed.id }), later), {
      status: 409,
      title: /Backup cannot be restored/,
      detail,
    });
  });

  it("answers 409 for a backup of an HSM this deployment does not list, and calls neither HSM", async () => {
    const other = await startHsmEmulator({ name: "otherhsm", retryAfterSeconds: 0, jobDurationMs: 100 });
    try {
      const elsewhere = otherDeployment(app, { MANAGED_HSM_URLS: other.url }, new Clock(HALF_HOUR_AND_A_BIT));
      const expected = {
        status: 409,
        title: /Backup belongs to no configured HSM/,
        detail: new RegExp(`taken from ${succeeded.hsmUrl}, which is not in MANAGED_HSM_URLS`),
      };
      await expectRefused(
        app,
        post(postJson("/api/restores", { backupId: succeeded.id, keyName: "k1" }), elsewhere),
        expected,
        [hsm, other],
      );
      await expectRefused(app, post(postJson("/api/restores", { backupId: succeeded.id }), elsewhere), expected, [
        hsm,
        other,
      ]);
      expect(other.requests).toEqual([]);
    } finally {
      await other.stop();
    }
  });

  it("answers 409 with Retry-After for a full restore of a backup younger than 30 minutes", async () => {
    const now = new Clock();
    const justNow = otherDeployment(app, {}, now);
    const response = await expectRefused(
      app,
      post(postJson("/api/restores", { backupId: succeeded.id, confirm: succeeded.hsmName }), justNow),
      {
        status: 409,
        title: /Backup too recent for a full restore/,
        detail: /at least 30 minutes before a full restore/,
      },
    );
    const allowedAt = Date.parse(succeeded.endedAt) + 30 * 60_000;
    const retryAfter = Number(headerOf(response, "retry-after"));
    expect(retryAfter).toBeGreaterThan(0);
    expect(Math.abs(now.now().getTime() + retryAfter * 1000 - allowedAt)).toBeLessThan(5_000);
    expect(bodyOf(response).retryAfter).toBe(new Date(allowedAt).toISOString());
  });

  it("answers 403 for every restore when RESTORE_ENABLED=false", async () => {
    const disabled = otherDeployment(app, { RESTORE_ENABLED: "false" }, new Clock(HALF_HOUR_AND_A_BIT));
    const expected = { status: 403, title: /Restore is disabled/, detail: /RESTORE_ENABLED=false/ };
    await expectRefused(app, post(postJson("/api/restores", { backupId: succeeded.id }), disabled), expected);
    await expectRefused(
      app,
      post(postJson("/api/restores", { backupId: succeeded.id, keyName: "k1" }), disabled),
      expected,
    );
  });
});

describe("POST /api/restores while a restore runs on the same HSM", () => {
  let app: TestApp;
  let hsm: HsmEmulator;
  let backupId: string;

  beforeAll(async () => {
    ({ app, hsm, backupId } = await appWithOneBackup());
    app.clock.advance(HALF_HOUR_AND_A_BIT);
  });
  // Stopping the emulator ends the slow job; nothing waits for it.
  afterAll(() => app?.stop());

  it("answers 409 HSM busy, naming the running restore, and the HSM sees exactly one restore start", async () => {
    hsm.faults.setJobDurationMs(60_000);
    const first = await postRestore(postJson("/api/restores", { backupId, keyName: "k1" }), app.context(), app.deps);
    expect(first.status).toBe(202);
    const running = bodyOf(first);
    expect(running.status).toBe("Running");

    const expected = { status: 409, title: /HSM busy/, detail: new RegExp(`Restore ${running.id} is still Running`) };
    const selective = await expectRefused(
      app,
      () => postRestore(postJson("/api/restores", { backupId, keyName: "k1" }), app.context(), app.deps),
      expected,
    );
    expect(bodyOf(selective).activeRecord).toBe(`/api/restores/${running.id}`);
    await expectRefused(
      app,
      () =>
        postRestore(
          postJson("/api/restores", { backupId, confirm: app.deps.config.hsms[0]!.name }),
          app.context(),
          app.deps,
        ),
      expected,
    );

    const restoreStarts = jobStartRequests(hsm).filter(
      (r) => r.method === "PUT" && r.status === 202 && r.path !== "/prerestore",
    );
    expect(restoreStarts).toHaveLength(1);
    const status = bodyOf(await getRestore(get(running.statusUrl), app.context(), app.deps));
    expect(status.status).toBe("Running");
  });
});

/** A fresh app whose only HSM holds key k1 and has one successful backup. */
async function appWithOneBackup(): Promise<{ app: TestApp; hsm: HsmEmulator; backupId: string }> {
  const app = await startTestApp();
  const hsm = app.emulators[0]!;
  hsm.keys.create("k1");
  await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
  const backupId = bodyOf(await listBackups(get("/api/backups"), app.context(), app.deps)).items[0].id;
  return { app, hsm, backupId };
}

/**
 * Holds each caller until `parties` have arrived or `timeoutMs` has passed. It only changes timing:
 * an implementation that excludes concurrent starts correctly stays correct with it in place.
 */
function rendezvous(parties: number, timeoutMs: number): () => Promise<void> {
  const waiting: (() => void)[] = [];
  return () =>
    new Promise<void>((resolve) => {
      waiting.push(resolve);
      if (waiting.length >= parties) waiting.splice(0).forEach((release) => release());
      else setTimeout(resolve, timeoutMs);
    });
}

describe("POST /api/restores submitted twice at once (a double click, a retrying client)", () => {
  let app: TestApp;
  let hsm: HsmEmulator;
  let backupId: string;

  beforeAll(async () => {
    ({ app, hsm, backupId } = await appWithOneBackup());
  });
  afterAll(() => app?.stop());

  it("starts one restore: the other is answered 409 HSM busy, reaches no HSM and records nothing", async () => {
    hsm.faults.setJobDurationMs(60_000);
    // The real catalog, with each record write held until both requests are ready to write: this
    // makes the interleaving that a double click produces by chance happen every time.
    const arrive = rendezvous(2, 1000);
    const catalog: Catalog = Object.create(app.deps.catalog);
    catalog.insert = async (kind, record) => {
      await arrive();
      return app.deps.catalog.insert(kind, record);
    };
    const deps: AppDeps = { ...app.deps, catalog };
    const entitiesBefore = await catalogEntities(app);
    const startsBefore = jobStartRequests(hsm).length;
    const logsBefore = app.logs.length;

    const responses = await Promise.all(
      [1, 2].map(() =>
        postRestore(postJson("/api/restores", { backupId, keyName: "k1" }), app.context("postRestore"), deps),
      ),
    );

    expect(responses.map((r) => r.status).sort()).toEqual([202, 409]);
    expect(bodyOf(responses.find((r) => r.status === 409)!).title).toBe("HSM busy");
    const added = (await catalogEntities(app)).filter((e) => !entitiesBefore.some((b) => b.rowKey === e.rowKey));
    expect(added.map((e) => `${e.partitionKey} ${e.status}`)).toEqual(["restore Running"]);
    expect(jobStartRequests(hsm).length - startsBefore).toBe(1);
    // A refused duplicate is no restore outcome: it must not raise the "restore failed" alert.
    expect(app.logs.slice(logsBefore).filter((line) => line.includes("MhsmRestoreOutcome"))).toEqual([]);
  });
});

describe("GET /api/backups refuses bad queries", () => {
  let app: TestApp;

  beforeAll(async () => {
    app = await startTestApp();
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
  });
  afterAll(() => app?.stop());

  const list = (query: string) => () => listBackups(get(`/api/backups?${query}`), app.context("listBackups"), app.deps);
  const b64 = (text: string) => encodeURIComponent(Buffer.from(text, "utf8").toString("base64"));

  it("answers a plain listing (the baseline)", async () => {
    const response = await list("top=5")();
    expect(response.status).toBe(200);
    expect(bodyOf(response).items).toHaveLength(1);
  });

  it.each([
    ["foo=1", /Unknown query parameter\(s\): foo\./],
    ["Status=Failed", /Unknown query parameter\(s\): Status\./],
    ["hsmName=x", /Unknown query parameter\(s\): hsmName\./],
    ["%24filter=PartitionKey%20ne%20%27%27", /Unknown query parameter\(s\): \$filter\./],
    ["top=5&limit=5&page=2", /Unknown query parameter\(s\): limit, page\./],
  ])("refuses an unknown query parameter: %s", async (query, detail) => {
    await expectRefused(app, list(query), { status: 400, title: /Unknown query parameter/, detail });
  });

  it.each([
    ["status=Failed&status=Succeeded", /Give each parameter once: status\./],
    ["top=1&top=500", /Give each parameter once: top\./],
    ["hsm=a&hsm=b&top=2&top=3", /Give each parameter once: hsm, top\./],
  ])("refuses a repeated query parameter (it would silently use one value): %s", async (query, detail) => {
    await expectRefused(app, list(query), { status: 400, title: /Repeated query parameter/, detail });
  });

  it.each([
    ["succeeded", "succeeded"],
    ["Done", "Done"],
    ["an OData clause", "Failed' or '1' eq '1"],
    ["empty", ""],
  ])("refuses status %s", async (_name, value) => {
    await expectRefused(app, list(`status=${encodeURIComponent(value)}`), {
      status: 400,
      title: /Invalid status/,
      detail: /is not one of Starting, Running, Succeeded, Failed, Canceled/,
    });
  });

  it.each(["0", "101", "abc", "-1", "1.5", "1e2", "", " 5", "0x10", "1000"])("refuses top=%j", async (value) => {
    await expectRefused(app, list(`top=${encodeURIComponent(value)}`), {
      status: 400,
      title: /Invalid top/,
      detail: /top must be a whole number from 1 to 100/,
    });
  });

  it.each([
    ["a quote", "'"],
    ["an OData clause", "x' or 'a' eq 'a"],
    ["a space", "a b"],
    ["a dot (a host name, not an HSM name)", "contoso.managedhsm.azure.net"],
    ["64 characters", "h".repeat(64)],
    ["empty", ""],
  ])("refuses hsm with %s", async (_name, value) => {
    await expectRefused(app, list(`hsm=${encodeURIComponent(value)}`), {
      status: 400,
      title: /Invalid hsm/,
      detail: /is not an HSM name/,
    });
  });

  it.each([
    ["not base64", encodeURIComponent("not base64!!")],
    ["base64 of text that is not JSON", b64("hello")],
    ["base64 of a JSON string", b64('"backup"')],
    ["base64 of JSON null", b64("null")],
    ["base64 of a JSON array", b64('["backup"]')],
    ["JSON without nextPartitionKey", b64('{"nextRowKey":"x"}')],
    ["JSON with an empty nextPartitionKey", b64('{"nextPartitionKey":""}')],
    ["JSON with a numeric nextPartitionKey", b64('{"nextPartitionKey":5}')],
    ["JSON with a numeric nextRowKey", b64('{"nextPartitionKey":"backup","nextRowKey":7}')],
    ["empty", ""],
  ])("refuses a continuationToken that is %s", async (_name, token) => {
    await expectRefused(app, list(`continuationToken=${token}`), {
      status: 400,
      title: /Invalid continuation token/,
      detail: /not a token returned by this listing/,
    });
  });

  it("refuses a continuationToken longer than any the listing returns", async () => {
    const token = b64(JSON.stringify({ nextPartitionKey: "backup", nextRowKey: "r".repeat(1200) }));
    await expectRefused(app, list(`continuationToken=${token}`), {
      status: 400,
      title: /Invalid continuation token/,
      detail: /longer than any token this listing returns/,
    });
  });
});

describe("GET /api/backups/{id} and /api/restores/{id} refuse malformed ids", () => {
  let app: TestApp;
  let backupId: string;
  let restoreId: string;

  beforeAll(async () => {
    app = await startTestApp();
    app.emulators[0]!.keys.create("k1");
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    backupId = bodyOf(await listBackups(get("/api/backups"), app.context(), app.deps)).items[0].id;
    const started = await postRestore(postJson("/api/restores", { backupId, keyName: "k1" }), app.context(), app.deps);
    restoreId = (await waitForRestore(app, bodyOf(started).statusUrl)).id;
  });
  afterAll(() => app?.stop());

  const routes = [
    [
      "backup",
      (id: string) => () =>
        getBackup(get(`/api/backups/${encodeURIComponent(id)}`), app.context("getBackup"), app.deps),
    ],
    [
      "restore",
      (id: string) => () =>
        getRestore(get(`/api/restores/${encodeURIComponent(id)}`), app.context("getRestore"), app.deps),
    ],
  ] as const;

  it.each(routes)("GET /api/%ss/{id} answers a known id (the baseline)", async (what, getOne) => {
    const response = await getOne(what === "backup" ? backupId : restoreId)();
    expect(response.status).toBe(200);
  });

  describe.each(routes)("GET /api/%ss/{id}", (what, getOne) => {
    it.each([
      ["a quote", () => "'"],
      ["an OData clause", () => "x' or 'a' eq 'a"],
      ["a valid id with an OData clause", () => `${backupId}' or 'a' eq 'a`],
      ["a percent-encoded quote", () => "%27"],
      ["path traversal", () => "../backups"],
      ["upper-case hex", () => backupId.replace(/-.*/, "-ABCDEF12")],
      ["a trailing newline", () => `${backupId}\n`],
      ["1000 characters", () => "9".repeat(1000)],
    ])("answers 400 for an id with %s", async (_name, make) => {
      const id = make();
      const response = await expectRefused(app, getOne(id), {
        status: 400,
        title: new RegExp(`Invalid ${what} id`),
        detail: new RegExp(`is not a ${what} id`),
      });
      if (id.length > 100) expect(bodyOf(response).detail).not.toContain(id);
    });

    it("answers 400 for an empty id", async () => {
      const send = () =>
        (what === "backup" ? getBackup : getRestore)(
          new HttpRequest({ method: "GET", url: `${URL_BASE}/api/${what}s/`, params: { id: "" } }),
          app.context(),
          app.deps,
        );
      await expectRefused(app, send, {
        status: 400,
        title: new RegExp(`Invalid ${what} id`),
        detail: new RegExp(`"" is not a ${what} id`),
      });
    });

    it("answers 404 for a well-formed id that is not recorded", async () => {
      const id = unknownId();
      const title = what === "backup" ? /Backup not found/ : /Restore not found/;
      await expectRefused(app, getOne(id), { status: 404, title, detail: new RegExp(`No ${what} with id ${id}`) });
    });

    it("answers 404 for the id of the other kind of record", async () => {
      const id = what === "backup" ? restoreId : backupId;
      const title = what === "backup" ? /Backup not found/ : /Restore not found/;
      await expectRefused(app, getOne(id), { status: 404, title, detail: new RegExp(`No ${what} with id ${id}`) });
    });
  });
});
