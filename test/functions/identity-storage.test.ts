/**
 * The path Azure uses, where shared-key access is off: an identity-based BackupStorage connection,
 * tokens from the managed-identity endpoint through DefaultAzureCredential, a user-delegation SAS
 * for the HSM, and the catalog over OAuth — against Azurite in OAuth mode over HTTPS.
 */
import { randomUUID } from "node:crypto";
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import type { ClientRequest } from "node:http";
import { InvocationContext } from "@azure/functions";
import { DefaultAzureCredential } from "@azure/identity";
import { KeyClient } from "@azure/keyvault-keys";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { listBackups } from "../../src/handlers/backups.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { getRestore, postRestore } from "../../src/handlers/restores.js";
import { parseConfig } from "../../src/lib/config.js";
import { createDeps, type AppDeps } from "../../src/lib/deps.js";
import { startAzurite, type Azurite } from "../../tools/azurite.js";
import type { HsmEmulator } from "../../tools/hsm-emulator/index.js";
import type { LoopbackTransport } from "../../tools/loopback-transport.js";
import { createSelfSignedCert, type SelfSignedCert } from "../../tools/tls.js";
import { deleteAndPurge, liveKeyId } from "../../tools/key-client.js";
import { bodyOf, get, onTime, postJson, realNames, startHttpsEmulator, uniqueName } from "../support/app.js";
import { HSM_SCOPE, STORAGE_SCOPE, bearerRecording, scopeRecordingCredential } from "../support/tokens.js";

describe("identity-based storage with user-delegation SAS (Azurite OAuth over HTTPS)", () => {
  let cert: SelfSignedCert;
  let azurite: Azurite;
  let hsm: HsmEmulator;
  let deps: AppDeps;
  let transport: LoopbackTransport;
  let hsmCalls: ReturnType<typeof bearerRecording>;
  let keys: KeyClient;
  const tokens = scopeRecordingCredential();
  const logs: string[] = [];
  const context = () =>
    new InvocationContext({
      invocationId: uniqueName("inv-"),
      functionName: "test",
      logHandler: (_l, ...a) => logs.push(a.join(" ")),
    });

  beforeAll(async () => {
    cert = createSelfSignedCert();
    azurite = await startAzurite({ https: cert });
    hsm = await startHttpsEmulator({
      name: "udhsm",
      retryAfterSeconds: 0,
      jobDurationMs: 100,
      storageClientOptions: { tlsOptions: { ca: cert.ca } },
    });
    const { urls, transport: hsmTransport } = realNames([hsm]);
    transport = hsmTransport;
    hsmCalls = bearerRecording(transport);
    const config = parseConfig({
      MANAGED_HSM_URLS: urls[0],
      BackupStorage__blobServiceUri: azurite.blobEndpoint,
      BackupStorage__tableServiceUri: azurite.tableEndpoint,
      BACKUP_CONTAINER: uniqueName("ud"),
      CATALOG_TABLE: uniqueName("ud"),
    });
    // Only the trust of the local CA is passed in; the credential is the app's own DefaultAzureCredential.
    deps = createDeps(config, {
      credential: tokens.credential,
      storageOptions: { tlsOptions: { ca: cert.ca } },
      hsmClientOptions: { defaultPollIntervalMs: 25, httpClient: hsmCalls.client },
    });
    keys = new KeyClient(urls[0]!, new DefaultAzureCredential(), { httpClient: transport });
    await keys.createRsaKey("ud-key");
  });
  afterAll(async () => {
    transport?.close();
    await hsm?.stop();
    await azurite?.stop();
    cert?.remove();
  });

  it("signs the SAS with a user-delegation key of the app's identity", async () => {
    const sas = await deps.storage.containerSas(deps.config.backupContainer, "backup", 30);
    const params = new URLSearchParams(sas.token);
    expect(params.get("skoid")).toBe(inject("identityPrincipalId"));
    expect([...params.get("sp")!].sort().join("")).toBe("cdrw");
    expect(params.get("sig")).toBeTruthy();
  });

  /** The requests the SDKs actually send while fn runs, observed at Node's http client. */
  async function requestsDuring<T>(fn: () => Promise<T>): Promise<{ value: T; requests: ClientRequest[] }> {
    const requests: ClientRequest[] = [];
    const onRequest = (message: unknown) => requests.push((message as { request: ClientRequest }).request);
    subscribe("http.client.request.start", onRequest);
    try {
      return { value: await fn(), requests };
    } finally {
      unsubscribe("http.client.request.start", onRequest);
    }
  }

  it("a fresh worker's first calls (table and container at once) fetch one storage token", async () => {
    // A user-assigned identity of its own: @azure/identity caches managed-identity tokens process-wide
    // per identity, so this one has none yet, whatever ran before in this worker.
    const storage = { ...deps.config.storage, clientId: randomUUID() } as AppDeps["config"]["storage"];
    const fresh = createDeps({ ...deps.config, storage }, { storageOptions: { tlsOptions: { ca: cert.ca } } });
    const identityHost = new URL(process.env.IDENTITY_ENDPOINT!).host;
    const { requests } = await requestsDuring(() => fresh.prepare());
    expect(
      requests
        .filter((r) => r.getHeader("host") === identityHost)
        .map((r) => new URL(r.path, "http://x").searchParams.get("resource")),
    ).toEqual(["https://storage.azure.com"]);
  });

  it("signs every SAS of a run with one user-delegation key; each SAS keeps its own expiry", async () => {
    const fresh = createDeps(deps.config, { storageOptions: { tlsOptions: { ca: cert.ca } } });
    const { value: sas, requests } = await requestsDuring(async () => {
      const all = await Promise.all(
        [1, 2, 3].map(() => fresh.storage.containerSas(deps.config.backupContainer, "backup", 30)),
      );
      return [...all, await fresh.storage.containerSas(deps.config.backupContainer, "restore", 30)];
    });
    expect(requests.filter((r) => r.path.includes("comp=userdelegationkey"))).toHaveLength(1);
    for (const s of sas) {
      const params = new URLSearchParams(s.token);
      // ske: the signing key's expiry; se: the SAS's own, still 30 minutes from when it was signed.
      expect(Date.parse(params.get("ske")!)).toBeGreaterThanOrEqual(Date.parse(params.get("se")!));
      expect(Math.abs(Date.parse(params.get("se")!) - s.expiresOn.getTime())).toBeLessThan(1000);
    }
  });

  it("backs up, records the backup and restores a key with no account key anywhere, each token to its own audience", async () => {
    expect(deps.config.storage.kind).toBe("identity");
    await nightlyBackup(onTime, context(), deps);
    const { items } = bodyOf(await listBackups(get("/api/backups"), context(), deps));
    expect(items).toHaveLength(1);
    expect(items[0]).toMatchObject({ status: "Succeeded" });
    expect(items[0].folderUri.startsWith(`${azurite.blobEndpoint}/${deps.config.backupContainer}/mhsm-udhsm-`)).toBe(
      true,
    );

    await deleteAndPurge(keys, "ud-key");
    const started = await postRestore(
      postJson("/api/restores", { backupId: items[0].id, keyName: "ud-key" }),
      context(),
      deps,
    );
    expect(started.status).toBe(202);
    let status = bodyOf(started);
    for (let i = 0; i < 100 && status.status === "Running"; i++) {
      await new Promise((r) => setTimeout(r, 25));
      status = bodyOf(await getRestore(get(`/api/restores/${status.id}`), context(), deps));
    }
    expect(status.status).toBe("Succeeded");
    expect(await liveKeyId(keys, "ud-key")).toBeDefined();
    expect(logs.join("\n")).not.toMatch(/sig=/);

    // The two audiences stayed apart: the HSM only ever got HSM tokens, storage tokens stayed with storage.
    const scopes = new Set(tokens.issued.values());
    expect(scopes).toEqual(new Set([HSM_SCOPE, STORAGE_SCOPE]));
    const sentToHsm = hsmCalls.bearers.filter((token): token is string => token !== undefined);
    expect(sentToHsm.length).toBeGreaterThan(0);
    for (const token of sentToHsm) expect(tokens.issued.get(token)).toBe(HSM_SCOPE);
    // The other direction is enforced by Azurite itself: with --oauth basic it refuses a token whose
    // aud is not https://storage.azure.com, so the storage calls above succeeding means no HSM token
    // reached it. Here: no token the HSM got is one that storage could have been sent.
    const storageTokens = [...tokens.issued].filter(([, scope]) => scope === STORAGE_SCOPE).map(([token]) => token);
    expect(storageTokens.length).toBeGreaterThan(0);
    expect(sentToHsm.filter((token) => storageTokens.includes(token))).toEqual([]);
  });
});
