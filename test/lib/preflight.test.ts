/**
 * Pre-flight before every backup: the container exists, the SAS can be signed, and (api 7.6+) the
 * HSM's own pre-backup check passes — against Azurite, the HSM emulator and the scripted hostile HSM.
 * A failed pre-flight ends the Starting record Failed with PreflightFailed and starts no backup.
 */
import { readFileSync } from "node:fs";
import { createServer, request as httpsRequest } from "node:https";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { backupAll } from "../../src/lib/backup.js";
import type { BackupRecord } from "../../src/lib/catalog.js";
import { parseConfig } from "../../src/lib/config.js";
import { createDeps } from "../../src/lib/deps.js";
import { safeLogger } from "../../src/lib/logger.js";
import { startAzurite, type Azurite } from "../../tools/azurite.js";
import { createSelfSignedCert, type SelfSignedCert } from "../../tools/tls.js";
import { catalogEntities, onTime, uniqueName, type TestApp } from "../support/app.js";
import { events, Night } from "../support/bad-night.js";
import {
  hostile,
  jobStatus,
  keyVaultError,
  resolveAnswer,
  type HostileHsm,
  type HostileRequest,
} from "../support/hostile-hsm.js";
import { scopeRecordingCredential } from "../support/tokens.js";

const night = new Night();
afterEach(() => night.stopAll());

async function nightly(app: TestApp): Promise<void> {
  app.clock.advance(24 * 3_600_000);
  await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps).catch(() => undefined);
}

async function newest(app: TestApp): Promise<BackupRecord> {
  return (await app.deps.catalog.list("backup", { top: 1 })).items[0]!;
}

/** Deletes the app's backup container after the run that created it (the app creates it once per process). */
async function deleteContainer(app: TestApp): Promise<void> {
  await app.deps.storage.blobService.getContainerClient(app.deps.config.backupContainer).delete();
}

/** Where the hostile HSM looks up the status reads of its pre-backup jobs (see its header). */
const PRE_BACKUP_STATUS = /^\/prebackup\/[^/]+\/pending$/;

const starts = (hsm: HostileHsm, path: string) => hsm.authenticated("POST", new RegExp(`^${path}$`)).length;

describe("pre-flight before every backup", () => {
  it("runs exactly one pre-backup check, and the backup only after it ended", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url]);
    await nightly(app);

    expect(await newest(app)).toMatchObject({ status: "Succeeded", verification: "Passed" });
    const jobs = hsm.jobs();
    expect(jobs.map((j) => [j.kind, j.status])).toEqual([
      ["preBackup", "Succeeded"],
      ["backup", "Succeeded"],
      ["preRestore", "Succeeded"],
    ]);
    // The HSM runs one operation at a time: the check had ended when the backup started.
    expect(jobs[0]!.endTime!.getTime()).toBeLessThanOrEqual(jobs[1]!.startTime.getTime());
    // The first call of a client is the authentication challenge (401), the same request without a token.
    const posts = hsm.requests.filter((r) => r.method === "POST" && r.status !== 401);
    expect(posts.map((r) => [r.path, r.status])).toEqual([
      ["/prebackup", 202],
      ["/backup", 202],
    ]);
  });

  it("fails PreflightFailed naming the container and the account when the container is missing, calling no HSM", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url]);
    await nightly(app);
    await deleteContainer(app);
    const before = hsm.requests.length;
    await nightly(app);

    const record = await newest(app);
    expect(record).toMatchObject({ status: "Failed", errorCode: "PreflightFailed" });
    expect(record.errorMessage).toMatch(
      new RegExp(`container ${app.deps.config.backupContainer} does not exist in account devstoreaccount1`),
    );
    expect(record.jobId).toBeUndefined();
    expect(hsm.requests.slice(before).filter((r) => r.method !== "GET")).toEqual([]);
    expect(events(app.logs, "MhsmBackupOutcome").at(-1)).toMatchObject({
      recordId: record.id,
      status: "Failed",
      errorCode: "PreflightFailed",
    });
  });

  it("fails PreflightFailed with the HSM's own words when its pre-backup check fails, and starts no backup", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url]);
    hsm.faults.failNextJob("prebackup", {
      code: "StorageAccessFailed",
      message: "The managed HSM could not write to the storage account: This request is not authorized",
    });
    await nightly(app);

    const record = await newest(app);
    expect(record).toMatchObject({ status: "Failed", errorCode: "PreflightFailed" });
    expect(record.errorMessage).toMatch(
      /the HSM's pre-backup check failed \(StorageAccessFailed\): The managed HSM could not write to the storage account: This request is not authorized; /,
    );
    expect(record.errorMessage).toMatch(/Storage Blob Data Contributor|Managed HSM Backup/);
    expect(hsm.jobs().map((j) => j.kind)).toEqual(["preBackup"]);

    // The fault took only the check: the next night backs up.
    await nightly(app);
    expect(await newest(app)).toMatchObject({ status: "Succeeded" });
  });

  it("names the Managed HSM Backup role when the HSM refuses the check with 403, and starts no backup", async () => {
    // No role assignment at all: the emulator's local RBAC refuses every start.
    const hsm = await night.emulator({ enforceRbac: true });
    const { app } = await night.app([hsm.url]);
    await nightly(app);

    const record = await newest(app);
    expect(record).toMatchObject({ status: "Failed", errorCode: "PreflightFailed" });
    expect(record.errorMessage).toMatch(/did not start its pre-backup check: .*HTTP 403 AccessDenied: Not authorized/);
    expect(record.errorMessage).toMatch(
      /the app's identity needs the Managed HSM Backup role \(local RBAC, scope \/\)/,
    );
    expect(hsm.jobs()).toEqual([]);
  });

  it("records StartNotSent, as a backup start would, when the HSM cannot be reached", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url]);
    await hsm.stop();
    await nightly(app);
    expect(await newest(app)).toMatchObject({
      status: "Failed",
      errorCode: "StartNotSent",
      errorMessage: expect.stringMatching(
        /preBackup start: the call was not sent \(.*ECONNREFUSED.*\); nothing was started/,
      ),
    });
  });

  it("makes no pre-backup call with PREFLIGHT=false, even with the container gone", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url], { env: { PREFLIGHT: "false" } });
    await nightly(app);
    expect(await newest(app)).toMatchObject({ status: "Succeeded" });
    expect(hsm.jobs().map((j) => j.kind)).toEqual(["backup", "preRestore"]);
    expect(hsm.requests.filter((r) => r.path === "/prebackup")).toEqual([]);

    // Without the pre-flight the missing container is found by the HSM's backup job, not before it.
    await deleteContainer(app);
    await nightly(app);
    expect(await newest(app)).toMatchObject({ status: "Failed" });
    expect((await newest(app)).errorCode).not.toBe("PreflightFailed");
    expect(hsm.jobs().map((j) => j.kind)).toEqual(["backup", "preRestore", "backup"]);
  });

  it("with api-version 7.5 makes no pre-backup call, but still checks storage", async () => {
    const hsm = await night.emulator();
    const { app } = await night.app([hsm.url], { env: { HSM_API_VERSION: "7.5" } });
    await nightly(app);
    expect(await newest(app)).toMatchObject({ status: "Succeeded" });
    expect(hsm.jobs().map((j) => j.kind)).toEqual(["backup"]);

    await deleteContainer(app);
    await nightly(app);
    expect(await newest(app)).toMatchObject({
      status: "Failed",
      errorCode: "PreflightFailed",
      errorMessage: expect.stringMatching(/does not exist in account devstoreaccount1/),
    });
    expect(hsm.jobs().map((j) => j.kind)).toEqual(["backup"]);
    expect(hsm.requests.filter((r) => r.path === "/prebackup")).toEqual([]);
  });

  it("records Skipped, not PreflightFailed, when the HSM refuses the pre-backup with 409 (busy)", async () => {
    const hsm = await night.hostile();
    hsm.on(
      "POST",
      "/prebackup",
      keyVaultError(409, "Conflict", "Conflict: another backup or restore operation is in progress"),
    );
    const { app } = await night.app([hsm.url]);
    await nightly(app);

    expect(await newest(app)).toMatchObject({
      status: "Skipped",
      errorCode: "Conflict",
      errorMessage: expect.stringMatching(/another backup or restore is running/),
    });
    expect(starts(hsm, "/prebackup")).toBe(1);
    expect(starts(hsm, "/backup")).toBe(0);
  });

  it("fails PreflightFailed, starting no backup, when the check's status cannot be read before the deadline", async () => {
    const hsm = await night.hostile();
    hsm.on("GET", PRE_BACKUP_STATUS, jobStatus("backup"));
    const { app } = await night.app([hsm.url]);
    await app.deps.prepare();
    const [result] = await backupAll(app.deps, safeLogger(app.context()), {
      trigger: "timer",
      runDeadline: new Date(app.clock.now().getTime() + 1500),
    });

    expect(result).toMatchObject({ outcome: "Failed" });
    expect(result!.record).toMatchObject({
      status: "Failed",
      errorCode: "PreflightFailed",
      errorMessage: expect.stringMatching(
        /pre-backup check \(job [0-9a-f]{32}\) did not finish: .*last status InProgress/,
      ),
    });
    expect(starts(hsm, "/prebackup")).toBe(1);
    expect(starts(hsm, "/backup")).toBe(0);
  });

  it("keeps the SAS out of the record, the logs and the event when the HSM's failed check echoes it", async () => {
    const hsm = await night.hostile();
    let signature = "";
    hsm.on("GET", PRE_BACKUP_STATUS, (request: HostileRequest) => {
      const [start] = hsm.authenticated("POST", /^\/prebackup$/);
      signature = new URLSearchParams((start!.body as { token?: string }).token ?? "").get("sig") ?? "";
      return resolveAnswer(hostile.sasEchoFailed("backup", signature, "json"), request);
    });
    const { app } = await night.app([hsm.url]);
    await nightly(app);

    const record = await newest(app);
    expect(record).toMatchObject({ status: "Failed", errorCode: "PreflightFailed" });
    expect(record.errorMessage).toMatch(
      /pre-backup check failed \(StorageAccessFailed\): Storage rejected the request/,
    );
    expect(signature.length).toBeGreaterThan(10);
    const everything = [...app.logs, JSON.stringify(await catalogEntities(app))].join("\n");
    const once = encodeURIComponent(signature);
    for (const form of [signature, once, encodeURIComponent(once)])
      expect(everything.includes(form), `a form of the signature leaked: ${form}`).toBe(false);
    expect(starts(hsm, "/backup")).toBe(0);
  });
});

/**
 * Azurite in OAuth mode accepts any valid token: it has no roles, so it never refuses a user-delegation
 * key. The refusal Azure gives an identity without Storage Blob Delegator (403
 * AuthorizationPermissionMismatch) is answered here by an HTTPS relay in front of Azurite, for that
 * one call; everything else, the app's code path included, is real.
 */
describe("pre-flight with identity-based storage whose identity may not get a user-delegation key", () => {
  let cert: SelfSignedCert;
  let azurite: Azurite;
  let relay: { url: string; refused: number; stop(): Promise<void> };

  beforeAll(async () => {
    cert = createSelfSignedCert();
    azurite = await startAzurite({ https: cert });
    relay = await delegationRefusingRelay(azurite.blobEndpoint, cert);
  });
  afterAll(async () => {
    await relay?.stop();
    await azurite?.stop();
    cert?.remove();
  });
  afterEach(() => night.stopAll());

  it("fails PreflightFailed naming the account and Storage Blob Delegator, calling no HSM", async () => {
    const hsm = await night.emulator();
    const config = parseConfig({
      MANAGED_HSM_URLS: hsm.url,
      BackupStorage__blobServiceUri: relay.url,
      BackupStorage__tableServiceUri: azurite.tableEndpoint,
      BACKUP_CONTAINER: uniqueName("pf"),
      CATALOG_TABLE: uniqueName("pf"),
    });
    const deps = createDeps(config, {
      credential: scopeRecordingCredential().credential,
      storageOptions: { tlsOptions: { ca: cert.ca } },
      hsmClientOptions: { defaultPollIntervalMs: 25 },
    });
    const logs: string[] = [];
    const [result] = await backupAll(
      deps,
      { info: (m) => logs.push(m), warn: (m) => logs.push(m), error: (m) => logs.push(m) },
      {
        trigger: "cli",
      },
    );

    expect(relay.refused).toBeGreaterThan(0);
    expect(result!.record).toMatchObject({ status: "Failed", errorCode: "PreflightFailed" });
    expect(result!.record!.errorMessage).toMatch(
      /the app could not get a user-delegation key from account devstoreaccount1 \(This request is not authorized to perform this operation using this permission.*\): it needs Storage Blob Delegator on the account/,
    );
    expect(hsm.requests).toEqual([]);
  });
});

/** Relays HTTPS to `target`, except a user-delegation key request, which gets Azure's 403 for a missing role. */
async function delegationRefusingRelay(
  target: string,
  cert: SelfSignedCert,
): Promise<{ url: string; refused: number; stop(): Promise<void> }> {
  const upstream = new URL(target);
  const state = { refused: 0 };
  const server = createServer({ cert: readFileSync(cert.certPath), key: readFileSync(cert.keyPath) }, (req, res) => {
    if (req.method === "POST" && /[?&]comp=userdelegationkey(&|$)/i.test(req.url ?? "")) {
      state.refused++;
      req.resume();
      res.writeHead(403, { "content-type": "application/xml", "x-ms-error-code": "AuthorizationPermissionMismatch" });
      res.end(
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.</Message></Error>',
      );
      return;
    }
    const forwarded = httpsRequest(
      new URL(req.url ?? "/", upstream.origin),
      { method: req.method, headers: { ...req.headers, host: upstream.host }, ca: cert.ca },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forwarded.on("error", () => res.destroy());
    req.pipe(forwarded);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `https://127.0.0.1:${port}${upstream.pathname.replace(/\/$/, "")}`,
    get refused() {
      return state.refused;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
