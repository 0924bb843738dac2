/**
 * Immutable copies against real Azurite and the HSM emulator: a succeeded backup is copied blob for
 * blob into the copy container and its record says so; a copy target that refuses or cannot be
 * reached (the fault proxy in front of Azurite's blob endpoint, faulting only the copy container)
 * leaves the backup Succeeded with copyStatus Failed and a message naming the account and
 * container; with copies off nothing is copied.
 */
import { randomBytes } from "node:crypto";
import type { ContainerClient } from "@azure/storage-blob";
import { afterEach, describe, expect, inject, it } from "vitest";
import { getBackup } from "../../src/handlers/backups.js";
import { health } from "../../src/handlers/health.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { backupAll } from "../../src/lib/backup.js";
import type { BackupRecord } from "../../src/lib/catalog.js";
import { copyBackup } from "../../src/lib/copy.js";
import { safeLogger } from "../../src/lib/logger.js";
import { bodyOf, get, onTime, uniqueName, type TestApp } from "../support/app.js";
import { events, Night } from "../support/bad-night.js";
import { withEndpoint, type FaultProxy } from "../support/fault-proxy.js";

const night = new Night();
afterEach(() => night.stopAll());

const ACCOUNT_KEY = /AccountKey=([^;]+)/.exec(inject("azuriteConnectionString"))?.[1];

/** An app with copies on, its blob endpoint behind a fault proxy (the HSM writes through it too). */
async function copyingApp(env: Record<string, string> = {}) {
  const hsm = await night.emulator();
  const connection = inject("azuriteConnectionString");
  const blobEndpoint = /(?:^|;)BlobEndpoint=([^;]+)/.exec(connection)?.[1];
  if (!blobEndpoint) throw new Error("The Azurite connection string names no BlobEndpoint");
  const proxy = await night.proxy(blobEndpoint);
  const copyContainer = uniqueName("vault");
  const { app } = await night.app([hsm.url], {
    env: {
      BackupStorage: withEndpoint(connection, "BlobEndpoint", proxy.url),
      BACKUP_COPY_CONTAINER: copyContainer,
      ...env,
    },
  });
  return { hsm, app, proxy, copyContainer };
}

async function nightly(app: TestApp): Promise<BackupRecord> {
  app.clock.advance(24 * 3_600_000);
  await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
  const [record] = (await app.deps.catalog.list("backup", { top: 1 })).items;
  return record!;
}

/** Every blob under a folder, name (relative to the container) to bytes. */
async function folder(container: ContainerClient, name: string): Promise<Map<string, Buffer>> {
  const blobs = new Map<string, Buffer>();
  for await (const item of container.listBlobsFlat({ prefix: `${name}/` }))
    blobs.set(item.name, await container.getBlobClient(item.name).downloadToBuffer());
  return blobs;
}

function copyPath(container: string): RegExp {
  return new RegExp(`^/[^/]+/${container}(/|$)`);
}

function expectNoSecret(app: TestApp, record: BackupRecord): void {
  expect(ACCOUNT_KEY).toBeDefined();
  for (const text of [JSON.stringify(record), ...app.logs]) {
    expect(text).not.toContain(ACCOUNT_KEY);
    expect(text).not.toMatch(/sig=|SharedKey |Bearer /);
  }
}

describe("immutable copies", () => {
  it("copies a succeeded backup blob for blob (same names, same bytes) into the copy container and records it", async () => {
    const { app, hsm, copyContainer } = await copyingApp();
    hsm.keys.create("signing");
    hsm.keys.create("wrapping", "EC");
    const record = await nightly(app);
    expect(record).toMatchObject({ status: "Succeeded", verification: "Passed", copyStatus: "Copied" });
    const blobService = app.deps.storage.blobService;
    const name = record.folderUri!.split("/").pop()!;
    const copies = blobService.getContainerClient(copyContainer);
    expect(record.copyFolderUri).toBe(`${copies.url}/${name}`);
    expect(Date.parse(record.copiedAt!)).toBeGreaterThanOrEqual(Date.parse(record.verifiedAt!));

    const source = await folder(blobService.getContainerClient(app.container), name);
    const copied = await folder(copies, name);
    expect(source.size).toBeGreaterThanOrEqual(3); // a manifest and one blob per key
    expect([...copied.keys()].sort()).toEqual([...source.keys()].sort());
    for (const [blob, bytes] of source) expect(copied.get(blob)?.equals(bytes), blob).toBe(true);

    expect(events(app.logs, "MhsmBackupOutcome")).toMatchObject([{ status: "Succeeded", copyStatus: "Copied" }]);
    const answer = await health(get("/api/health"), app.context(), app.deps);
    expect(answer.status).toBe(200);
    expect(bodyOf(answer).hsms).toMatchObject([{ stale: false, copyMissing: false }]);
    expect(bodyOf(answer).detail ?? "").not.toMatch(/immutable copy/);
  });

  it("a copy container that refuses the app: the backup stays Succeeded, the copy Failed naming account and container, no secret; health says so but stays green", async () => {
    const { app, proxy, copyContainer } = await copyingApp();
    proxy.inject(
      {
        kind: "status",
        status: 403,
        contentType: "application/xml",
        body: `<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.</Message></Error>`,
        headers: { "x-ms-error-code": "AuthorizationPermissionMismatch" },
      },
      { path: copyPath(copyContainer), times: 1000 },
    );
    const record = await nightly(app);
    expect(record).toMatchObject({
      status: "Succeeded",
      verification: "Passed",
      copyStatus: "Failed",
      copyMessage: expect.stringMatching(
        new RegExp(`container "${copyContainer}" of storage account devstoreaccount1 .*not authorized`),
      ),
    });
    expect(record.errorCode).toBeUndefined();
    expect(record.copyFolderUri).toBeUndefined();
    expectNoSecret(app, record);
    expect(app.logs.filter((l) => l.startsWith("error:") && l.includes("Immutable copy"))).toHaveLength(1);
    expect(events(app.logs, "MhsmBackupOutcome")).toMatchObject([{ status: "Succeeded", copyStatus: "Failed" }]);

    const answer = await health(get("/api/health"), app.context(), app.deps);
    expect(answer.status).toBe(200);
    expect(bodyOf(answer)).toMatchObject({
      detail: expect.stringMatching(/Newest backup has no immutable copy for: loopback-\d+/),
      hsms: [{ stale: false, copyMissing: true }],
    });
  });

  it("a copy container that cannot be reached: the backup stays Succeeded, the copy Failed saying what it was doing", async () => {
    const { app, proxy, copyContainer } = await copyingApp();
    proxy.inject({ kind: "refuse" }, { path: copyPath(copyContainer), times: 1000 });
    const record = await nightly(app);
    expect(record).toMatchObject({
      status: "Succeeded",
      copyStatus: "Failed",
      copyMessage: expect.stringMatching(
        new RegExp(
          `^copy to container "${copyContainer}" of storage account devstoreaccount1 \\(127\\.0\\.0\\.1:\\d+\\) failed while checking the copy container: `,
        ),
      ),
    });
    expectNoSecret(app, record);
  });

  it("a copy container that never answers: the copy ends at the run's deadline, Failed, and the backup is recorded Succeeded", async () => {
    const { app, proxy, copyContainer } = await copyingApp();
    // The container exists, so the hang meets the blob writes themselves.
    await app.deps.copyTarget!.blobService.getContainerClient(copyContainer).create();
    proxy.inject({ kind: "hang" }, { method: "PUT", path: copyPath(copyContainer), times: 1000 });
    const started = Date.now();
    const [result] = await backupAll(app.deps, safeLogger(app.context()), {
      trigger: "timer",
      runDeadline: new Date(app.clock.now().getTime() + 4000),
    });
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(result).toMatchObject({ outcome: "Succeeded" });
    expect(result!.record).toMatchObject({
      status: "Succeeded",
      copyStatus: "Failed",
      copyMessage: expect.stringMatching(/failed while writing mhsm-[^ ]+: the run's deadline passed$/),
    });
    expect(proxy.stats().hang).toBeGreaterThan(0);
  });

  it("a status read that settles the record while the copy runs: its outcome stands, and the verification and copy are added to it", async () => {
    const { app, proxy, copyContainer } = await copyingApp();
    await app.deps.copyTarget!.blobService.getContainerClient(copyContainer).create();
    proxy.inject({ kind: "delay", ms: 1500 }, { method: "PUT", path: copyPath(copyContainer), times: 1 });
    const run = backupAll(app.deps, safeLogger(app.context()), { trigger: "timer" });
    await expect.poll(() => proxy.log.filter((l) => l.fault === "delay").length, { timeout: 10_000 }).toBe(1);
    const [running] = (await app.deps.catalog.list("backup", { top: 1 })).items;
    const read = bodyOf(await getBackup(get(`/api/backups/${running!.id}`), app.context("getBackup"), app.deps));
    expect(read).toMatchObject({ status: "Succeeded" });
    expect(read.copyStatus).toBeUndefined();

    const [result] = await run;
    expect(result).toMatchObject({ outcome: "Succeeded" });
    const [record] = (await app.deps.catalog.list("backup", { top: 1 })).items;
    expect(record).toMatchObject({
      id: running!.id,
      status: "Succeeded",
      endedAt: read.endedAt,
      verification: "Passed",
      copyStatus: "Copied",
    });
    expect(events(app.logs, "MhsmBackupOutcome")).toHaveLength(1);
  });

  it("copies a blob larger than one block (several blocks, same bytes) and an empty one", async () => {
    const { app, copyContainer } = await copyingApp();
    await app.deps.prepare();
    const backups = app.deps.storage.blobService.getContainerClient(app.container);
    const folderName = "mhsm-large-2026120102000012";
    const large = randomBytes(9 * 1024 * 1024 + 17);
    await backups.getBlockBlobClient(`${folderName}/large`).uploadData(large);
    await backups.getBlockBlobClient(`${folderName}/empty`).uploadData(Buffer.alloc(0));
    const hsm = app.deps.config.hsms[0]!;
    const fields = await copyBackup(
      app.deps,
      hsm,
      `${backups.url}/${folderName}`,
      "Passed",
      new Date(app.clock.now().getTime() + 60_000),
      safeLogger(app.context()),
    );
    expect(fields).toMatchObject({ copyStatus: "Copied" });
    const copies = app.deps.storage.blobService.getContainerClient(copyContainer);
    expect((await copies.getBlobClient(`${folderName}/large`).downloadToBuffer()).equals(large)).toBe(true);
    expect(
      (await copies.getBlockBlobClient(`${folderName}/large`).getBlockList("committed")).committedBlocks?.length,
    ).toBe(3);
    expect((await copies.getBlobClient(`${folderName}/empty`).getProperties()).contentLength).toBe(0);
  });

  it("refuses to copy a folder the backup container does not hold: another container, a path, nothing there", async () => {
    const { app } = await copyingApp();
    await app.deps.prepare();
    const hsm = app.deps.config.hsms[0]!;
    const container = app.deps.storage.containerUrl(app.container);
    const copy = (folderUri: string) =>
      copyBackup(
        app.deps,
        hsm,
        folderUri,
        "Passed",
        new Date(app.clock.now().getTime() + 60_000),
        safeLogger(app.context()),
      );
    expect(await copy(`${container}-other/mhsm-x-1`)).toMatchObject({
      copyStatus: "Failed",
      copyMessage: expect.stringMatching(/is not a folder of the backup container/),
    });
    expect(await copy(`${container}/../mhsm-x-1`)).toMatchObject({ copyStatus: "Failed" });
    expect(await copy(`${container}/mhsm-nothing-here-1`)).toMatchObject({
      copyStatus: "Failed",
      copyMessage: expect.stringMatching(/holds no blob under mhsm-nothing-here-1\/$/),
    });
  });

  it("does not copy a backup the HSM's check refused (Skipped, saying why)", async () => {
    const { app, hsm, proxy, copyContainer } = await copyingApp();
    hsm.faults.failNextJob("restore", { code: "InvalidBackup", message: "Invalid backup provided" });
    const record = await nightly(app);
    expect(record).toMatchObject({
      status: "Succeeded",
      verification: "Failed",
      copyStatus: "Skipped",
      copyMessage: expect.stringMatching(/pre-restore check refused/),
    });
    expect(proxy.log.filter((r) => copyPath(copyContainer).test(r.path))).toEqual([]);
  });

  it("with copies off, nothing is copied and the record has no copy fields", async () => {
    const hsm = await night.emulator();
    const connection = inject("azuriteConnectionString");
    const proxy: FaultProxy = await night.proxy(/(?:^|;)BlobEndpoint=([^;]+)/.exec(connection)![1]!);
    const { app } = await night.app([hsm.url], {
      env: { BackupStorage: withEndpoint(connection, "BlobEndpoint", proxy.url) },
    });
    expect(app.deps.copyTarget).toBeUndefined();
    const record = await nightly(app);
    expect(record.status).toBe("Succeeded");
    expect(Object.keys(record).filter((k) => k.startsWith("cop"))).toEqual([]);
    // Every blob request the app and the HSM made went to the backup container.
    const paths = proxy.log.map((r) => r.path);
    expect(paths.length).toBeGreaterThan(0);
    expect(paths.filter((p) => !p.startsWith(`/devstoreaccount1/${app.container}`))).toEqual([]);
    expect(bodyOf(await health(get("/api/health"), app.context(), app.deps)).hsms[0]).not.toHaveProperty("copyMissing");
  });
});
