/**
 * BackupStorage as a connection string is parsed by the storage SDKs themselves
 * (BlobServiceClient/TableClient.fromConnectionString); the app insists only on an account key,
 * which it signs the HSM's SAS with. No network: building clients and signing a SAS are local.
 */
import { DefaultAzureCredential } from "@azure/identity";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../../src/lib/config.js";
import { createBackupStorage } from "../../src/lib/storage.js";

const credential = new DefaultAzureCredential();
const connect = (connectionString: string) =>
  createBackupStorage({ kind: "connectionString", connectionString }, credential);

describe("BackupStorage connection strings", () => {
  it("UseDevelopmentStorage=true is Azurite's default account, with a SAS the app can sign", async () => {
    const storage = connect("UseDevelopmentStorage=true");
    expect(storage.containerUrl("mhsm-backups")).toBe("http://127.0.0.1:10000/devstoreaccount1/mhsm-backups");
    expect(storage.table("hsmbackups").url).toBe("http://127.0.0.1:10002/devstoreaccount1");
    const sas = await storage.containerSas("mhsm-backups", "backup", 60);
    expect(sas.permissions).toBe("crdw");
    expect([...new URLSearchParams(sas.token).get("sp")!].sort().join("")).toBe("cdrw");
    expect(new URLSearchParams(sas.token).get("sig")).toMatch(/^[A-Za-z0-9+/]+=*$/);
  });

  it("an account string gets the endpoints it names, or the account's defaults", () => {
    const key = Buffer.alloc(64, 1).toString("base64");
    const named = connect(
      `DefaultEndpointsProtocol=https;AccountName=stbak;AccountKey=${key};EndpointSuffix=core.windows.net`,
    );
    expect(named.containerUrl("c")).toBe("https://stbak.blob.core.windows.net/c");
    expect(named.table("t").url).toBe("https://stbak.table.core.windows.net");
    const explicit = connect(
      `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${key};BlobEndpoint=http://127.0.0.1:4100/devstoreaccount1;TableEndpoint=http://127.0.0.1:4102/devstoreaccount1`,
    );
    expect(explicit.containerUrl("c")).toBe("http://127.0.0.1:4100/devstoreaccount1/c");
    expect(explicit.table("t").url).toBe("http://127.0.0.1:4102/devstoreaccount1");
  });

  it("refuses a string without an account key, naming the setting and the way out, and never echoes a key", () => {
    const sasOnly =
      "BlobEndpoint=https://stbak.blob.core.windows.net;TableEndpoint=https://stbak.table.core.windows.net;SharedAccessSignature=sv=2025-11-05&sig=c2VjcmV0";
    expect(() => connect(sasOnly)).toThrow(ConfigError);
    expect(() => connect(sasOnly)).toThrow(
      /Setting BackupStorage: the connection string has no AccountKey.*BackupStorage__blobServiceUri/,
    );
    expect(() => connect("AccountName=stbak;garbage")).toThrow(
      /Setting BackupStorage: the connection string was refused/,
    );
  });
});
