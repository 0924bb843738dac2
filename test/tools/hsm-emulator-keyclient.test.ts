/**
 * The official KeyClient (@azure/keyvault-keys) as a conformance test of the emulator's keys API:
 * over HTTPS to https://<name>.managedhsm.azure.net, challenge-resource verification on (its default),
 * a token from the project's managed-identity endpoint through DefaultAzureCredential. Only the
 * connection is redirected to the emulator, by the loopback transport. Where the client fails, the
 * emulator is wrong, not the test.
 */
import { DefaultAzureCredential } from "@azure/identity";
import { KeyClient } from "@azure/keyvault-keys";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { HsmEmulator } from "../../tools/hsm-emulator/index.js";
import type { LoopbackTransport } from "../../tools/loopback-transport.js";
import { HSM_DOMAIN, OTHER_DOMAIN, realNames, startHttpsEmulator } from "../support/app.js";

describe("the official KeyClient against the emulator over HTTPS", () => {
  let hsm: HsmEmulator;
  let transport: LoopbackTransport;
  let client: KeyClient;
  let url: string;
  // The pollers of delete and recover would wait 2 s between polls by default.
  const fast = { intervalInMs: 10 };

  beforeAll(async () => {
    hsm = await startHttpsEmulator({ name: "kchsm" });
    // The same emulator is also reachable under a name outside managedhsm.azure.net, for the check below.
    const names = realNames([hsm], { [`kchsm.${OTHER_DOMAIN}`]: hsm.port });
    transport = names.transport;
    url = names.urls[0]!;
    client = new KeyClient(url, new DefaultAzureCredential(), { httpClient: transport });
  });
  afterAll(async () => {
    transport?.close();
    await hsm?.stop();
  });

  it("creates RSA, EC and oct keys and reads them back with https kids on the HSM's own name", async () => {
    const rsa = await client.createRsaKey("kc-rsa", { hsm: true, keySize: 2048 });
    expect(rsa).toMatchObject({ name: "kc-rsa", keyType: "RSA-HSM" });
    expect(rsa.id).toMatch(
      new RegExp(`^https://kchsm\\.${HSM_DOMAIN.replace(/\./g, "\\.")}/keys/kc-rsa/[0-9a-f]{32}$`),
    );
    expect(rsa.properties.vaultUrl).toBe(url);
    const ec = await client.createEcKey("kc-ec", { hsm: true, curve: "P-256" });
    expect(ec.keyType).toBe("EC-HSM");
    const oct = await client.createKey("kc-oct", "oct-HSM");
    expect(oct.keyType).toBe("oct-HSM");

    const read = await client.getKey("kc-rsa");
    expect(read.id).toBe(rsa.id);
    expect(read.properties.enabled).toBe(true);
    const second = await client.createRsaKey("kc-rsa", { hsm: true });
    expect(second.properties.version).not.toBe(rsa.properties.version);
    expect((await client.getKey("kc-rsa", { version: rsa.properties.version! })).id).toBe(rsa.id);
    expect(hsm.keys.has("kc-ec")).toBe(true);

    // Every request went to the real name over https, and the first one was the token-less probe.
    expect(transport.sent.every((line) => line.includes(` https://kchsm.${HSM_DOMAIN}/`))).toBe(true);
    expect(hsm.requests[0]).toMatchObject({ status: 401 });
    expect(hsm.requests[0]!.headers.authorization).toBeUndefined();
  });

  it("lists keys and a key's versions", async () => {
    await client.createRsaKey("kc-list");
    await client.createRsaKey("kc-list");
    const names: string[] = [];
    for await (const properties of client.listPropertiesOfKeys()) names.push(properties.name);
    expect(names).toContain("kc-list");
    const versions: string[] = [];
    for await (const properties of client.listPropertiesOfKeyVersions("kc-list")) versions.push(properties.version!);
    expect(versions).toHaveLength(2);
    expect(new Set(versions).size).toBe(2);
  });

  it("deletes (poller), reads the deleted key, recovers it (poller), deletes and purges it", async () => {
    await client.createRsaKey("kc-gone");
    const deletion = await client.beginDeleteKey("kc-gone", fast);
    const deleted = await deletion.pollUntilDone();
    expect(deleted).toMatchObject({ name: "kc-gone" });
    expect(deleted.properties.recoveryId).toBe(`https://kchsm.${HSM_DOMAIN}/deletedkeys/kc-gone`);
    expect(deleted.properties.deletedOn).toBeInstanceOf(Date);
    await expect(client.getKey("kc-gone")).rejects.toMatchObject({ statusCode: 404 });

    const listed: string[] = [];
    for await (const item of client.listDeletedKeys()) listed.push(item.name);
    expect(listed).toContain("kc-gone");
    expect((await client.getDeletedKey("kc-gone")).name).toBe("kc-gone");

    const recovered = await (await client.beginRecoverDeletedKey("kc-gone", fast)).pollUntilDone();
    expect(recovered.name).toBe("kc-gone");
    expect((await client.getKey("kc-gone")).properties.enabled).toBe(true);

    await (await client.beginDeleteKey("kc-gone", fast)).pollUntilDone();
    await client.purgeDeletedKey("kc-gone");
    await expect(client.getDeletedKey("kc-gone")).rejects.toMatchObject({ statusCode: 404 });
    expect(hsm.keys.has("kc-gone") || hsm.keys.isDeleted("kc-gone")).toBe(false);
  });

  it("runs with challenge verification on: the same emulator under another domain gets no token", async () => {
    const before = hsm.requests.length;
    const elsewhere = new KeyClient(`https://kchsm.${OTHER_DOMAIN}`, new DefaultAzureCredential(), {
      httpClient: transport,
    });
    await expect(elsewhere.getKey("kc-rsa")).rejects.toThrow(
      /challenge resource 'managedhsm\.azure\.net' does not match the requested domain/,
    );
    const seen = hsm.requests.slice(before);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.headers.authorization).toBeUndefined();
  });

  it("gets the service's error shape for what does not exist", async () => {
    await expect(client.getKey("kc-never")).rejects.toMatchObject({ statusCode: 404, code: "KeyNotFound" });
    await expect(client.purgeDeletedKey("kc-never")).rejects.toMatchObject({ statusCode: 404 });
  });
});
