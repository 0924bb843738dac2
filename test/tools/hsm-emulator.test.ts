import { randomUUID } from "node:crypto";
import {
  createHttpHeaders,
  createPipelineFromOptions,
  createPipelineRequest,
  createDefaultHttpClient,
} from "@azure/core-rest-pipeline";
import { keyVaultAuthenticationPolicy } from "@azure/keyvault-common";
import { BlobServiceClient, ContainerClient, ContainerSASPermissions } from "@azure/storage-blob";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/lib/config.js";
import { startAzurite, type Azurite } from "../../tools/azurite.js";
import { HSM_DOMAIN, realNames, startHttpsEmulator } from "../support/app.js";
import {
  HSM_ROLES,
  startHsmEmulator,
  type HsmEmulator,
  type HsmEmulatorOptions,
} from "../../tools/hsm-emulator/index.js";

const API = "7.6";

let azurite: Azurite;
let blobService: BlobServiceClient;
const emulators: HsmEmulator[] = [];

beforeAll(async () => {
  azurite = await startAzurite();
  blobService = BlobServiceClient.fromConnectionString(azurite.connectionString);
}, 30_000);

afterAll(async () => {
  await azurite?.stop();
});

afterEach(async () => {
  await Promise.all(emulators.splice(0).map((emulator) => emulator.stop()));
});

async function emulator(options: HsmEmulatorOptions = {}): Promise<HsmEmulator> {
  const started = await startHsmEmulator({ name: "testhsm", jobDurationMs: 50, retryAfterSeconds: 0, ...options });
  emulators.push(started);
  return started;
}

/** An unsigned JWT like the project's local identity endpoint issues. */
function jwt(claims: Record<string, unknown> = {}): string {
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const payload = {
    aud: "https://managedhsm.azure.net",
    exp: Math.floor(Date.now() / 1000) + 3600,
    oid: "caller-oid",
    ...claims,
  };
  return `${encode({ alg: "none", typ: "JWT" })}.${encode(payload)}.`;
}

interface CallOptions {
  body?: unknown;
  token?: string | null;
  apiVersion?: string | null;
}

async function call(hsm: HsmEmulator, method: string, path: string, options: CallOptions = {}) {
  const url = new URL(hsm.url + path);
  const apiVersion = options.apiVersion === undefined ? API : options.apiVersion;
  if (apiVersion !== null) url.searchParams.set("api-version", apiVersion);
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  const token = options.token === undefined ? jwt() : options.token;
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const text = await response.text();
  return {
    status: response.status,
    headers: response.headers,
    text,
    json: text ? (JSON.parse(text) as Record<string, any>) : undefined,
  };
}

async function waitForJob(hsm: HsmEmulator, family: "backup" | "restore", jobId: string, token?: string) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const status = await call(hsm, "GET", `/${family}/${jobId}/pending`, { token });
    expect(status.status).toBe(200);
    if (status.json!.status !== "InProgress") return status.json!;
    if (Date.now() > deadline) throw new Error(`Job ${jobId} still InProgress after 10 s: ${status.text}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function newContainer(): Promise<ContainerClient> {
  const container = blobService.getContainerClient(`c${randomUUID().replace(/-/g, "")}`);
  await container.create();
  return container;
}

async function sas(container: ContainerClient, permissions: string, expiresInMs = 3_600_000): Promise<string> {
  const url = await container.generateSasUrl({
    permissions: ContainerSASPermissions.parse(permissions),
    startsOn: new Date(Date.now() - 5 * 60_000),
    expiresOn: new Date(Date.now() + expiresInMs),
  });
  return url.split("?")[1]!;
}

async function blobNames(container: ContainerClient, prefix = ""): Promise<string[]> {
  const names: string[] = [];
  for await (const blob of container.listBlobsFlat({ prefix })) names.push(blob.name);
  return names.sort();
}

async function backup(hsm: HsmEmulator, container: ContainerClient, subPath = "") {
  const started = await call(hsm, "POST", "/backup", {
    body: { storageResourceUri: container.url + subPath, token: await sas(container, "crdw") },
  });
  expect(started.status, started.text).toBe(202);
  const done = await waitForJob(hsm, "backup", started.json!.jobId);
  expect(done.status, JSON.stringify(done)).toBe("Succeeded");
  return { started, done, folderUri: done.azureStorageBlobContainerUri as string };
}

describe("HSM emulator: authentication and request validation", () => {
  it("challenges an unauthenticated request with an empty 401 like the real HSM", async () => {
    const hsm = await emulator({ tenantId: "72f988bf-86f1-41af-91ab-2d7cd011db47" });
    const probe = await call(hsm, "POST", "/backup", { token: null });
    expect(probe.status).toBe(401);
    expect(probe.text).toBe("");
    expect(probe.headers.get("www-authenticate")).toBe(
      'Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://managedhsm.azure.net"',
    );
    expect(hsm.requests.at(-1)).toMatchObject({ method: "POST", path: "/backup", status: 401, body: null });
  });

  it("rejects a token with the wrong audience or an expired one", async () => {
    const hsm = await emulator();
    const wrongAudience = await call(hsm, "GET", "/keys", { token: jwt({ aud: "https://vault.azure.net" }) });
    expect(wrongAudience.status).toBe(401);
    expect(wrongAudience.json).toEqual({
      error: {
        code: "Unauthorized",
        message: "Found token with aud=https://vault.azure.net, but expected aud=https://managedhsm.azure.net",
        innererror: null,
      },
    });
    const expired = await call(hsm, "GET", "/keys", { token: jwt({ exp: Math.floor(Date.now() / 1000) - 10 }) });
    expect(expired.status).toBe(401);
    expect(expired.json!.error.message).toMatch(/expired/);
    const trailingSlash = await call(hsm, "GET", "/keys", { token: jwt({ aud: "https://managedhsm.azure.net/" }) });
    expect(trailingSlash.status).toBe(200);
  });

  it("requires api-version except on status polls, and validates the SAS synchronously", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    expect((await call(hsm, "GET", "/keys", { apiVersion: null })).status).toBe(400);
    expect((await call(hsm, "GET", "/keys", { apiVersion: "7.1" })).json!.error.code).toBe("BadRequest");
    const poll = await call(hsm, "GET", `/backup/${"0".repeat(32)}/pending`, { apiVersion: null });
    expect(poll.status).toBe(404);
    expect(poll.json!.error.code).toBe("NotFound");

    const noExpiry = await call(hsm, "POST", "/backup", {
      body: { storageResourceUri: container.url, token: "sv=2020-08-04&sr=c&sp=rw&sig=abc" },
    });
    expect(noExpiry.status).toBe(400);
    expect(noExpiry.json).toEqual({
      error: {
        code: "BadRequest",
        message: "The customer provided SAS token is malformed. The SAS token does not contain the expiry field",
        innererror: null,
      },
    });
    const malformed = await call(hsm, "POST", "/backup", { body: { token: "se=x" } });
    expect(malformed.status).toBe(400);
    const managedIdentityTooOld = await call(hsm, "POST", "/backup", {
      apiVersion: "7.4",
      body: { storageResourceUri: container.url, useManagedIdentity: true },
    });
    expect(managedIdentityTooOld.status).toBe(400);
    expect(managedIdentityTooOld.json!.error.message).toMatch(/7\.5/);
    expect((await call(hsm, "POST", "/prebackup", { apiVersion: "7.5", body: {} })).status).toBe(400);
  });
});

describe("HSM emulator: backup and restore against Azurite", () => {
  it("writes a real backup under the container sub-path and reports the folder without the SAS", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    await call(hsm, "POST", "/keys/alpha/create", { body: { kty: "RSA" } });
    await call(hsm, "POST", "/keys/alpha/create", { body: { kty: "RSA" } });
    await call(hsm, "POST", "/keys/beta/create", { body: { kty: "EC" } });

    const { started, done, folderUri } = await backup(hsm, container, "/nightly/runs");
    expect(started.headers.get("azure-asyncoperation")).toBe(`${hsm.url}/backup/${started.json!.jobId}/pending`);
    expect(started.headers.get("retry-after")).toBe("0");
    expect(started.headers.get("content-type")).toBe("application/json; charset=utf-8");
    expect(started.headers.get("x-ms-request-id")).toBeTruthy();
    expect(started.json).toEqual({
      status: "InProgress",
      statusDetails: null,
      error: null,
      startTime: expect.any(Number),
      endTime: null,
      jobId: expect.stringMatching(/^[0-9a-f]{32}$/),
      azureStorageBlobContainerUri: null,
    });
    expect(done).toMatchObject({ status: "Succeeded", error: null, endTime: expect.any(Number) });
    expect(folderUri).toMatch(new RegExp(`^${container.url}/nightly/runs/mhsm-testhsm-\\d{16}$`));
    const folder = folderUri.slice(container.url.length + 1);
    const stamp = folder.slice(-16, -2);
    const start = new Date(done.startTime * 1000).toISOString().replace(/[-:T]/g, "").slice(0, 14);
    expect(stamp).toBe(start);

    expect(await blobNames(container)).toEqual([
      `${folder}/keys/alpha.json`,
      `${folder}/keys/beta.json`,
      `${folder}/manifest.json`,
    ]);
    const manifest = JSON.parse(
      (await container.getBlobClient(`${folder}/manifest.json`).downloadToBuffer()).toString(),
    );
    expect(manifest).toMatchObject({ format: "hsm-emulator-backup", hsmName: "testhsm", jobId: started.json!.jobId });
    expect(manifest.notice).toMatch(/NOT a real Managed HSM backup/);
    expect(manifest.keys).toEqual([
      { name: "alpha", blob: "keys/alpha.json", versions: 2, softDeleted: false },
      { name: "beta", blob: "keys/beta.json", versions: 1, softDeleted: false },
    ]);
    const recorded = hsm.requests.find((request) => request.method === "POST" && request.path === "/backup");
    expect(recorded?.body).toEqual({ storageResourceUri: `${container.url}/nightly/runs`, token: "<redacted>" });
    expect(recorded?.headers.authorization).toBe("<redacted>");
  });

  it("full restore with an rl SAS brings back a purged key and replaces keys and role assignments", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    hsm.keys.create("keep");
    hsm.keys.create("victim");
    hsm.keys.create("victim");
    const assignment = hsm.roles.assign("backup-principal", HSM_ROLES.backup);
    const { folderUri } = await backup(hsm, container, "/some/folder");

    expect((await call(hsm, "DELETE", "/keys/victim")).status).toBe(200);
    expect((await call(hsm, "GET", "/deletedkeys/victim")).json!.recoveryId).toBe(`${hsm.url}/deletedkeys/victim`);
    expect((await call(hsm, "DELETE", "/deletedkeys/victim")).status).toBe(204);
    expect((await call(hsm, "GET", "/keys/victim")).json!.error.code).toBe("KeyNotFound");
    hsm.keys.create("created-after-backup");
    hsm.roles.remove(assignment.name);
    hsm.roles.assign("someone-else", HSM_ROLES.restore);
    hsm.faults.setJobDurationMs(300);

    // .NET convention: container URL only, the rest of the path in folderToRestore.
    const started = await call(hsm, "PUT", "/restore", {
      body: {
        sasTokenParameters: { storageResourceUri: container.url, token: await sas(container, "rl") },
        folderToRestore: folderUri.slice(container.url.length + 1),
      },
    });
    expect(started.status, started.text).toBe(202);
    expect(started.headers.get("azure-asyncoperation")).toBe(`${hsm.url}/restore/${started.json!.jobId}/pending`);
    expect(Object.keys(started.json!).sort()).toEqual([
      "endTime",
      "error",
      "jobId",
      "startTime",
      "status",
      "statusDetails",
    ]);

    const blocked = await call(hsm, "GET", "/keys");
    expect(blocked.status).toBe(409);
    expect(blocked.json!.error.message).toMatch(/restore mode/);
    expect(
      (
        await call(hsm, "POST", "/backup", {
          body: { storageResourceUri: container.url, token: await sas(container, "crdw") },
        })
      ).status,
    ).toBe(409);

    const done = await waitForJob(hsm, "restore", started.json!.jobId);
    expect(done).toMatchObject({ status: "Succeeded", statusDetails: null, error: null });
    const victim = await call(hsm, "GET", "/keys/victim/");
    expect(victim.status).toBe(200);
    expect(victim.json!.key.kid).toMatch(new RegExp(`^${hsm.url}/keys/victim/[0-9a-f]{32}$`));
    const listed = await call(hsm, "GET", "/keys");
    expect(listed.json!.value.map((item: { kid: string }) => item.kid).sort()).toEqual([
      `${hsm.url}/keys/keep`,
      `${hsm.url}/keys/victim`,
    ]);
    expect(hsm.roles.list()).toEqual([assignment]);
  });

  it("selective key restore restores a purged key and never overwrites an existing one", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    hsm.keys.create("rsa1");
    hsm.keys.create("rsa1");
    hsm.keys.create("other");
    const { folderUri } = await backup(hsm, container);
    // JS SDK convention: split the folder URI at its last '/'.
    const cut = folderUri.lastIndexOf("/");
    const restoreKey = async (keyName: string) => {
      const started = await call(hsm, "PUT", `/keys/${keyName}/restore`, {
        body: {
          sasTokenParameters: { storageResourceUri: folderUri.slice(0, cut), token: await sas(container, "rl") },
          folder: folderUri.slice(cut + 1),
        },
      });
      expect(started.status, started.text).toBe(202);
      return waitForJob(hsm, "restore", started.json!.jobId);
    };

    const existing = await restoreKey("rsa1");
    expect(existing).toMatchObject({
      status: "Succeeded",
      statusDetails: "Number of successful key versions restored: 0, Number of key versions could not overwrite: 2",
    });
    hsm.keys.delete("rsa1");
    const softDeleted = await restoreKey("rsa1");
    expect(softDeleted.statusDetails).toBe(
      "Number of successful key versions restored: 0, Number of key versions could not overwrite: 2",
    );
    hsm.keys.purge("rsa1");
    const restored = await restoreKey("rsa1");
    expect(restored.statusDetails).toBe(
      "Number of successful key versions restored: 2, Number of key versions could not overwrite: 0",
    );
    expect(hsm.keys.has("rsa1")).toBe(true);
    expect((await call(hsm, "GET", "/keys/rsa1/versions")).json!.value).toHaveLength(2);

    const absent = await restoreKey("never-existed");
    expect(absent.status).toBe("Failed");
    expect(absent.statusDetails).toMatch(/'never-existed' is not present in the backup/);
  });

  it("fails a backup written with an rl SAS (Azurite 403) and never shows the SAS", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    hsm.keys.create("k1");
    const token = await sas(container, "rl");
    const started = await call(hsm, "POST", "/backup", { body: { storageResourceUri: container.url, token } });
    expect(started.status).toBe(202);
    const done = await waitForJob(hsm, "backup", started.json!.jobId);
    expect(done.status).toBe("Failed");
    expect(done.statusDetails).toMatch(/403 AuthorizationPermissionMismatch/);
    expect(done.error).toMatchObject({ code: "AuthorizationPermissionMismatch" });
    expect(done.azureStorageBlobContainerUri).toBeNull();
    const signature = new URLSearchParams(token).get("sig")!;
    const everything = JSON.stringify(done) + JSON.stringify(hsm.requests);
    expect(everything).not.toContain("sig=");
    expect(everything).not.toContain(signature);
    expect(await blobNames(container)).toEqual([]);
  });

  it("without a name, is named as the app names an HSM at its loopback URL, in its folders too", async () => {
    const hsm = await emulator({ name: undefined });
    expect(hsm.name).toBe(`loopback-${hsm.port}`);
    expect(hsm.name).toBe(
      parseConfig({ MANAGED_HSM_URLS: hsm.url, BackupStorage: azurite.connectionString }).hsms[0]!.name,
    );
    const { folderUri } = await backup(hsm, await newContainer());
    expect(folderUri).toMatch(new RegExp(`/mhsm-loopback-${hsm.port}-\\d{16}$`));
  });

  it("fails a backup with an expired SAS and a restore of a missing folder", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    const expired = await sas(container, "crdw", -60_000);
    const started = await call(hsm, "POST", "/backup", { body: { storageResourceUri: container.url, token: expired } });
    expect(started.status).toBe(202);
    const done = await waitForJob(hsm, "backup", started.json!.jobId);
    expect(done.status).toBe("Failed");
    expect(done.statusDetails).toMatch(/returned 403 /);
    expect(JSON.stringify(done)).not.toContain("sig=");

    const missing = await call(hsm, "PUT", "/restore", {
      body: {
        sasTokenParameters: { storageResourceUri: container.url, token: await sas(container, "rl") },
        folderToRestore: "mhsm-testhsm-2020010100000000",
      },
    });
    const missingDone = await waitForJob(hsm, "restore", missing.json!.jobId);
    // The recorded real shape (js-keyvaultbackupclient_beginrestore-recording_contains_an_error_when_fails_to_authenticate.js):
    // only statusDetails says what went wrong, the error object is all null.
    expect(missingDone).toMatchObject({
      status: "Failed",
      statusDetails: "Invalid backup provided",
      error: { code: null, message: null, innererror: null },
    });
    expect(missingDone.endTime).toEqual(expect.any(Number));

    const noContainer = blobService.getContainerClient("doesnotexist");
    const lost = await call(hsm, "POST", "/backup", {
      body: { storageResourceUri: noContainer.url, token: await sas(noContainer, "crdw") },
    });
    const lostDone = await waitForJob(hsm, "backup", lost.json!.jobId);
    expect(lostDone).toMatchObject({ status: "Failed", error: { code: "ContainerNotFound" } });
  });

  it("runs pre-backup and pre-restore checks against storage only", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    hsm.keys.create("k1");
    const pre = await call(hsm, "POST", "/prebackup", {
      body: { storageResourceUri: container.url, token: await sas(container, "crdw"), useManagedIdentity: false },
    });
    expect(pre.status, pre.text).toBe(202);
    expect(pre.headers.get("azure-asyncoperation")).toBe(`${hsm.url}/backup/${pre.json!.jobId}/pending`);
    expect(await waitForJob(hsm, "backup", pre.json!.jobId)).toMatchObject({
      status: "Succeeded",
      azureStorageBlobContainerUri: null,
    });
    expect(await blobNames(container)).toEqual([]);

    const preDenied = await call(hsm, "POST", "/prebackup", {
      body: { storageResourceUri: container.url, token: await sas(container, "rl") },
    });
    expect(await waitForJob(hsm, "backup", preDenied.json!.jobId)).toMatchObject({
      status: "Failed",
      error: { code: "AuthorizationPermissionMismatch" },
    });

    const { folderUri } = await backup(hsm, container);
    const folder = folderUri.slice(container.url.length + 1);
    const preRestore = async (permissions: string, folderToRestore: string) => {
      const started = await call(hsm, "PUT", "/prerestore", {
        body: {
          sasTokenParameters: { storageResourceUri: container.url, token: await sas(container, permissions) },
          folderToRestore,
        },
      });
      expect(started.status, started.text).toBe(202);
      return waitForJob(hsm, "restore", started.json!.jobId);
    };
    expect(await preRestore("rl", folder)).toMatchObject({ status: "Succeeded" });
    expect(await preRestore("r", folder)).toMatchObject({
      status: "Failed",
      error: { code: "AuthorizationPermissionMismatch" },
    });
    expect(await preRestore("rl", "nope")).toMatchObject({
      status: "Failed",
      statusDetails: "Invalid backup provided",
    });
    expect(hsm.keys.has("k1")).toBe(true);
  });

  it("uses the managed identity hook when asked, and fails such jobs without one", async () => {
    const container = await newContainer();
    const without = await emulator();
    const started = await call(without, "POST", "/backup", {
      apiVersion: "7.5",
      body: { storageResourceUri: container.url, useManagedIdentity: true },
    });
    expect(started.status).toBe(202);
    expect(await waitForJob(without, "backup", started.json!.jobId)).toMatchObject({
      status: "Failed",
      error: { code: "ManagedIdentityNotConfigured" },
    });

    const seen: string[] = [];
    const withIdentity = await emulator({
      managedIdentityStorage: (containerUrl) => {
        seen.push(containerUrl);
        return new ContainerClient(azurite.connectionString, containerUrl.split("/").pop()!);
      },
    });
    withIdentity.keys.create("k1");
    const ok = await call(withIdentity, "POST", "/backup", {
      body: { storageResourceUri: `${container.url}/mi`, useManagedIdentity: true },
    });
    const done = await waitForJob(withIdentity, "backup", ok.json!.jobId);
    expect(done.status, JSON.stringify(done)).toBe("Succeeded");
    expect(seen).toEqual([container.url]);
    expect(await blobNames(container, "mi/")).toHaveLength(2);
  });
});

describe("HSM emulator: concurrency and faults", () => {
  it("refuses a second job with 409 while one runs", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    hsm.faults.setJobDurationMs(400);
    const body = { storageResourceUri: container.url, token: await sas(container, "crdw") };
    const first = await call(hsm, "POST", "/backup", { body });
    expect(first.status).toBe(202);
    const second = await call(hsm, "POST", "/backup", { body });
    expect(second.status).toBe(409);
    expect(second.json!.error.code).toBe("Conflict");
    expect(second.json!.error.message).toMatch(/another backup or restore operation is in progress/);
    const restore = await call(hsm, "PUT", "/restore", { body: { sasTokenParameters: body, folderToRestore: "x" } });
    expect(restore.status).toBe(409);
    const keysDuringBackup = await call(hsm, "GET", "/keys");
    expect(keysDuringBackup.status).toBe(200);
    expect(await waitForJob(hsm, "backup", first.json!.jobId)).toMatchObject({ status: "Succeeded" });
    expect((await call(hsm, "POST", "/backup", { body })).status).toBe(202);
  });

  it("throttles the next requests without starting anything", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    const body = { storageResourceUri: container.url, token: await sas(container, "crdw") };
    hsm.faults.throttleNext(2, 429, 3);
    // The unauthenticated challenge probe is not throttled: it carries no caller.
    expect((await call(hsm, "POST", "/backup", { token: null })).status).toBe(401);
    for (let i = 0; i < 2; i++) {
      const throttled = await call(hsm, "POST", "/backup", { body });
      expect(throttled.status).toBe(429);
      expect(throttled.headers.get("retry-after")).toBe("3");
      expect(throttled.json!.error.code).toBe("Throttled");
    }
    expect(await blobNames(container)).toEqual([]);
    const accepted = await call(hsm, "POST", "/backup", { body });
    expect(accepted.status).toBe(202);
    await waitForJob(hsm, "backup", accepted.json!.jobId);

    hsm.faults.throttleNext(1, 503, 1);
    const unavailable = await call(hsm, "GET", "/keys");
    expect(unavailable.status).toBe(503);
    expect(unavailable.json!.error.code).toBe("ServiceUnavailable");
    expect((await call(hsm, "GET", "/keys")).status).toBe(200);
  });

  it("fails only the job kind asked for: 'backup' passes a pre-backup by, 'prebackup' takes only a pre-backup", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    const body = async () => ({ storageResourceUri: container.url, token: await sas(container, "crdw") });
    hsm.faults.failNextJob("backup", { code: "InjectedBackupError", message: "backup broke" });
    hsm.faults.failNextJob("prebackup", { code: "InjectedPreBackupError", message: "pre-backup broke" });

    const pre = await call(hsm, "POST", "/prebackup", { body: await body() });
    expect(await waitForJob(hsm, "backup", pre.json!.jobId)).toMatchObject({
      status: "Failed",
      statusDetails: "pre-backup broke",
      error: { code: "InjectedPreBackupError" },
      azureStorageBlobContainerUri: null,
    });
    const passing = await call(hsm, "POST", "/prebackup", { body: await body() });
    expect(await waitForJob(hsm, "backup", passing.json!.jobId)).toMatchObject({ status: "Succeeded", error: null });
    const failed = await call(hsm, "POST", "/backup", { body: await body() });
    expect(await waitForJob(hsm, "backup", failed.json!.jobId)).toMatchObject({
      status: "Failed",
      error: { code: "InjectedBackupError" },
    });
    expect(hsm.jobs().map((j) => [j.kind, j.status, j.errorCode])).toEqual([
      ["preBackup", "Failed", "InjectedPreBackupError"],
      ["preBackup", "Succeeded", undefined],
      ["backup", "Failed", "InjectedBackupError"],
    ]);
  });

  it("fails the next job of the chosen family with the injected error", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    const token = await sas(container, "crdw");
    hsm.faults.failNextJob("restore", { code: "InjectedRestoreError", message: "restore broke" });
    hsm.faults.failNextJob("backup", { code: "InjectedBackupError", message: "backup broke" });
    const failed = await call(hsm, "POST", "/backup", { body: { storageResourceUri: container.url, token } });
    expect(await waitForJob(hsm, "backup", failed.json!.jobId)).toMatchObject({
      status: "Failed",
      statusDetails: "backup broke",
      error: { code: "InjectedBackupError", message: "backup broke", innererror: null },
    });
    expect(await blobNames(container)).toEqual([]);
    const { folderUri } = await backup(hsm, container);
    const restore = await call(hsm, "PUT", "/restore", {
      body: {
        sasTokenParameters: { storageResourceUri: container.url, token: await sas(container, "rl") },
        folderToRestore: folderUri.split("/").pop(),
      },
    });
    expect(await waitForJob(hsm, "restore", restore.json!.jobId)).toMatchObject({
      status: "Failed",
      error: { code: "InjectedRestoreError" },
    });
  });
});

describe("HSM emulator: over HTTPS under a real name", () => {
  it("answers with URLs on the scheme and host the request came in on", async () => {
    const hsm = await startHttpsEmulator({ name: "testhsm", jobDurationMs: 50, retryAfterSeconds: 0 });
    emulators.push(hsm);
    const { urls, transport } = realNames([hsm]);
    try {
      const send = (method: "POST" | "GET", path: string, body?: unknown) =>
        transport.sendRequest(
          createPipelineRequest({
            url: `${urls[0]}${path}`,
            method,
            headers: createHttpHeaders({ Authorization: `Bearer ${jwt()}`, "Content-Type": "application/json" }),
            ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
          }),
        );
      const started = await send("POST", "/prebackup?api-version=7.6", {});
      expect(started.status, started.bodyAsText ?? "").toBe(202);
      const jobId = JSON.parse(started.bodyAsText!).jobId as string;
      expect(started.headers.get("azure-asyncoperation")).toBe(`https://testhsm.${HSM_DOMAIN}/backup/${jobId}/pending`);

      const key = await send("POST", "/keys/k1/create?api-version=7.6", { kty: "EC" });
      expect(key.status, key.bodyAsText ?? "").toBe(200);
      expect(JSON.parse(key.bodyAsText!).key.kid).toMatch(
        new RegExp(`^https://testhsm\\.managedhsm\\.azure\\.net/keys/k1/[0-9a-f]{32}$`),
      );
      expect(hsm.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    } finally {
      transport.close();
    }
  });
});

describe("HSM emulator: job log", () => {
  it("lists every job it started, in start order, with its outcome, as copies", async () => {
    const hsm = await emulator();
    const container = await newContainer();
    hsm.keys.create("k1");
    expect(hsm.jobs()).toEqual([]);
    const before = new Date();
    const { folderUri } = await backup(hsm, container);
    const folder = folderUri.split("/").pop()!;
    const restoreSas = await sas(container, "rl");
    const bad = await call(hsm, "PUT", "/restore", {
      body: {
        sasTokenParameters: { storageResourceUri: container.url, token: restoreSas },
        folderToRestore: "mhsm-testhsm-2020010100000000",
      },
    });
    await waitForJob(hsm, "restore", bad.json!.jobId);
    const pre = await call(hsm, "POST", "/prebackup", {
      body: { storageResourceUri: container.url, token: await sas(container, "crdw") },
    });
    await waitForJob(hsm, "backup", pre.json!.jobId);
    hsm.faults.setJobDurationMs(2_000);
    const selective = await call(hsm, "PUT", "/keys/k1/restore", {
      body: { sasTokenParameters: { storageResourceUri: container.url, token: restoreSas }, folder },
    });
    expect(selective.status, selective.text).toBe(202);

    const log = hsm.jobs();
    expect(log.map((job) => [job.kind, job.status])).toEqual([
      ["backup", "Succeeded"],
      ["restore", "Failed"],
      ["preBackup", "Succeeded"],
      ["selectiveKeyRestore", "InProgress"],
    ]);
    expect(log[0]).toEqual({
      jobId: expect.stringMatching(/^[0-9a-f]{32}$/),
      kind: "backup",
      status: "Succeeded",
      folderUri,
      startTime: expect.any(Date),
      endTime: expect.any(Date),
    });
    // The wire shows an all-null error for an invalid folder; the log still says why.
    expect(log[1]).toMatchObject({ jobId: bad.json!.jobId, errorCode: "InvalidBackup" });
    expect(log[1]).not.toHaveProperty("folderUri");
    expect(log[2]).not.toHaveProperty("folderUri");
    expect(log[3]).toMatchObject({ jobId: selective.json!.jobId });
    expect(log[3]).not.toHaveProperty("endTime");
    for (const job of log) expect(job.startTime.getTime()).toBeGreaterThanOrEqual(before.getTime() - 1000);
    for (const job of log.slice(0, 3)) expect(job.endTime!.getTime()).toBeGreaterThanOrEqual(job.startTime.getTime());
    expect(new Set(log.map((job) => job.jobId)).size).toBe(4);

    // A copy: what the caller holds does not change under it, and changing it changes nothing.
    log[0]!.startTime.setTime(0);
    expect(hsm.jobs()[0]!.startTime.getTime()).not.toBe(0);
    await waitForJob(hsm, "restore", selective.json!.jobId);
    expect(log[3]!.status).toBe("InProgress");
    expect(hsm.jobs()[3]).toMatchObject({ status: "Succeeded", endTime: expect.any(Date) });
  });
});

describe("HSM emulator: local RBAC", () => {
  it("enforces backup, restore and role-management roles for the token's oid", async () => {
    const adminOid = randomUUID();
    const backupOid = randomUUID();
    const hsm = await emulator({ enforceRbac: true, initialAdminObjectIds: [adminOid] });
    const container = await newContainer();
    const admin = jwt({ oid: adminOid });
    const operator = jwt({ oid: backupOid });
    const assignmentName = randomUUID();
    const assignmentBody = {
      properties: {
        roleDefinitionId: `Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/${HSM_ROLES.backup}`,
        principalId: backupOid,
      },
    };

    const denied = await call(hsm, "PUT", `/providers/Microsoft.Authorization/roleAssignments/${assignmentName}`, {
      token: operator,
      body: assignmentBody,
    });
    expect(denied.status).toBe(403);
    expect(denied.json!.error.code).toBe("AccessDenied");
    expect(denied.json!.error.message).toMatch(/roleAssignments\/write\/action on \//);

    // The JS SDK sends scope "/" as `//providers/...`.
    const created = await call(hsm, "PUT", `//providers/Microsoft.Authorization/roleAssignments/${assignmentName}`, {
      token: admin,
      body: assignmentBody,
    });
    expect(created.status, created.text).toBe(201);
    expect(created.json).toEqual({
      id: `/providers/Microsoft.Authorization/roleAssignments/${assignmentName}`,
      name: assignmentName,
      type: "Microsoft.Authorization/roleAssignments",
      properties: { scope: "/", ...assignmentBody.properties },
    });
    const again = await call(hsm, "PUT", `/providers/Microsoft.Authorization/roleAssignments/${assignmentName}`, {
      token: admin,
      body: assignmentBody,
    });
    expect(again.status).toBe(201);
    const changed = await call(hsm, "PUT", `/providers/Microsoft.Authorization/roleAssignments/${assignmentName}`, {
      token: admin,
      body: { properties: { ...assignmentBody.properties, principalId: adminOid } },
    });
    expect(changed.status).toBe(409);
    const listed = await call(hsm, "GET", "/providers/Microsoft.Authorization/roleAssignments", { token: admin });
    expect(listed.json!.value).toHaveLength(2);
    const definitions = await call(hsm, "GET", "/providers/Microsoft.Authorization/roleDefinitions", { token: admin });
    expect(
      definitions.json!.value.map((role: { properties: { roleName: string } }) => role.properties.roleName),
    ).toContain("Managed HSM Backup");

    const started = await call(hsm, "POST", "/backup", {
      token: operator,
      body: { storageResourceUri: container.url, token: await sas(container, "crdw") },
    });
    expect(started.status).toBe(202);
    const done = await waitForJob(hsm, "backup", started.json!.jobId, operator);
    expect(done.status).toBe("Succeeded");
    const restore = await call(hsm, "PUT", "/restore", {
      token: operator,
      body: {
        sasTokenParameters: { storageResourceUri: container.url, token: await sas(container, "rl") },
        folderToRestore: done.azureStorageBlobContainerUri.split("/").pop(),
      },
    });
    expect(restore.status).toBe(403);
    expect(restore.json!.error.message).toMatch(/restore\/start\/action/);
    const stranger = await call(hsm, "POST", "/backup", {
      token: jwt({ oid: randomUUID() }),
      body: { storageResourceUri: container.url, token: await sas(container, "crdw") },
    });
    expect(stranger.status).toBe(403);
    const statusByStranger = await call(hsm, "GET", `/backup/${started.json!.jobId}/pending`, {
      token: jwt({ oid: randomUUID() }),
    });
    expect(statusByStranger.status).toBe(403);

    expect(
      (
        await call(hsm, "DELETE", `/providers/Microsoft.Authorization/roleAssignments/${assignmentName}`, {
          token: admin,
        })
      ).status,
    ).toBe(200);
    expect(
      (await call(hsm, "GET", `/providers/Microsoft.Authorization/roleAssignments/${assignmentName}`, { token: admin }))
        .json!.error.code,
    ).toBe("RoleAssignmentNotFound");
    expect(
      (
        await call(hsm, "POST", "/backup", {
          token: operator,
          body: { storageResourceUri: container.url, token: await sas(container, "crdw") },
        })
      ).status,
    ).toBe(403);
  });
});

describe("HSM emulator: keys API", () => {
  it("creates, versions, soft-deletes, recovers and purges keys", async () => {
    const hsm = await emulator();
    const created = await call(hsm, "POST", "/keys/k1/create", { body: { kty: "RSA" } });
    expect(created.status).toBe(200);
    expect(created.json).toMatchObject({
      key: { kid: expect.stringMatching(new RegExp(`^${hsm.url}/keys/k1/[0-9a-f]{32}$`)), kty: "RSA-HSM", e: "AQAB" },
      attributes: { enabled: true, recoveryLevel: "CustomizedRecoverable+Purgeable", created: expect.any(Number) },
    });
    const second = await call(hsm, "POST", "/keys/k1/create", { body: { kty: "RSA" } });
    expect(second.json!.key.kid).not.toBe(created.json!.key.kid);
    expect((await call(hsm, "GET", "/keys/k1")).json!.key.kid).toBe(second.json!.key.kid);
    expect((await call(hsm, "GET", `/keys/k1/${created.json!.key.kid.split("/").pop()}`)).json!.key.kid).toBe(
      created.json!.key.kid,
    );
    expect((await call(hsm, "POST", "/keys/k2/create", { body: { kty: "RSA-2048" } })).status).toBe(400);

    const deleted = await call(hsm, "DELETE", "/keys/k1");
    expect(deleted.json).toMatchObject({
      recoveryId: `${hsm.url}/deletedkeys/k1`,
      deletedDate: expect.any(Number),
      scheduledPurgeDate: expect.any(Number),
    });
    expect((await call(hsm, "GET", "/keys/k1")).status).toBe(404);
    expect((await call(hsm, "POST", "/keys/k1/create", { body: { kty: "RSA" } })).status).toBe(409);
    expect((await call(hsm, "GET", "/deletedkeys")).json!.value).toHaveLength(1);
    expect((await call(hsm, "POST", "/deletedkeys/k1/recover")).status).toBe(200);
    expect(hsm.keys.has("k1")).toBe(true);
    hsm.keys.delete("k1");
    expect((await call(hsm, "DELETE", "/deletedkeys/k1")).status).toBe(204);
    expect((await call(hsm, "GET", "/deletedkeys/k1")).json!.error.code).toBe("KeyNotFound");
    expect((await call(hsm, "GET", "/keys")).json).toEqual({ value: [], nextLink: null });
  });
});

describe("HSM emulator: with the real client authentication policy", () => {
  it("answers keyvault-common's empty-body probe with a challenge and accepts the re-sent request", async () => {
    const hsm = await emulator({ tenantId: "12345678-1234-1234-1234-123456789012" });
    const container = await newContainer();
    const tokenRequests: { scopes: string | string[]; tenantId?: string }[] = [];
    const credential = {
      async getToken(scopes: string | string[], options?: { tenantId?: string }) {
        tokenRequests.push({ scopes, tenantId: options?.tenantId });
        return { token: jwt(), expiresOnTimestamp: Date.now() + 3_600_000 };
      },
    };
    const pipeline = createPipelineFromOptions({ retryOptions: { maxRetries: 0 } });
    pipeline.addPolicy(keyVaultAuthenticationPolicy(credential, { disableChallengeResourceVerification: true }));
    const response = await pipeline.sendRequest(
      createDefaultHttpClient(),
      createPipelineRequest({
        url: `${hsm.url}/backup?api-version=${API}`,
        method: "POST",
        allowInsecureConnection: true,
        headers: createHttpHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ storageResourceUri: container.url, token: await sas(container, "crdw") }),
      }),
    );
    expect(response.status, response.bodyAsText ?? "").toBe(202);
    expect(tokenRequests).toEqual([
      { scopes: ["https://managedhsm.azure.net/.default"], tenantId: "12345678-1234-1234-1234-123456789012" },
    ]);
    expect(
      hsm.requests.map((request) => [request.method, request.path, request.status, request.body === null]),
    ).toEqual([
      ["POST", "/backup", 401, true],
      ["POST", "/backup", 202, false],
    ]);
    const jobId = JSON.parse(response.bodyAsText!).jobId as string;
    expect(await waitForJob(hsm, "backup", jobId)).toMatchObject({ status: "Succeeded" });
  });
});
