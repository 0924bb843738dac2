/**
 * The whole path through the real handlers, with real InvocationContext/HttpRequest, against Azurite
 * and the HSM emulator: nightly backup → catalog → blobs in Azurite → restore (full and one key) →
 * 202 → status → the deleted key is back.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KeyClient } from "@azure/keyvault-keys";
import { getBackup, listBackups } from "../../src/handlers/backups.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { postRestore } from "../../src/handlers/restores.js";
import { MANIFEST_BLOB } from "../../tools/hsm-emulator/index.js";
import { deleteAndPurge, liveKeyId } from "../../tools/key-client.js";
import {
  bodyOf,
  events,
  get,
  headerOf,
  keyClient,
  onTime,
  postJson,
  request,
  startTestApp,
  waitForRestore,
  type TestApp,
} from "../support/app.js";

describe("nightly backup and restore through the handlers", () => {
  let app: TestApp;
  let backup: any;
  /** Keys are handled as an operator would: with the official KeyClient, over the app's HTTPS transport. */
  let keys: KeyClient;

  beforeAll(async () => {
    app = await startTestApp();
    keys = keyClient(app);
    await keys.createRsaKey("payments-rsa", { hsm: true });
    await keys.createEcKey("tokens-ec", { hsm: true });
    await keys.createKey("wrapping-oct", "oct-HSM");
  });
  afterAll(() => app.stop());

  it("records a Succeeded backup whose folder exists as blobs in Azurite", async () => {
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);

    const response = await listBackups(get("/api/backups"), app.context("listBackups"), app.deps);
    expect(response.status).toBe(200);
    const { items } = bodyOf(response);
    expect(items).toHaveLength(1);
    backup = items[0];
    const containerUrl = app.deps.storage.containerUrl(app.container);
    expect(backup).toMatchObject({ hsmName: app.deps.config.hsms[0]!.name, status: "Succeeded", trigger: "timer" });
    expect(backup.jobId).toMatch(/^[0-9a-f]{32}$/);
    expect(backup.folderUri).toMatch(new RegExp(`^${containerUrl}/mhsm-testhsm0-\\d{16}$`));
    expect(Date.parse(backup.endedAt)).toBeGreaterThanOrEqual(Date.parse(backup.startedAt));
    expect(backup.durationSeconds).toBeGreaterThanOrEqual(0);

    const folder = backup.folderUri.slice(containerUrl.length + 1);
    const blobs: string[] = [];
    for await (const blob of app.deps.storage.blobService
      .getContainerClient(app.container)
      .listBlobsFlat({ prefix: `${folder}/` })) {
      blobs.push(blob.name.slice(folder.length + 1));
    }
    expect(blobs).toEqual(
      expect.arrayContaining([
        "manifest.json",
        "keys/payments-rsa.json",
        "keys/tokens-ec.json",
        "keys/wrapping-oct.json",
      ]),
    );

    const one = await getBackup(get(`/api/backups/${backup.id}`), app.context("getBackup"), app.deps);
    expect(one.status).toBe(200);
    expect(bodyOf(one)).toEqual(backup);
  });

  it("refuses a full restore within 30 minutes of the backup, then restores the whole HSM", async () => {
    const hsm = app.emulators[0]!;
    await deleteAndPurge(keys, "payments-rsa");
    await keys.createRsaKey("created-after-backup");

    const unconfirmed = await postRestore(
      postJson("/api/restores", { backupId: backup.id }),
      app.context("postRestore"),
      app.deps,
    );
    expect(unconfirmed.status).toBe(400);
    expect(bodyOf(unconfirmed)).toMatchObject({ title: "Full restore not confirmed", confirm: backup.hsmName });
    expect(bodyOf(unconfirmed).detail).toContain(`send {"backupId": "${backup.id}", "confirm": "${backup.hsmName}"}`);
    const wrongName = await postRestore(
      postJson("/api/restores", { backupId: backup.id, confirm: "contoso" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(wrongName.status).toBe(400);
    expect(bodyOf(wrongName).title).toBe("Confirmation names another HSM");
    expect((await app.deps.catalog.list("restore", { top: 5 })).items).toEqual([]);

    const tooSoon = await postRestore(
      postJson("/api/restores", { backupId: backup.id, confirm: backup.hsmName }),
      app.context("postRestore"),
      app.deps,
    );
    expect(tooSoon.status).toBe(409);
    expect(headerOf(tooSoon, "content-type")).toBe("application/problem+json");
    expect(bodyOf(tooSoon).detail).toMatch(/at least 30 minutes before a full restore/);
    expect(Number(headerOf(tooSoon, "retry-after"))).toBeGreaterThan(1700);
    expect(hsm.requests.filter((r) => r.path === "/restore")).toHaveLength(0);

    app.clock.advance(31 * 60_000);
    const started = await postRestore(
      postJson("/api/restores", { backupId: backup.id, confirm: backup.hsmName }),
      app.context("postRestore"),
      app.deps,
    );
    expect(started.status).toBe(202);
    const body = bodyOf(started);
    expect(headerOf(started, "location")).toBe(`/api/restores/${body.id}`);
    expect(body).toMatchObject({
      status: "Running",
      backupId: backup.id,
      folderUri: backup.folderUri,
      statusUrl: `/api/restores/${body.id}`,
    });
    expect(body.keyName).toBeUndefined();

    const final = await waitForRestore(app, body.statusUrl);
    expect(final).toMatchObject({ status: "Succeeded", jobId: body.jobId });
    expect(await liveKeyId(keys, "payments-rsa")).toBeDefined();
    // A full restore puts the HSM back to the backup's state: what came later is gone.
    expect(await liveKeyId(keys, "created-after-backup")).toBeUndefined();
  });

  it("restores one purged key and leaves the rest alone", async () => {
    const hsm = app.emulators[0]!;
    await deleteAndPurge(keys, "tokens-ec");
    await keys.createRsaKey("unrelated-new-key");

    const started = await postRestore(
      postJson("/api/restores", { backupId: backup.id, keyName: "tokens-ec" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(started.status).toBe(202);
    const body = bodyOf(started);
    expect(body).toMatchObject({ status: "Running", keyName: "tokens-ec" });
    const final = await waitForRestore(app, body.statusUrl);
    expect(final.status).toBe("Succeeded");
    expect(final.statusDetails).toMatch(/Number of successful key versions restored: 1/);
    expect((await keys.getKey("tokens-ec")).keyType).toBe("EC-HSM");
    expect(await liveKeyId(keys, "unrelated-new-key")).toBeDefined();
    const put = hsm.requests.filter(
      (r) => r.method === "PUT" && r.path === "/keys/tokens-ec/restore" && r.status === 202,
    );
    expect(put).toHaveLength(1);
  });

  it("records who asked: the App Service Authentication principal when present, else the function key", async () => {
    const asked = async (headers: Record<string, string>) => {
      const body = JSON.stringify({ backupId: backup.id, keyName: "tokens-ec" });
      const response = await postRestore(
        request("POST", "/api/restores", body, headers),
        app.context("postRestore"),
        app.deps,
      );
      expect(response.status).toBe(202);
      const final = await waitForRestore(app, bodyOf(response).statusUrl);
      const started = events(app.logs, "MhsmRestoreStarted").find((e) => e.recordId === final.id);
      return { record: final.requestedBy, event: started?.requestedBy };
    };
    const principal = {
      "x-ms-client-principal-name": "alice@contoso.com",
      "x-ms-client-principal-id": "3f2b8c1e-0d4a-4c7e-9b1f-5a6e7d8c9b0a",
    };
    const alice = "alice@contoso.com (3f2b8c1e-0d4a-4c7e-9b1f-5a6e7d8c9b0a)";
    expect(await asked(principal)).toEqual({ record: alice, event: alice });
    expect(await asked({})).toEqual({ record: "function key", event: "function key" });
  });

  it("lists newest first and pages with a continuation token", async () => {
    for (let i = 0; i < 3; i++) {
      app.clock.advance(24 * 3_600_000); // one run per night: each its own schedule slot
      await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    }
    const first = bodyOf(await listBackups(get("/api/backups?top=2"), app.context(), app.deps));
    expect(first.items).toHaveLength(2);
    expect(first.continuationToken).toBeTypeOf("string");
    const second = bodyOf(
      await listBackups(
        get(`/api/backups?top=2&continuationToken=${encodeURIComponent(first.continuationToken)}`),
        app.context(),
        app.deps,
      ),
    );
    expect(second.items).toHaveLength(2);
    expect(second.continuationToken).toBeUndefined();
    const all = [...first.items, ...second.items];
    const started = all.map((r: any) => Date.parse(r.startedAt));
    expect(started).toEqual([...started].sort((a, b) => b - a));
    expect(all.at(-1).id).toBe(backup.id);
    expect(new Set(all.map((r: any) => r.id)).size).toBe(4);

    const failed = bodyOf(await listBackups(get("/api/backups?status=Failed"), app.context(), app.deps));
    expect(failed.items).toEqual([]);
    const byHsm = bodyOf(
      await listBackups(
        get(`/api/backups?hsm=${app.deps.config.hsms[0]!.name}&status=Succeeded&top=100`),
        app.context(),
        app.deps,
      ),
    );
    expect(byHsm.items).toHaveLength(4);
  });
});

describe("a restore from a folder the HSM finds invalid", () => {
  let app: TestApp;
  beforeAll(async () => {
    app = await startTestApp();
  });
  afterAll(() => app.stop());

  it("records the HSM's recorded answer: Failed with 'Invalid backup provided' and no code of its own", async () => {
    const keys = keyClient(app);
    await keys.createRsaKey("k1");
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const [backup] = bodyOf(await listBackups(get("/api/backups"), app.context(), app.deps)).items;
    expect(backup.status).toBe("Succeeded");
    // The folder loses its manifest in storage: the emulator answers as a real HSM did for a bad
    // folder (recorded): status Failed, statusDetails only, an error object whose fields are all null.
    const folder = backup.folderUri.split("/").pop();
    await app.deps.storage.blobService.getContainerClient(app.container).deleteBlob(`${folder}/${MANIFEST_BLOB}`);
    await deleteAndPurge(keys, "k1");

    const started = await postRestore(
      postJson("/api/restores", { backupId: backup.id, keyName: "k1" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(started.status).toBe(202);
    const final = await waitForRestore(app, bodyOf(started).statusUrl);
    expect(final).toMatchObject({ status: "Failed", errorCode: "Failed" });
    expect(final.errorMessage).toMatch(/selectiveKeyRestore job [0-9a-f]{32} ended Failed: Invalid backup provided$/);
    expect(final.errorMessage).not.toMatch(/null|undefined/);
    const [job] = app.emulators[0]!.jobs().filter((j) => j.kind === "selectiveKeyRestore");
    expect(job).toMatchObject({ status: "Failed", errorCode: "InvalidBackup" });
    expect(await liveKeyId(keys, "k1")).toBeUndefined();
  });
});
