/**
 * The container SAS the app hands the HSM can do no more than the job needs. Its powers are checked
 * by Azurite itself, through a ContainerClient that holds nothing but the SAS; its fields are read
 * from the token the app's own signing path produced.
 */
import { ContainerClient } from "@azure/storage-blob";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/lib/config.js";
import { createDeps } from "../../src/lib/deps.js";
import { SAS_VERSION, type SasPurpose } from "../../src/lib/storage.js";
import { startTestApp, uniqueName, type TestApp } from "../support/app.js";

const TTL_MINUTES = 37;
const SKEW_MS = 5 * 60_000;
const SEEDED_BLOB = "mhsm-seeded-20260101000000/manifest.json";
const SEEDED_TEXT = '{"seeded":true}';

/** SAS times are whole seconds: allow the truncation and a little scheduling slack. */
function expectTimeNear(actual: string | null, from: number, to: number): void {
  expect(actual).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
  const ms = Date.parse(actual!);
  expect(ms).toBeGreaterThanOrEqual(from - 1000);
  expect(ms).toBeLessThanOrEqual(to);
}

async function text(client: ContainerClient, blob: string): Promise<string> {
  return (await client.getBlockBlobClient(blob).downloadToBuffer()).toString("utf8");
}

async function firstPage(client: ContainerClient): Promise<string[]> {
  const page = await client.listBlobsFlat().byPage({ maxPageSize: 100 }).next();
  return page.done ? [] : page.value.segment.blobItems.map((b) => b.name);
}

const forbidden = (code?: string) => ({ statusCode: 403, ...(code ? { code } : {}) });

describe("container SAS for the HSM", () => {
  let app: TestApp;
  let otherContainer: string;

  beforeAll(async () => {
    app = await startTestApp({ env: { SAS_TTL_MINUTES: String(TTL_MINUTES) } });
    await app.deps.prepare();
    const service = app.deps.storage.blobService;
    await service
      .getContainerClient(app.container)
      .getBlockBlobClient(SEEDED_BLOB)
      .upload(SEEDED_TEXT, SEEDED_TEXT.length);
    otherContainer = uniqueName("other");
    await service.getContainerClient(otherContainer).create();
    await service
      .getContainerClient(otherContainer)
      .getBlockBlobClient(SEEDED_BLOB)
      .upload(SEEDED_TEXT, SEEDED_TEXT.length);
  });
  afterAll(async () => {
    await app?.deps.storage.blobService.getContainerClient(otherContainer).deleteIfExists();
    await app?.stop();
  });

  /** A client that can do exactly what the SAS allows, for the app's container or another one. */
  async function sasClient(
    purpose: SasPurpose,
    ttlMinutes = app.deps.config.sasTtlMinutes,
    container = app.container,
  ): Promise<ContainerClient> {
    const { token } = await app.deps.storage.containerSas(app.container, purpose, ttlMinutes);
    return new ContainerClient(`${app.deps.storage.containerUrl(container)}?${token}`);
  }

  describe("the token's fields", () => {
    it.each([
      ["backup", "rcwd", "crdw"],
      ["restore", "rl", "rl"],
    ] as const)(
      "the %s SAS is a container SAS with sp=%s, the pinned sv, and a start 5 minutes back and an end SAS_TTL_MINUTES ahead",
      async (purpose, sp, returned) => {
        expect(app.deps.config.sasTtlMinutes).toBe(TTL_MINUTES);
        const before = Date.now();
        const sas = await app.deps.storage.containerSas(app.container, purpose, app.deps.config.sasTtlMinutes);
        const after = Date.now();
        const params = new URLSearchParams(sas.token);
        // Nothing beyond a plain service SAS: no stored policy (si), no IP range, no account-SAS fields.
        expect([...params.keys()].sort()).toEqual(["se", "sig", "sp", "spr", "sr", "st", "sv"]);
        expect(params.get("sr")).toBe("c");
        // Storage wants permissions in its canonical order; as a set they are exactly the documented ones.
        expect(params.get("sp")).toBe(sp);
        expect([...params.get("sp")!].sort()).toEqual([...returned].sort());
        expect(sas.permissions).toBe(returned);
        expect(params.get("sv")).toBe(SAS_VERSION);
        expect(params.get("spr")).toBe("https,http");
        expectTimeNear(params.get("st"), before - SKEW_MS, after - SKEW_MS);
        expectTimeNear(params.get("se"), before + TTL_MINUTES * 60_000, after + TTL_MINUTES * 60_000);
        expect(Math.floor(sas.expiresOn.getTime() / 1000) * 1000).toBe(Date.parse(params.get("se")!));
        expect(sas.token.startsWith("?")).toBe(false);
      },
    );

    it("is https-only for a storage account that is not on loopback (signed locally, no network)", async () => {
      const accountKey = Buffer.from("not-a-real-key-but-valid-base64-for-signing").toString("base64");
      const remote = createDeps(
        parseConfig({
          MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
          BackupStorage: `DefaultEndpointsProtocol=https;AccountName=example;AccountKey=${accountKey};BlobEndpoint=https://example.blob.core.windows.net;TableEndpoint=https://example.table.core.windows.net`,
        }),
      );
      expect(remote.storage.containerUrl("mhsm-backups")).toBe("https://example.blob.core.windows.net/mhsm-backups");
      for (const purpose of ["backup", "restore"] as const) {
        const params = new URLSearchParams(
          (await remote.storage.containerSas("mhsm-backups", purpose, remote.config.sasTtlMinutes)).token,
        );
        expect(params.get("spr")).toBe("https");
        expect(params.get("sv")).toBe(SAS_VERSION);
        expect(params.get("sig")).toMatch(/.{40,}/);
      }
    });
  });

  describe("the backup SAS (create, read, delete, write) as Azurite enforces it", () => {
    it("creates, overwrites, reads and deletes blobs in its container", async () => {
      const client = await sasClient("backup");
      const blob = client.getBlockBlobClient(`mhsm-${uniqueName("b")}/keys/k1.json`);
      await blob.upload("first", 5);
      await blob.upload("second", 6);
      expect(await text(client, blob.name)).toBe("second");
      expect(await text(client, SEEDED_BLOB)).toBe(SEEDED_TEXT);
      await blob.delete();
      expect(await blob.exists()).toBe(false);
    });

    it("cannot list the container", async () => {
      const client = await sasClient("backup");
      await expect(firstPage(client)).rejects.toMatchObject(forbidden("AuthorizationPermissionMismatch"));
    });

    it("cannot delete or change the container itself", async () => {
      const client = await sasClient("backup");
      await expect(client.delete()).rejects.toMatchObject(forbidden());
      await expect(client.setMetadata({ owner: "hsm" })).rejects.toMatchObject(forbidden());
      expect(await app.deps.storage.blobService.getContainerClient(app.container).exists()).toBe(true);
    });

    it("reaches no other container", async () => {
      const client = await sasClient("backup", undefined, otherContainer);
      await expect(client.getBlockBlobClient("mhsm-x/keys/k1.json").upload("x", 1)).rejects.toMatchObject(forbidden());
      await expect(text(client, SEEDED_BLOB)).rejects.toMatchObject(forbidden());
      await expect(client.getBlockBlobClient(SEEDED_BLOB).delete()).rejects.toMatchObject(forbidden());
      expect(await text(app.deps.storage.blobService.getContainerClient(otherContainer), SEEDED_BLOB)).toBe(
        SEEDED_TEXT,
      );
    });
  });

  describe("the restore SAS (read, list) as Azurite enforces it", () => {
    it("reads and lists its container", async () => {
      const client = await sasClient("restore");
      expect(await firstPage(client)).toContain(SEEDED_BLOB);
      expect(await text(client, SEEDED_BLOB)).toBe(SEEDED_TEXT);
    });

    it("cannot create, overwrite, change or delete a blob", async () => {
      const client = await sasClient("restore");
      const mismatch = forbidden("AuthorizationPermissionMismatch");
      await expect(client.getBlockBlobClient(`mhsm-${uniqueName("r")}/new.json`).upload("x", 1)).rejects.toMatchObject(
        mismatch,
      );
      await expect(client.getBlockBlobClient(SEEDED_BLOB).upload("overwritten", 11)).rejects.toMatchObject(mismatch);
      await expect(client.getBlockBlobClient(SEEDED_BLOB).setMetadata({ tampered: "yes" })).rejects.toMatchObject(
        mismatch,
      );
      await expect(client.getBlockBlobClient(SEEDED_BLOB).delete()).rejects.toMatchObject(mismatch);
      const seeded = app.deps.storage.blobService.getContainerClient(app.container).getBlockBlobClient(SEEDED_BLOB);
      expect(await text(app.deps.storage.blobService.getContainerClient(app.container), SEEDED_BLOB)).toBe(SEEDED_TEXT);
      expect((await seeded.getProperties()).metadata).toEqual({});
    });

    it("reaches no other container", async () => {
      const client = await sasClient("restore", undefined, otherContainer);
      await expect(firstPage(client)).rejects.toMatchObject(forbidden());
      await expect(text(client, SEEDED_BLOB)).rejects.toMatchObject(forbidden());
    });
  });

  it.each(["backup", "restore"] as const)("an expired %s SAS, signed by the same path, is refused", async (purpose) => {
    // A negative TTL puts the expiry in the past through the app's own signing path; nothing waits.
    const sas = await app.deps.storage.containerSas(app.container, purpose, -1);
    expect(Date.parse(new URLSearchParams(sas.token).get("se")!)).toBeLessThan(Date.now());
    const client = new ContainerClient(`${app.deps.storage.containerUrl(app.container)}?${sas.token}`);
    await expect(text(client, SEEDED_BLOB)).rejects.toMatchObject(forbidden());
    if (purpose === "restore") await expect(firstPage(client)).rejects.toMatchObject(forbidden());
    else
      await expect(client.getBlockBlobClient(`mhsm-${uniqueName("e")}/x.json`).upload("x", 1)).rejects.toMatchObject(
        forbidden(),
      );
  });
});
