import type { TokenCredential } from "@azure/core-auth";
import { DefaultAzureCredential } from "@azure/identity";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ManagedHsmBackupClient, splitFolderUri } from "../../../src/lib/hsm/client.js";
import type { HsmEmulator } from "../../../tools/hsm-emulator/index.js";
import { startTestApp, type TestApp } from "../../support/app.js";

const unusedCredential: TokenCredential = { getToken: async () => null };

describe("ManagedHsmBackupClient URLs", () => {
  it.each([
    [
      "plain http to a real host",
      "http://contoso.managedhsm.azure.net",
      /must use https; plain http is accepted only for loopback hosts/,
    ],
    ["a path", "https://contoso.managedhsm.azure.net/keys", /without a path or query/],
    ["a query", "https://contoso.managedhsm.azure.net/?x=1", /without a path or query/],
  ])("refuses %s", (_case, url, message) => {
    expect(() => new ManagedHsmBackupClient(url, unusedCredential)).toThrow(message);
  });

  it("accepts https anywhere and plain http on loopback only", () => {
    expect(new ManagedHsmBackupClient("https://contoso.managedhsm.azure.net/", unusedCredential).vaultUrl).toBe(
      "https://contoso.managedhsm.azure.net",
    );
    expect(new ManagedHsmBackupClient("http://127.0.0.1:8443", unusedCredential).vaultUrl).toBe(
      "http://127.0.0.1:8443",
    );
    expect(new ManagedHsmBackupClient("http://localhost:8443", unusedCredential).vaultUrl).toBe(
      "http://localhost:8443",
    );
  });

  it("splits a folder URI after the container, keeping nested paths (as the .NET SDK did against real HSMs)", () => {
    expect(splitFolderUri("https://acct.blob.core.windows.net/backup/mhsm-x-2021020522531624")).toEqual({
      containerUri: "https://acct.blob.core.windows.net/backup",
      folder: "mhsm-x-2021020522531624",
    });
    expect(splitFolderUri("https://acct.blob.core.windows.net/backup/some/folder/name/mhsm-x-1")).toEqual({
      containerUri: "https://acct.blob.core.windows.net/backup",
      folder: "some/folder/name/mhsm-x-1",
    });
    // Azurite keeps the account in the path.
    expect(splitFolderUri("http://127.0.0.1:10000/devstoreaccount1/mhsm-backups/mhsm-x-1")).toEqual({
      containerUri: "http://127.0.0.1:10000/devstoreaccount1/mhsm-backups",
      folder: "mhsm-x-1",
    });
    expect(() => splitFolderUri("https://acct.blob.core.windows.net/backup")).toThrow(/names no folder/);
    expect(() => splitFolderUri("https://acct.blob.core.windows.net/backup/f?sv=x&sig=secret")).toThrow(
      /must not carry a query/,
    );
    expect(() => splitFolderUri("https://acct.blob.core.windows.net/backup/f?sv=x&sig=secret")).not.toThrow(/secret/);
  });
});

describe("ManagedHsmBackupClient against the emulator", () => {
  let app: TestApp;
  let hsm: HsmEmulator;
  /** The app's HSM URL (https://testhsm0.managedhsm.azure.net) and a new client for it, with the app's transport. */
  let url: string;
  const newClient = () =>
    new ManagedHsmBackupClient(url, new DefaultAzureCredential(), app.depsOptions.hsmClientOptions);
  beforeAll(async () => {
    app = await startTestApp({ emulator: { jobDurationMs: 300 } });
    hsm = app.emulators[0]!;
    url = app.deps.config.hsms[0]!.url;
    await app.deps.prepare();
  });
  afterAll(() => app.stop());

  it("lets a second client, knowing only the job id, wait for a job another client started", async () => {
    const sas = await app.deps.storage.containerSas(app.container, "backup", 10);
    const first = newClient();
    const started = await first.beginBackup(app.deps.storage.containerUrl(app.container), sas.token);
    const { jobId } = JSON.parse(started.toString());

    const second = newClient();
    const running = await second.getOperationStatus("backup", jobId);
    expect(running.status).toBe("InProgress");
    const final = await second.resumeOperation("backup", jobId).pollUntilDone();
    expect(final).toMatchObject({ status: "Succeeded", jobId });
    expect(final.folderUri).toMatch(/\/mhsm-testhsm0-\d{16}$/);
    const starts = hsm.requests.filter((r) => r.method === "POST" && r.path === "/backup" && r.status === 202);
    expect(starts).toHaveLength(1);
  });

  it("refuses a job id that could change the status path", async () => {
    const client = newClient();
    await expect(client.getOperationStatus("backup", "../keys/x")).rejects.toThrow(/is not a Managed HSM job id/);
    expect(() => client.resumeOperation("restore", "a/b")).toThrow(/is not a Managed HSM job id/);
  });

  it("reports an unknown job as a terminal failure carrying the service's code", async () => {
    const client = newClient();
    await expect(client.getOperationStatus("backup", "0123456789abcdef0123456789abcdef")).rejects.toMatchObject({
      name: "HsmJobFailedError",
      code: "NotFound",
    });
  });
});
