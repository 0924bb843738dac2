import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { DefaultAzureCredential, ManagedIdentityCredential } from "@azure/identity";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  applyIdentityEnv,
  startIdentityEndpoint,
  unsignedJwt,
  type IdentityEndpoint,
} from "../../tools/identity-endpoint.js";

// MSAL node keeps the managed identity source (with IDENTITY_ENDPOINT/HEADER) and the token cache in
// static fields for the life of the process. Vitest runs each test file in its own process, so this file
// points the environment at ONE endpoint before any credential exists, gives every test its own
// resource (so cache hits from other tests cannot blur request counts), and runs the scenarios that
// need a fresh MSAL (wrong header, environment set late) in child Node processes.

const TENANT_ID = "7d3f0a4e-0000-4000-8000-000000000001";
const PRINCIPAL_ID = "9b1c2d3e-0000-4000-8000-000000000002";
const SYSTEM_CLIENT_ID = "5a6b7c8d-0000-4000-8000-000000000003";
const PROJECT_ROOT = fileURLToPath(new URL("../..", import.meta.url));

let endpoint: IdentityEndpoint;
let restoreEnv: () => void;

beforeAll(async () => {
  endpoint = await startIdentityEndpoint({
    tenantId: TENANT_ID,
    principalId: PRINCIPAL_ID,
    clientId: SYSTEM_CLIENT_ID,
  });
  restoreEnv = applyIdentityEnv(endpoint.env);
});

afterAll(async () => {
  restoreEnv?.();
  await endpoint?.stop();
});

function claimsOf(token: string): Record<string, unknown> {
  const payload = token.split(".")[1];
  if (payload === undefined) throw new Error(`not a JWT: ${token}`);
  return JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Record<string, unknown>;
}

function requestsFor(resource: string) {
  return endpoint.requests.filter((request) => request.resource === resource);
}

describe("the App Service protocol over HTTP", () => {
  const url = (query: string) => `${endpoint.env.IDENTITY_ENDPOINT}?${query}`;
  const resource = "https://protocol.example";

  it("answers a correct request with the 2019-08-01 token shape and an unsigned JWT", async () => {
    const response = await fetch(url(`resource=${encodeURIComponent(resource)}&api-version=2019-08-01`), {
      headers: { "X-IDENTITY-HEADER": endpoint.env.IDENTITY_HEADER },
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(["access_token", "client_id", "expires_on", "resource", "token_type"]);
    expect(body).toMatchObject({ resource, token_type: "Bearer", client_id: SYSTEM_CLIENT_ID });
    expect(body.expires_on).toMatch(/^\d+$/);

    const token = String(body.access_token);
    const header = JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString("utf8")) as unknown;
    expect(header).toEqual({ alg: "none", typ: "JWT" });
    expect(token.endsWith(".")).toBe(true);
    const claims = claimsOf(token);
    const now = Math.floor(Date.now() / 1000);
    expect(claims).toMatchObject({
      aud: resource,
      iss: `https://sts.windows.net/${TENANT_ID}/`,
      oid: PRINCIPAL_ID,
      tid: TENANT_ID,
      appid: SYSTEM_CLIENT_ID,
      exp: Number(body.expires_on),
    });
    expect(claims.nbf).toBeLessThanOrEqual(now);
    expect(claims.iat).toBeLessThanOrEqual(now);
    expect(Number(body.expires_on) - now).toBeGreaterThan(3500);
    expect(requestsFor(resource)).toEqual([{ resource }]);
  });

  it.each([
    [
      "a missing X-IDENTITY-HEADER",
      `resource=${resource}&api-version=2019-08-01`,
      {},
      400,
      /missing X-IDENTITY-HEADER/,
    ],
    [
      "a wrong X-IDENTITY-HEADER",
      `resource=${resource}&api-version=2019-08-01`,
      { "X-IDENTITY-HEADER": "nope" },
      401,
      /does not match/,
    ],
    [
      "another api-version",
      `resource=${resource}&api-version=2017-09-01`,
      "secret",
      400,
      /api-version "2017-09-01" not supported/,
    ],
    ["no resource", "api-version=2019-08-01", "secret", 400, /missing query parameter resource/],
  ] as const)("refuses %s with a JSON error", async (_case, query, headers, status, message) => {
    const before = endpoint.requests.length;
    const response = await fetch(url(query), {
      headers: headers === "secret" ? { "X-IDENTITY-HEADER": endpoint.env.IDENTITY_HEADER } : headers,
    });
    expect(response.status).toBe(status);
    const body = (await response.json()) as { statusCode: number; error: string; message: string };
    expect(body.statusCode).toBe(status);
    expect(body.message).toMatch(message);
    expect(endpoint.requests.length).toBe(before);
  });

  it("refuses another path with 400, not 404 (which @azure/identity would retry for ~15 s)", async () => {
    const wrongPath = endpoint.env.IDENTITY_ENDPOINT.replace("/msi/token", "/oauth2/token");
    const response = await fetch(`${wrongPath}?resource=${resource}&api-version=2019-08-01`, {
      headers: { "X-IDENTITY-HEADER": endpoint.env.IDENTITY_HEADER },
    });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { message: string }).message).toMatch(/no such path \/oauth2\/token/);
  });
});

describe("@azure/identity 4.13.1 against the endpoint", () => {
  it("DefaultAzureCredential gets a storage token as the endpoint's principal", async () => {
    const resource = "https://storage.azure.com";
    const token = await new DefaultAzureCredential().getToken(`${resource}/.default`);
    const claims = claimsOf(token.token);
    expect(claims).toMatchObject({
      aud: resource,
      oid: PRINCIPAL_ID,
      tid: TENANT_ID,
      iss: `https://sts.windows.net/${TENANT_ID}/`,
    });
    expect(token.tokenType).toBe("Bearer");
    expect(token.expiresOnTimestamp).toBe(Number(claims.exp) * 1000);
    // The `/.default` suffix is stripped: the endpoint sees the bare resource, with no client_id.
    expect(requestsFor(resource)).toEqual([{ resource }]);
  });

  it("ManagedIdentityCredential instances share MSAL's process-wide token cache", async () => {
    const resource = "https://managedhsm.azure.net";
    const first = await new ManagedIdentityCredential().getToken(`${resource}/.default`);
    const second = await new ManagedIdentityCredential().getToken(`${resource}/.default`);
    expect(claimsOf(first.token)).toMatchObject({ aud: resource, oid: PRINCIPAL_ID });
    expect(second.token).toBe(first.token);
    expect(requestsFor(resource)).toHaveLength(1);
  });

  it("a user-assigned identity's client id reaches the endpoint as client_id", async () => {
    const resource = "https://vault.azure.net";
    const clientId = "0c0ffee0-0000-4000-8000-000000000004";
    const viaOptions = await new ManagedIdentityCredential({ clientId }).getToken(`${resource}/.default`);
    expect(claimsOf(viaOptions.token)).toMatchObject({ aud: resource, appid: clientId, oid: PRINCIPAL_ID });
    // DefaultAzureCredential's option for the same thing; in Azure it comes from AZURE_CLIENT_ID.
    const viaDefault = await new DefaultAzureCredential({ managedIdentityClientId: clientId }).getToken(
      `${resource}/.default`,
    );
    expect(viaDefault.token).toBe(viaOptions.token);
    expect(requestsFor(resource)).toEqual([{ resource, clientId }]);
  });

  it("getToken ignores a tenantId option (as Key Vault's challenge policy passes): same tenant, no error", async () => {
    const resource = "https://tenant-option.example";
    const otherTenant = "00000000-0000-4000-8000-0000000000ff";
    const fromManagedIdentity = await new ManagedIdentityCredential().getToken(`${resource}/.default`, {
      tenantId: otherTenant,
    });
    const fromDefault = await new DefaultAzureCredential().getToken(`${resource}/.default`, { tenantId: otherTenant });
    expect(claimsOf(fromManagedIdentity.token).tid).toBe(TENANT_ID);
    expect(fromDefault.token).toBe(fromManagedIdentity.token);
    expect(requestsFor(resource)).toEqual([{ resource }]);
  });

  it("keeps using the first endpoint after process.env changes: the source is fixed at the first token request", async () => {
    await new ManagedIdentityCredential().getToken("https://first-request.example/.default");
    const second = await startIdentityEndpoint();
    const previous = { ...endpoint.env };
    try {
      process.env.IDENTITY_ENDPOINT = second.env.IDENTITY_ENDPOINT;
      process.env.IDENTITY_HEADER = second.env.IDENTITY_HEADER;
      const resource = "https://after-env-change.example";
      const token = await new DefaultAzureCredential().getToken(`${resource}/.default`);
      expect(claimsOf(token.token).tid).toBe(TENANT_ID);
      expect(requestsFor(resource)).toHaveLength(1);
      expect(second.requests).toEqual([]);
    } finally {
      Object.assign(process.env, previous);
      await second.stop();
    }
  });
});

describe("@azure/identity in a fresh process", () => {
  /** Runs an ES module snippet in a new Node process (fresh MSAL statics) and returns its JSON output. */
  async function runFresh(source: string, env: NodeJS.ProcessEnv): Promise<Record<string, unknown>> {
    const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", source], {
      cwd: PROJECT_ROOT,
      env,
      timeout: 30_000,
    });
    const lastLine = stdout.trim().split("\n").pop() ?? "";
    try {
      return JSON.parse(lastLine) as Record<string, unknown>;
    } catch {
      throw new Error(`child printed no JSON result:\n${stdout}`);
    }
  }

  const outcome = `
    const outcome = (promise) => promise.then(
      (token) => ({ ok: true, tid: JSON.parse(Buffer.from(token.token.split(".")[1], "base64url")).tid }),
      (error) => ({ ok: false, name: error.name, message: error.message }));`;

  it("a wrong IDENTITY_HEADER makes ManagedIdentityCredential and DefaultAzureCredential fail", async () => {
    const resource = "https://wrong-header.example";
    const result = await runFresh(
      `${outcome}
      const { DefaultAzureCredential, ManagedIdentityCredential } = await import("@azure/identity");
      const scope = "${resource}/.default";
      console.log(JSON.stringify({
        managed: await outcome(new ManagedIdentityCredential().getToken(scope)),
        chained: await outcome(new DefaultAzureCredential().getToken(scope)),
      }));`,
      // "prod" keeps a developer's own az/azd login from rescuing DefaultAzureCredential.
      { ...process.env, IDENTITY_HEADER: "not-the-secret", AZURE_TOKEN_CREDENTIALS: "prod" },
    );
    expect(result.managed).toMatchObject({
      ok: false,
      name: "CredentialUnavailableError",
      message: expect.stringMatching(
        /ManagedIdentityCredential: Authentication failed.*X-IDENTITY-HEADER does not match/s,
      ),
    });
    expect(result.chained).toMatchObject({
      ok: false,
      name: "AggregateAuthenticationError",
      message: expect.stringMatching(/ChainedTokenCredential authentication failed.*X-IDENTITY-HEADER does not match/s),
    });
    expect(requestsFor(resource)).toEqual([]);
  });

  it("ManagedIdentityCredential reads IDENTITY_* at the first token request, not at construction", async () => {
    const resource = "https://late-env.example";
    const { IDENTITY_ENDPOINT, IDENTITY_HEADER, ...withoutIdentity } = process.env;
    const result = await runFresh(
      `${outcome}
      const { ManagedIdentityCredential } = await import("@azure/identity");
      const credential = new ManagedIdentityCredential();
      process.env.IDENTITY_ENDPOINT = process.env.LATE_IDENTITY_ENDPOINT;
      process.env.IDENTITY_HEADER = process.env.LATE_IDENTITY_HEADER;
      console.log(JSON.stringify({ managed: await outcome(credential.getToken("${resource}/.default")) }));`,
      { ...withoutIdentity, LATE_IDENTITY_ENDPOINT: IDENTITY_ENDPOINT, LATE_IDENTITY_HEADER: IDENTITY_HEADER },
    );
    expect(result.managed).toEqual({ ok: true, tid: TENANT_ID });
    expect(requestsFor(resource)).toEqual([{ resource }]);
  });
});

describe("unsignedJwt", () => {
  it("encodes the claims as an alg:none JWT with an empty signature", () => {
    const token = unsignedJwt({ aud: "https://storage.azure.com", n: 1 });
    const [header, payload, signature] = token.split(".");
    expect(JSON.parse(Buffer.from(header!, "base64url").toString("utf8"))).toEqual({ alg: "none", typ: "JWT" });
    expect(JSON.parse(Buffer.from(payload!, "base64url").toString("utf8"))).toEqual({
      aud: "https://storage.azure.com",
      n: 1,
    });
    expect(signature).toBe("");
  });
});
