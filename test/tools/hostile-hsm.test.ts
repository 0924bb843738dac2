/**
 * The hostile HSM stand-in: the Key Vault challenge, scripted answers, recorded requests, and that
 * the app's own ManagedHsmBackupClient runs backup and restores to Succeeded against its defaults.
 */
import type { TokenCredential } from "@azure/core-auth";
import { afterEach, describe, expect, it } from "vitest";
import { ManagedHsmBackupClient } from "../../src/lib/hsm/client.js";
import {
  RETRY_AFTER_DAY,
  RETRY_AFTER_FAR_DATE,
  hostile,
  jobStatus,
  sasEcho,
  startHostileHsm,
  type HostileHsm,
  type HostileHsmOptions,
  type SasEchoForm,
} from "../support/hostile-hsm.js";

const credential: TokenCredential = { getToken: async () => ({ token: "t", expiresOnTimestamp: Date.now() + 3600e3 }) };
const STORAGE = "https://acct.blob.core.windows.net/backups";
const SAS = "sv=2025-11-05&sr=c&sp=crdw&se=2030-01-01T00%3A00Z&sig=abc";

const started: HostileHsm[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((h) => h.stop()));
});

async function hsm(options?: HostileHsmOptions): Promise<HostileHsm> {
  const h = await startHostileHsm(options);
  started.push(h);
  return h;
}

function client(h: HostileHsm): ManagedHsmBackupClient {
  return new ManagedHsmBackupClient(h.url, credential, { defaultPollIntervalMs: 5, delay: async () => {} });
}

/** An authenticated raw call, for answers the app's client would refuse to show as they are. */
async function call(
  h: HostileHsm,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; headers: Headers; text: string; json: any }> {
  const response = await fetch(`${h.url}${path}`, {
    method,
    headers: { authorization: "Bearer t", ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    redirect: "manual",
  });
  const text = await response.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, text, json };
}

describe("hostile HSM: protocol", () => {
  it("challenges a request without a bearer token exactly like the real service, and records it", async () => {
    const h = await hsm({ tenantId: "72f988bf-86f1-41af-91ab-2d7cd011db47" });
    const response = await fetch(`${h.url}/backup?api-version=7.6`, { method: "POST" });
    expect(response.status).toBe(401);
    expect(response.headers.get("www-authenticate")).toBe(
      'Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://managedhsm.azure.net"',
    );
    expect(response.headers.get("content-length")).toBe("0");
    expect(h.requests).toMatchObject([
      { method: "POST", path: "/backup", query: { "api-version": "7.6" }, challenged: true, answered: 401, body: null },
    ]);
    expect(h.requests[0]!.headers.authorization).toBe("absent");
    expect(h.authenticated()).toHaveLength(0);
  });

  it("with challenge off, answers unauthenticated requests from the script", async () => {
    const h = await hsm({ challenge: false });
    const response = await fetch(`${h.url}/restore/abc/pending`);
    expect(response.status).toBe(200);
  });

  it("records method, path, query, body and redacts Authorization to present", async () => {
    const h = await hsm();
    await call(h, "POST", "/backup?api-version=7.6", { storageResourceUri: STORAGE, token: "tok" });
    expect(h.requests[0]).toMatchObject({
      method: "POST",
      path: "/backup",
      query: { "api-version": "7.6" },
      body: { storageResourceUri: STORAGE, token: "tok" },
      challenged: false,
      answered: 202,
    });
    expect(h.requests[0]!.headers.authorization).toBe("present");
    expect(JSON.stringify(h.requests)).not.toContain("Bearer");
  });

  it("defaults: 202 + Azure-AsyncOperation back to the origin used, then Succeeded with a folder under the storage URI", async () => {
    const h = await hsm({ name: "contoso" });
    const start = await call(h, "POST", "/backup?api-version=7.6", { storageResourceUri: `${STORAGE}/`, token: "tok" });
    expect(start.status).toBe(202);
    expect(start.json).toMatchObject({
      status: "InProgress",
      statusDetails: null,
      error: null,
      endTime: null,
      azureStorageBlobContainerUri: null,
    });
    expect(start.json.jobId).toMatch(/^[0-9a-f]{32}$/);
    expect(Math.abs(start.json.startTime - Date.now() / 1000)).toBeLessThan(5);
    expect(start.headers.get("azure-asyncoperation")).toBe(`${h.url}/backup/${start.json.jobId}/pending`);
    const status = await call(h, "GET", `/backup/${start.json.jobId}/pending`);
    expect(status.json).toMatchObject({ status: "Succeeded", jobId: start.json.jobId });
    expect(status.json.azureStorageBlobContainerUri).toMatch(new RegExp(`^${STORAGE}/mhsm-contoso-\\d{14}\\d{2}$`));
    expect(status.json.endTime).toBeGreaterThanOrEqual(status.json.startTime);

    const restore = await call(h, "PUT", "/keys/k1/restore", {
      sasTokenParameters: { storageResourceUri: STORAGE, token: "tok" },
      folder: "mhsm-x-1",
    });
    expect(restore.status).toBe(202);
    expect(restore.json).not.toHaveProperty("azureStorageBlobContainerUri");
    expect(restore.headers.get("azure-asyncoperation")).toBe(`${h.url}/restore/${restore.json.jobId}/pending`);
    expect((await call(h, "GET", `/restore/${restore.json.jobId}/pending`)).json).toMatchObject({
      status: "Succeeded",
      jobId: restore.json.jobId,
    });
    expect((await call(h, "GET", "/keys/k1")).status).toBe(404);

    const pre = await call(h, "POST", "/prebackup", { storageResourceUri: STORAGE, token: "tok" });
    expect((await call(h, "GET", `/backup/${pre.json.jobId}/pending`)).json).toMatchObject({
      status: "Succeeded",
      azureStorageBlobContainerUri: null,
    });
    const unknown = await call(h, "GET", "/backup/0123456789abcdef0123456789abcdef/pending");
    expect(unknown.json.azureStorageBlobContainerUri).toMatch(
      /^https:\/\/hostilestorage\.blob\.core\.windows\.net\/backups\/mhsm-contoso-\d{16}$/,
    );
  });

  it("answers a route from its script in order, repeating the last answer; a newer script wins", async () => {
    const h = await hsm();
    h.on("GET", /^\/backup\/[^/]+\/pending$/, [
      jobStatus("backup"),
      { status: 500, body: "boom" },
      jobStatus("backup", { status: "Failed" }),
    ]);
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await call(h, "GET", "/backup/j/pending")).json?.status ?? "500");
    expect(statuses).toEqual(["InProgress", "500", "Failed", "Failed"]);
    h.on("GET", "/backup/j/pending", { status: 204 });
    expect((await call(h, "GET", "/backup/j/pending")).status).toBe(204);
    expect((await call(h, "GET", "/backup/other/pending")).json.status).toBe("Failed");
  });

  it("hang never answers and lostResponse drops the connection; stop() still returns at once", async () => {
    const h = await hsm();
    h.on("POST", "/backup", ["lostResponse", "hang"]);
    await expect(call(h, "POST", "/backup", {})).rejects.toThrow();
    const pending = call(h, "POST", "/backup", {}).then(
      () => "answered",
      () => "dropped",
    );
    await new Promise((r) => setTimeout(r, 100));
    expect(h.requests.map((r) => r.answered)).toEqual(["lostResponse", "hang"]);
    const began = Date.now();
    await h.stop();
    expect(Date.now() - began).toBeLessThan(1000);
    expect(await pending).toBe("dropped");
  });
});

describe("hostile HSM: the app's client against the defaults", () => {
  it("runs a backup to Succeeded through the challenge, polling the Azure-AsyncOperation URL", async () => {
    const h = await hsm();
    const poller = await client(h).beginBackup(STORAGE, SAS);
    const final = await poller.pollUntilDone();
    expect(final.status).toBe("Succeeded");
    expect(final.folderUri).toMatch(new RegExp(`^${STORAGE}/mhsm-hostilehsm-\\d{16}$`));
    expect(h.requests.map((r) => [r.method, r.path, r.challenged])).toEqual([
      ["POST", "/backup", true],
      ["POST", "/backup", false],
      ["GET", `/backup/${poller.jobId}/pending`, false],
    ]);
    expect(h.requests[1]!.body).toEqual({ storageResourceUri: STORAGE, token: SAS });
    expect(h.requests[2]!.query).toEqual({ "api-version": "7.6" });
  });

  it("runs a full restore and a selective key restore to Succeeded", async () => {
    const h = await hsm();
    const c = client(h);
    const folder = `${STORAGE}/mhsm-hostilehsm-2026120100000000`;
    expect((await (await c.beginRestore(folder, SAS)).pollUntilDone()).status).toBe("Succeeded");
    expect((await (await c.beginSelectiveKeyRestore("k1", folder, SAS)).pollUntilDone()).status).toBe("Succeeded");
    expect(h.authenticated("PUT").map((r) => [r.path, r.body])).toEqual([
      [
        "/restore",
        {
          sasTokenParameters: { storageResourceUri: STORAGE, token: SAS },
          folderToRestore: "mhsm-hostilehsm-2026120100000000",
        },
      ],
      [
        "/keys/k1/restore",
        { sasTokenParameters: { storageResourceUri: STORAGE, token: SAS }, folder: "mhsm-hostilehsm-2026120100000000" },
      ],
    ]);
    expect(h.authenticated("GET", /^\/restore\/[0-9a-f]{32}\/pending$/)).toHaveLength(2);
  });

  it("scripted InProgress polls are followed until Succeeded", async () => {
    const h = await hsm();
    h.on("GET", /^\/backup\/[^/]+\/pending$/, [
      jobStatus("backup"),
      jobStatus("backup"),
      jobStatus("backup", { status: "Succeeded", azureStorageBlobContainerUri: `${STORAGE}/mhsm-x-1` }),
    ]);
    const final = await (await client(h).beginBackup(STORAGE, SAS)).pollUntilDone();
    expect(final.folderUri).toBe(`${STORAGE}/mhsm-x-1`);
    expect(h.authenticated("GET")).toHaveLength(3);
  });
});

describe("hostile HSM: ready-made hostile answers have the shapes they promise", () => {
  it("start answers: job-1, HTML with a good polling header", async () => {
    const h = await hsm();
    h.on("POST", "/backup", [hostile.badJobIdStart("backup"), hostile.htmlStart("backup")]);
    const bad = await call(h, "POST", "/backup", {});
    expect(bad.json.jobId).toBe("job-1");
    expect(bad.headers.get("azure-asyncoperation")).toBe(`${h.url}/backup/job-1/pending`);
    const html = await call(h, "POST", "/backup", {});
    expect(html.status).toBe(202);
    expect(html.headers.get("content-type")).toBe("text/html");
    expect(html.text).toMatch(/^<html>/);
    expect(html.headers.get("azure-asyncoperation")).toMatch(new RegExp(`^${h.url}/backup/[0-9a-f]{32}/pending$`));
  });

  it("status answers: endTime 1e15, TimedOut, no folder, a foreign folder, another job's status", async () => {
    const h = await hsm();
    h.on("GET", /pending$/, [
      hostile.farFutureEnd("backup"),
      hostile.timedOut("restore"),
      hostile.succeededWithoutFolder(),
      hostile.foreignFolder(),
      hostile.otherJob("backup"),
    ]);
    const path = "/backup/0123456789abcdef0123456789abcdef/pending";
    expect((await call(h, "GET", path)).json).toMatchObject({ status: "Succeeded", endTime: 1e15 });
    expect((await call(h, "GET", "/restore/r1/pending")).json).toMatchObject({ status: "TimedOut", jobId: "r1" });
    expect((await call(h, "GET", path)).json).toMatchObject({
      status: "Succeeded",
      azureStorageBlobContainerUri: null,
    });
    expect((await call(h, "GET", path)).json.azureStorageBlobContainerUri).toMatch(
      /^https:\/\/attacker\.blob\.core\.windows\.net\/loot\/mhsm-/,
    );
    const other = (await call(h, "GET", path)).json;
    expect(other.jobId).toMatch(/^[0-9a-f]{32}$/);
    expect(other.jobId).not.toBe("0123456789abcdef0123456789abcdef");
  });

  it("redirect and day-long or far-future Retry-After", async () => {
    const h = await hsm();
    h.on("GET", /pending$/, [
      hostile.redirect(),
      hostile.comeBackLater("backup"),
      hostile.comeBackLater("backup", RETRY_AFTER_FAR_DATE),
    ]);
    const redirect = await call(h, "GET", "/backup/j/pending");
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get("location")).toBe("https://attacker.example/backup");
    const day = await call(h, "GET", "/backup/j/pending");
    expect([day.json.status, day.headers.get("retry-after")]).toEqual(["InProgress", RETRY_AFTER_DAY]);
    expect(Date.parse((await call(h, "GET", "/backup/j/pending")).headers.get("retry-after")!)).toBeGreaterThan(
      Date.parse("9999-01-01"),
    );
  });

  it("errors that echo a SAS signature, in every form", async () => {
    const signature = "Zm9v+YmFy/c2ln=";
    const forms: Record<SasEchoForm, string> = {
      urlEncoded: `sig%3D${encodeURIComponent(signature)}`,
      doubleEncoded: `sig%253D${encodeURIComponent(encodeURIComponent(signature))}`,
      json: `"sig":"${signature}"`,
      header: `signature: ${signature}`,
    };
    const h = await hsm();
    for (const [form, expected] of Object.entries(forms) as [SasEchoForm, string][]) {
      expect(sasEcho(signature, form)).toContain(expected);
      h.on("POST", "/backup", hostile.sasEchoError(signature, form));
      const start = await call(h, "POST", "/backup", {});
      expect(start.status).toBe(400);
      expect(start.json.error).toMatchObject({ code: "InvalidParameter", message: sasEcho(signature, form) });
      h.on("GET", /pending$/, hostile.sasEchoFailed("backup", signature, form));
      const failed = (await call(h, "GET", "/backup/j/pending")).json;
      expect(failed).toMatchObject({ status: "Failed", error: { code: "StorageAccessFailed" } });
      expect(failed.error.message).toContain(expected);
    }
  });
});
