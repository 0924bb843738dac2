import { Agent } from "node:https";
import type { AccessToken, TokenCredential } from "@azure/core-auth";
import type { PipelineOptions } from "@azure/core-rest-pipeline";
import { TableClient } from "@azure/data-tables";
import { DefaultAzureCredential } from "@azure/identity";
import {
  AnonymousCredential,
  BlobServiceClient,
  ContainerClient,
  ContainerSASPermissions,
  generateBlobSASQueryParameters,
  SASProtocol,
  type StoragePipelineOptions,
  type UserDelegationKey,
} from "@azure/storage-blob";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AZURITE_ACCOUNT, startAzurite, type Azurite } from "../../tools/azurite.js";
import {
  applyIdentityEnv,
  startIdentityEndpoint,
  unsignedJwt,
  type IdentityEndpoint,
} from "../../tools/identity-endpoint.js";
import { createSelfSignedCert, type SelfSignedCert } from "../../tools/tls.js";

// The app's production path when the storage account has shared-key access off: managed identity
// (DefaultAzureCredential, unchanged) → bearer token → user delegation key → container SAS for the HSM.
// Locally: the identity endpoint hands out unsigned JWTs, Azurite runs over HTTPS with `--oauth basic`,
// and the clients trust Azurite's self-signed certificate through their options.

/** The two client options that make an SDK client trust a CA in process. data-tables' options type has them. */
type TrustOptions = Pick<PipelineOptions, "tlsOptions" | "agent">;

/**
 * storage-blob 12.32 forwards `tlsOptions` and `agent` to core-rest-pipeline at run time (it spreads
 * its options into createClientPipeline), but its StoragePipelineOptions type declares neither, so
 * passing them does not compile without widening the type.
 */
type BlobClientOptions = StoragePipelineOptions & TrustOptions;
const forBlob = (options: TrustOptions): BlobClientOptions => options;

/** Azurite 3.35 validates user delegation SAS with the 2025-07-05 string-to-sign; the SDK defaults to 2026-04-06. */
const AZURITE_SAS_VERSION = "2025-11-05";

let cert: SelfSignedCert;
let identity: IdentityEndpoint;
let restoreEnv: () => void;
let azurite: Azurite;
let credential: DefaultAzureCredential;

beforeAll(async () => {
  cert = createSelfSignedCert();
  identity = await startIdentityEndpoint();
  // Before the first credential exists: MSAL fixes the managed identity source per process.
  restoreEnv = applyIdentityEnv(identity.env);
  azurite = await startAzurite({ https: { certPath: cert.certPath, keyPath: cert.keyPath } });
  credential = new DefaultAzureCredential();
});

afterAll(async () => {
  await azurite?.stop();
  await identity?.stop();
  restoreEnv?.();
  cert?.remove();
});

const trustCa = (): TrustOptions => ({ tlsOptions: { ca: cert.ca } });
let nameCounter = 0;
const uniqueName = (prefix: string) => `${prefix}${Date.now().toString(36)}${(nameCounter++).toString(36)}`;

async function createContainer(): Promise<ContainerClient> {
  const container = new BlobServiceClient(azurite.blobEndpoint, credential, forBlob(trustCa())).getContainerClient(
    uniqueName("c"),
  );
  await container.create();
  return container;
}

async function userDelegationKey(): Promise<UserDelegationKey> {
  const now = Date.now();
  const service = new BlobServiceClient(azurite.blobEndpoint, credential, forBlob(trustCa()));
  return service.getUserDelegationKey(new Date(now - 5 * 60_000), new Date(now + 60 * 60_000));
}

/** A client that holds nothing but the SAS, as the HSM does. */
function containerSasClient(
  container: ContainerClient,
  key: UserDelegationKey,
  permissions: string,
  version: string | undefined,
) {
  const sas = generateBlobSASQueryParameters(
    {
      containerName: container.containerName,
      permissions: ContainerSASPermissions.parse(permissions),
      startsOn: new Date(Date.now() - 5 * 60_000),
      expiresOn: new Date(Date.now() + 30 * 60_000),
      protocol: SASProtocol.Https,
      ...(version === undefined ? {} : { version }),
    },
    key,
    AZURITE_ACCOUNT,
  );
  return {
    sas: sas.toString(),
    client: new ContainerClient(`${container.url}?${sas}`, new AnonymousCredential(), forBlob(trustCa())),
  };
}

function staticToken(claims: Record<string, unknown>): TokenCredential {
  return {
    getToken: async (): Promise<AccessToken> => ({
      token: unsignedJwt(claims),
      expiresOnTimestamp: Date.now() + 3_600_000,
    }),
  };
}

describe("trusting Azurite's self-signed certificate in process", () => {
  it("fails without the CA in the client options (nothing process-wide trusts it)", async () => {
    await expect(new BlobServiceClient(azurite.blobEndpoint, credential).getProperties()).rejects.toMatchObject({
      code: "DEPTH_ZERO_SELF_SIGNED_CERT",
    });
    await expect(
      new TableClient(azurite.tableEndpoint, uniqueName("t"), credential).createTable(),
    ).rejects.toMatchObject({
      code: "DEPTH_ZERO_SELF_SIGNED_CERT",
    });
  });

  it.each([
    ["tlsOptions: { ca }", (): TrustOptions => ({ tlsOptions: { ca: cert.ca } })],
    ["agent: new https.Agent({ ca })", (): TrustOptions => ({ agent: new Agent({ ca: cert.ca }) })],
  ])("works with %s for BlobServiceClient and TableClient", async (_name, options) => {
    await new BlobServiceClient(azurite.blobEndpoint, credential, forBlob(options()))
      .getContainerClient(uniqueName("c"))
      .create();
    await new TableClient(azurite.tableEndpoint, uniqueName("t"), credential, options()).createTable();
  });
});

describe("Azurite in OAuth mode", () => {
  it("gets the token from the identity endpoint", async () => {
    await createContainer();
    expect(identity.requests).toContainEqual({ resource: "https://storage.azure.com" });
  });

  it("refuses a token for another audience", async () => {
    const now = Math.floor(Date.now() / 1000);
    const vaultToken = staticToken({
      aud: "https://vault.azure.net",
      iss: `https://sts.windows.net/${identity.tenantId}/`,
      iat: now,
      nbf: now,
      exp: now + 3600,
      oid: identity.principalId,
      tid: identity.tenantId,
    });
    await expect(
      new BlobServiceClient(azurite.blobEndpoint, vaultToken, forBlob(trustCa()))
        .getContainerClient(uniqueName("c"))
        .create(),
    ).rejects.toMatchObject({ statusCode: 403, code: "AuthenticationFailed" });
    // Azurite's table errors are XML, which data-tables does not parse into `code`.
    await expect(
      new TableClient(azurite.tableEndpoint, uniqueName("t"), vaultToken, trustCa()).createTable(),
    ).rejects.toMatchObject({
      statusCode: 403,
    });
  });

  it("creates a table and upserts and reads an entity with the managed identity token", async () => {
    const table = new TableClient(azurite.tableEndpoint, uniqueName("t"), credential, trustCa());
    await table.createTable();
    await table.upsertEntity({ partitionKey: "vault1", rowKey: "2026-11-28", status: "Succeeded" }, "Replace");
    await table.upsertEntity({ partitionKey: "vault1", rowKey: "2026-11-28", status: "Verified" }, "Merge");
    const entity = await table.getEntity<{ status: string }>("vault1", "2026-11-28");
    expect(entity.status).toBe("Verified");
  });
});

describe("user delegation SAS", () => {
  it("the key is issued to the endpoint's principal and tenant", async () => {
    const key = await userDelegationKey();
    expect(key).toMatchObject({
      signedObjectId: identity.principalId,
      signedTenantId: identity.tenantId,
      signedService: "b",
      signedVersion: AZURITE_SAS_VERSION,
    });
  });

  it("a create+write SAS (what a backup needs) can upload and nothing else", async () => {
    const container = await createContainer();
    const { sas, client } = containerSasClient(container, await userDelegationKey(), "cw", AZURITE_SAS_VERSION);
    expect(new URLSearchParams(sas).get("spr")).toBe("https");
    const blob = client.getBlockBlobClient("backup/part-0001");
    await blob.upload("hsm backup bytes", 16);

    await expect(blob.download()).rejects.toMatchObject({ statusCode: 403, code: "AuthorizationPermissionMismatch" });
    // A HEAD answer has no body, so the SDK leaves `code` unset; the x-ms-error-code header is in details.
    await expect(blob.getProperties()).rejects.toMatchObject({
      statusCode: 403,
      code: undefined,
      details: { errorCode: "AuthorizationPermissionMismatch" },
    });
    await expect(client.listBlobsFlat().next()).rejects.toMatchObject({
      statusCode: 403,
      code: "AuthorizationPermissionMismatch",
    });
    await expect(blob.delete()).rejects.toMatchObject({ statusCode: 403, code: "AuthorizationPermissionMismatch" });
    // The blob is there: the OAuth client sees it.
    expect((await container.getBlockBlobClient("backup/part-0001").downloadToBuffer()).toString()).toBe(
      "hsm backup bytes",
    );
  });

  it("a read+list SAS (what a restore needs) can read and list but not write", async () => {
    const container = await createContainer();
    await container.getBlockBlobClient("backup/part-0001").upload("restore me", 10);
    const { client } = containerSasClient(container, await userDelegationKey(), "rl", AZURITE_SAS_VERSION);

    expect((await client.getBlockBlobClient("backup/part-0001").downloadToBuffer()).toString()).toBe("restore me");
    const listed = await client.listBlobsFlat().next();
    expect(listed.done).toBe(false);
    expect(listed.value?.name).toBe("backup/part-0001");
    await expect(client.getBlockBlobClient("backup/part-0002").upload("x", 1)).rejects.toMatchObject({
      statusCode: 403,
      code: "AuthorizationPermissionMismatch",
    });
  });

  it("a SAS for one container is refused on another", async () => {
    const [granted, other] = [await createContainer(), await createContainer()];
    const { sas } = containerSasClient(granted, await userDelegationKey(), "cw", AZURITE_SAS_VERSION);
    const wrong = new ContainerClient(`${other.url}?${sas}`, new AnonymousCredential(), forBlob(trustCa()));
    await expect(wrong.getBlockBlobClient("x").upload("x", 1)).rejects.toMatchObject({
      statusCode: 403,
      code: "AuthorizationFailure",
    });
  });

  // A canary: when Azurite learns the 2026-04-06 string-to-sign this fails, and the pin can go.
  it("with the SDK's default signed version (2026-04-06) is refused by Azurite 3.35", async () => {
    const container = await createContainer();
    const { sas, client } = containerSasClient(container, await userDelegationKey(), "cw", undefined);
    expect(new URLSearchParams(sas).get("sv")).toBe("2026-04-06");
    await expect(client.getBlockBlobClient("x").upload("x", 1)).rejects.toMatchObject({
      statusCode: 403,
      code: "AuthorizationFailure",
    });
  });
});
