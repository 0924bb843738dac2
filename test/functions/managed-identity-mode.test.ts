/**
 * HSM_STORAGE_AUTH=managedIdentity: the app signs no SAS; the HSM reaches storage with its own
 * user-assigned identity (emulated here by a storage client the emulator is given).
 */
import { BlobServiceClient, ContainerClient, type StorageSharedKeyCredential } from "@azure/storage-blob";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { postRestore } from "../../src/handlers/restores.js";
import { deleteAndPurge, liveKeyId } from "../../tools/key-client.js";
import { bodyOf, keyClient, onTime, postJson, startTestApp, waitForRestore, type TestApp } from "../support/app.js";

describe("managed-identity storage mode", () => {
  let app: TestApp;
  const sasIssued: string[] = [];

  beforeAll(async () => {
    // The HSM's own identity, played by the account key of Azurite's connection string.
    const hsmIdentity = BlobServiceClient.fromConnectionString(inject("azuriteConnectionString"))
      .credential as StorageSharedKeyCredential;
    app = await startTestApp({
      env: { HSM_STORAGE_AUTH: "managedIdentity", HSM_API_VERSION: "7.5" },
      emulator: { managedIdentityStorage: (containerUrl) => new ContainerClient(containerUrl, hsmIdentity) },
    });
    const sign = app.deps.storage.containerSas.bind(app.deps.storage);
    app.deps.storage.containerSas = async (...args) => {
      const sas = await sign(...args);
      sasIssued.push(sas.token);
      return sas;
    };
    await keyClient(app).createRsaKey("mi-key");
  });
  afterAll(() => app.stop());

  it("backs up and restores a key without ever signing a SAS, asking the HSM to use its identity", async () => {
    await nightlyBackup(onTime, app.context("nightlyBackup"), app.deps);
    const backup = (await app.deps.catalog.list("backup", { top: 1 })).items[0]!;
    expect(backup.status).toBe("Succeeded");

    const hsm = app.emulators[0]!;
    const keys = keyClient(app);
    await deleteAndPurge(keys, "mi-key");
    const started = await postRestore(
      postJson("/api/restores", { backupId: backup.id, keyName: "mi-key" }),
      app.context(),
      app.deps,
    );
    expect(started.status).toBe(202);
    expect((await waitForRestore(app, bodyOf(started).statusUrl)).status).toBe("Succeeded");
    expect(await liveKeyId(keys, "mi-key")).toBeDefined();

    expect(sasIssued).toEqual([]);
    const starts = hsm.requests.filter(
      (r) => r.headers.authorization && (r.path === "/backup" || r.path.endsWith("/restore")) && r.method !== "GET",
    );
    expect(starts).toHaveLength(2);
    expect(starts[0]!.query["api-version"]).toBe("7.5");
    expect(starts[0]!.body).toEqual({
      storageResourceUri: app.deps.storage.containerUrl(app.container),
      useManagedIdentity: true,
    });
    expect(starts[1]!.body).toMatchObject({
      sasTokenParameters: { useManagedIdentity: true },
      folder: expect.stringMatching(/^mhsm-testhsm0-/),
    });
    expect(JSON.stringify(starts[1]!.body)).not.toContain("token");
  });
});
