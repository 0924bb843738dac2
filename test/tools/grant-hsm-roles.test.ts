import { randomUUID } from "node:crypto";
import type { AccessToken, GetTokenOptions, TokenCredential } from "@azure/core-auth";
import { afterEach, describe, expect, inject, it } from "vitest";
import {
  HSM_ROLE_IDS,
  assignmentName,
  grantHsmRoles,
  parseHsmUrl,
  readHookSettings,
  runHook,
  type GrantHsmRolesOptions,
} from "../../tools/grant-hsm-roles.js";
import { startHsmEmulator, type HsmEmulator } from "../../tools/hsm-emulator/index.js";
import type { LoopbackTransport } from "../../tools/loopback-transport.js";
import { HSM_DOMAIN, realNames, startHttpsEmulator } from "../support/app.js";
import { unsignedJwt } from "../../tools/identity-endpoint.js";

const ROLE_PREFIX = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/";
const ADMINISTRATOR_ROLE = "a290e904-7015-4bba-90c8-60543313cdb4";

/** A stand-in for the signed-in user: unsigned JWTs for whatever resource the challenge names. */
class JwtCredential implements TokenCredential {
  readonly scopes: string[][] = [];
  constructor(private readonly oid: string) {}
  async getToken(scopes: string | string[], _options?: GetTokenOptions): Promise<AccessToken> {
    const list = Array.isArray(scopes) ? scopes : [scopes];
    this.scopes.push(list);
    const now = Math.floor(Date.now() / 1000);
    const aud = (list[0] ?? "").replace(/\/\.default$/, "");
    return {
      token: unsignedJwt({ aud, oid: this.oid, iat: now, nbf: now, exp: now + 3600 }),
      expiresOnTimestamp: (now + 3600) * 1000,
    };
  }
}

const emulators: HsmEmulator[] = [];
const transports: LoopbackTransport[] = [];
afterEach(async () => {
  for (const transport of transports.splice(0)) transport.close();
  await Promise.all(emulators.splice(0).map((e) => e.stop()));
});

/** An HTTPS emulator with RBAC on, reached as https://grantN.managedhsm.azure.net (see urlOf). */
async function emulator(adminOid: string): Promise<HsmEmulator> {
  const hsm = await startHttpsEmulator({
    name: `grant${emulators.length}`,
    enforceRbac: true,
    initialAdminObjectIds: [adminOid],
  });
  emulators.push(hsm);
  return hsm;
}

/** The real-looking URL the tool is given for an emulator. */
const urlOf = (hsm: HsmEmulator): string => `https://${hsm.name}.${HSM_DOMAIN}`;

function roleIdsOf(hsm: HsmEmulator, principalId: string): string[] {
  return hsm.roles
    .list()
    .filter((a) => a.properties.principalId === principalId && a.properties.scope === "/")
    .map((a) => a.properties.roleDefinitionId)
    .sort();
}

function run(
  hsms: HsmEmulator[],
  overrides: Partial<GrantHsmRolesOptions> & { credential: TokenCredential; principalId: string },
) {
  const lines: string[] = [];
  // As against a real HSM: https, the challenge-resource check on; only the connection is redirected.
  const { transport } = realNames(hsms);
  transports.push(transport);
  const promise = grantHsmRoles({
    hsmUrls: hsms.map(urlOf),
    restoreEnabled: true,
    httpClient: transport,
    log: (line) => lines.push(line),
    ...overrides,
  });
  return { promise, lines };
}

describe("grantHsmRoles against the Managed HSM emulator (RBAC enforced)", () => {
  it("grants Backup and Restore at scope / with the data-plane role assignment API, and prints what it did", async () => {
    const admin = randomUUID();
    const app = randomUUID();
    const hsm = await emulator(admin);
    const credential = new JwtCredential(admin);

    const { promise, lines } = run([hsm], { credential, principalId: app });
    const results = await promise;

    expect(results.map((r) => [r.role, r.action])).toEqual([
      ["Managed HSM Backup", "granted"],
      ["Managed HSM Restore", "granted"],
    ]);
    expect(roleIdsOf(hsm, app)).toEqual([ROLE_PREFIX + HSM_ROLE_IDS.restore, ROLE_PREFIX + HSM_ROLE_IDS.backup].sort());
    expect(lines).toEqual([
      `${urlOf(hsm)}: granted Managed HSM Backup to ${app} at scope / (assignment ${assignmentName(urlOf(hsm), app, HSM_ROLE_IDS.backup)})`,
      `${urlOf(hsm)}: granted Managed HSM Restore to ${app} at scope / (assignment ${assignmentName(urlOf(hsm), app, HSM_ROLE_IDS.restore)})`,
    ]);

    // The wire shape: the challenge probe first, then PUT {hsm}/{scope "/"}/providers/... with
    // api-version 7.4 and { properties: { roleDefinitionId, principalId } }.
    expect(hsm.requests[0]).toMatchObject({ method: "GET", status: 401 });
    const puts = hsm.requests.filter((r) => r.method === "PUT");
    expect(puts).toHaveLength(2);
    for (const put of puts) {
      expect(put.status).toBe(201);
      expect(put.path).toMatch(/^\/+providers\/Microsoft\.Authorization\/roleAssignments\/[0-9a-f-]{36}$/);
      expect(put.query["api-version"]).toBe("7.4");
      expect(put.headers.authorization).toBe("<redacted>");
    }
    expect(puts.map((p) => p.body)).toEqual([
      { properties: { roleDefinitionId: ROLE_PREFIX + HSM_ROLE_IDS.backup, principalId: app } },
      { properties: { roleDefinitionId: ROLE_PREFIX + HSM_ROLE_IDS.restore, principalId: app } },
    ]);
    // The token was asked for the resource the HSM's challenge names.
    expect(credential.scopes.flat()).toContain("https://managedhsm.azure.net/.default");
  });

  it("is idempotent: a second run finds both roles, sends no PUT and leaves one assignment per role", async () => {
    const admin = randomUUID();
    const app = randomUUID();
    const hsm = await emulator(admin);
    const credential = new JwtCredential(admin);
    await run([hsm], { credential, principalId: app }).promise;
    const before = hsm.requests.length;

    const { promise, lines } = run([hsm], { credential, principalId: app });
    const results = await promise;

    expect(results.map((r) => r.action)).toEqual(["already-granted", "already-granted"]);
    expect(hsm.requests.slice(before).filter((r) => r.method !== "GET")).toEqual([]);
    expect(hsm.roles.list().filter((a) => a.properties.principalId === app)).toHaveLength(2);
    expect(lines[0]).toContain("already granted");
  });

  it("accepts a role the principal already holds under another assignment name, without adding a copy", async () => {
    const admin = randomUUID();
    const app = randomUUID();
    const hsm = await emulator(admin);
    const manual = hsm.roles.assign(app, HSM_ROLE_IDS.backup);

    const results = await run([hsm], { credential: new JwtCredential(admin), principalId: app, restoreEnabled: false })
      .promise;

    expect(results[0]).toMatchObject({
      role: "Managed HSM Backup",
      action: "already-granted",
      assignmentName: manual.name,
    });
    expect(roleIdsOf(hsm, app)).toEqual([ROLE_PREFIX + HSM_ROLE_IDS.backup]);
  });

  it("grants only Backup when restore is disabled, and revokes the Restore assignment it made earlier", async () => {
    const admin = randomUUID();
    const app = randomUUID();
    const hsm = await emulator(admin);
    const credential = new JwtCredential(admin);
    await run([hsm], { credential, principalId: app }).promise;

    const { promise, lines } = run([hsm], { credential, principalId: app, restoreEnabled: false });
    const results = await promise;

    expect(results.map((r) => [r.role, r.action])).toEqual([
      ["Managed HSM Backup", "already-granted"],
      ["Managed HSM Restore", "revoked"],
    ]);
    expect(roleIdsOf(hsm, app)).toEqual([ROLE_PREFIX + HSM_ROLE_IDS.backup]);
    expect(lines[1]).toContain("revoked Managed HSM Restore");

    const again = await run([hsm], { credential, principalId: app, restoreEnabled: false }).promise;
    expect(again.map((r) => r.action)).toEqual(["already-granted", "not-granted"]);
  });

  it("grants on every HSM, with assignment names that differ per HSM", async () => {
    const admin = randomUUID();
    const app = randomUUID();
    const first = await emulator(admin);
    const second = await emulator(admin);

    const results = await run([first, second], { credential: new JwtCredential(admin), principalId: app }).promise;

    expect(results.map((r) => [r.hsm, r.action])).toEqual([
      [urlOf(first), "granted"],
      [urlOf(first), "granted"],
      [urlOf(second), "granted"],
      [urlOf(second), "granted"],
    ]);
    expect(roleIdsOf(first, app)).toHaveLength(2);
    expect(roleIdsOf(second, app)).toHaveLength(2);
    expect(results[0]!.assignmentName).not.toBe(results[2]!.assignmentName);
  });

  it("fails naming the HSM and the 403 when the signed-in user may not assign roles", async () => {
    const admin = randomUUID();
    const stranger = randomUUID();
    const hsm = await emulator(admin);

    const { promise } = run([hsm], { credential: new JwtCredential(stranger), principalId: randomUUID() });

    await expect(promise).rejects.toThrow(
      new RegExp(`^${urlOf(hsm)}: listing role assignments at scope / failed: HTTP 403.*Managed HSM Administrator`),
    );
    expect(hsm.roles.list().map((a) => a.properties.roleDefinitionId)).toEqual([ROLE_PREFIX + ADMINISTRATOR_ROLE]);
  });

  it("verifies the challenge resource unless told otherwise: a loopback host cannot match managedhsm.azure.net", async () => {
    const admin = randomUUID();
    const hsm = await startHsmEmulator({ enforceRbac: true, initialAdminObjectIds: [admin] });
    emulators.push(hsm);

    const promise = grantHsmRoles({
      hsmUrls: [hsm.url],
      principalId: randomUUID(),
      restoreEnabled: true,
      credential: new JwtCredential(admin),
      log: () => {},
    });

    await expect(promise).rejects.toThrow(/challenge resource .* does not match the requested domain/);
    expect(hsm.requests.filter((r) => r.method === "PUT")).toEqual([]);
  });
});

describe("operators (OPERATOR_PRINCIPAL_IDS)", () => {
  it("get exactly the app's roles on every HSM, each under its own assignment, the app's identity once", async () => {
    const admin = randomUUID();
    const app = randomUUID();
    const [alice, bob] = [randomUUID(), randomUUID()];
    const first = await emulator(admin);
    const second = await emulator(admin);

    const { promise, lines } = run([first, second], {
      credential: new JwtCredential(admin),
      principalId: app,
      operatorPrincipalIds: [alice, bob, app.toUpperCase()],
    });
    const results = await promise;

    expect(results.map((r) => [r.hsm, r.principalId, r.role, r.action])).toEqual(
      [first, second].flatMap((hsm) =>
        [app, alice, bob].flatMap((who) => [
          [urlOf(hsm), who, "Managed HSM Backup", "granted"],
          [urlOf(hsm), who, "Managed HSM Restore", "granted"],
        ]),
      ),
    );
    for (const hsm of [first, second]) {
      for (const who of [app, alice, bob]) {
        expect(roleIdsOf(hsm, who)).toEqual(
          [ROLE_PREFIX + HSM_ROLE_IDS.restore, ROLE_PREFIX + HSM_ROLE_IDS.backup].sort(),
        );
      }
      // Nothing beyond them: the administrator, and two roles for each of the three.
      expect(hsm.roles.list()).toHaveLength(1 + 3 * 2);
    }
    expect(lines).toContain(
      `${urlOf(first)}: granted Managed HSM Restore to ${bob} at scope / (assignment ${assignmentName(urlOf(first), bob, HSM_ROLE_IDS.restore)})`,
    );
  });

  it("lose the Restore grant the hook made when restore is disabled, as the app's identity does", async () => {
    const admin = randomUUID();
    const app = randomUUID();
    const alice = randomUUID();
    const hsm = await emulator(admin);
    const credential = new JwtCredential(admin);
    await run([hsm], { credential, principalId: app, operatorPrincipalIds: [alice] }).promise;

    const results = await run([hsm], {
      credential,
      principalId: app,
      operatorPrincipalIds: [alice],
      restoreEnabled: false,
    }).promise;

    expect(results.map((r) => [r.principalId, r.role, r.action])).toEqual([
      [app, "Managed HSM Backup", "already-granted"],
      [app, "Managed HSM Restore", "revoked"],
      [alice, "Managed HSM Backup", "already-granted"],
      [alice, "Managed HSM Restore", "revoked"],
    ]);
    expect(roleIdsOf(hsm, alice)).toEqual([ROLE_PREFIX + HSM_ROLE_IDS.backup]);
  });

  it("refuses an operator id that is not a GUID before sending anything", async () => {
    await expect(
      grantHsmRoles({
        hsmUrls: ["https://contoso.managedhsm.azure.net"],
        principalId: randomUUID(),
        operatorPrincipalIds: [randomUUID(), "alice@contoso.com"],
        restoreEnabled: true,
        credential: new JwtCredential(randomUUID()),
        httpClient: { sendRequest: () => Promise.reject(new Error("must not be called")) },
      }),
    ).rejects.toThrow(/^operator principal id "alice@contoso\.com" is not a GUID/);
  });
});

describe("runHook (what azd runs after provisioning)", () => {
  it("signs in through the credential chain and grants the roles from azd's environment", async () => {
    // The global test setup points IDENTITY_ENDPOINT at the local managed-identity endpoint, which
    // DefaultAzureCredential (after AzureDeveloperCliCredential, with no azd here) picks up.
    // The hook reads its settings from the environment and takes no transport: it reaches a stand-in
    // the way it would on a developer's machine, plain http on loopback.
    const signedIn = inject("identityPrincipalId");
    const hsm = await startHsmEmulator({ enforceRbac: true, initialAdminObjectIds: [signedIn] });
    emulators.push(hsm);
    const app = randomUUID();
    const lines: string[] = [];

    const results = await runHook(
      { MANAGED_HSM_URLS: hsm.url, FUNCTION_IDENTITY_PRINCIPAL_ID: app, RESTORE_ENABLED: "false" },
      (line) => lines.push(line),
    );

    expect(results.map((r) => [r.role, r.action])).toEqual([
      ["Managed HSM Backup", "granted"],
      ["Managed HSM Restore", "not-granted"],
    ]);
    expect(roleIdsOf(hsm, app)).toEqual([ROLE_PREFIX + HSM_ROLE_IDS.backup]);
    expect(lines[0]).toBe(`Granting Managed HSM Backup to ${app} on 1 HSM(s)`);
  });

  it("grants the operators in OPERATOR_PRINCIPAL_IDS too, and says so", async () => {
    const signedIn = inject("identityPrincipalId");
    const hsm = await startHsmEmulator({ enforceRbac: true, initialAdminObjectIds: [signedIn] });
    emulators.push(hsm);
    const [app, alice] = [randomUUID(), randomUUID()];
    const lines: string[] = [];

    await runHook(
      { MANAGED_HSM_URLS: hsm.url, FUNCTION_IDENTITY_PRINCIPAL_ID: app, OPERATOR_PRINCIPAL_IDS: alice },
      (line) => lines.push(line),
    );

    expect(roleIdsOf(hsm, alice)).toEqual(
      [ROLE_PREFIX + HSM_ROLE_IDS.restore, ROLE_PREFIX + HSM_ROLE_IDS.backup].sort(),
    );
    expect(lines[0]).toBe(
      `Granting Managed HSM Backup and Managed HSM Restore to ${app} and operator(s) ${alice} on 1 HSM(s)`,
    );
  });

  it("fails before signing in when the environment lacks the outputs", async () => {
    await expect(runHook({ MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net" }, () => {})).rejects.toThrow(
      /FUNCTION_IDENTITY_PRINCIPAL_ID/,
    );
  });
});

describe("what the hook refuses", () => {
  const credential = new JwtCredential(randomUUID());

  it("refuses to disable challenge verification for a non-loopback host, before sending anything", async () => {
    await expect(
      grantHsmRoles({
        hsmUrls: ["https://contoso.managedhsm.azure.net"],
        principalId: randomUUID(),
        restoreEnabled: true,
        credential,
        disableChallengeResourceVerification: true,
        httpClient: { sendRequest: () => Promise.reject(new Error("must not be called")) },
      }),
    ).rejects.toThrow(
      /refusing to disable challenge resource verification for "https:\/\/contoso\.managedhsm\.azure\.net": it is allowed only for loopback hosts/,
    );
  });

  it("refuses plain http except on loopback, and URLs with a path", () => {
    expect(() => parseHsmUrl("http://contoso.managedhsm.azure.net", false)).toThrow(/must use https/);
    expect(() => parseHsmUrl("https://contoso.managedhsm.azure.net/keys", false)).toThrow(/no path or query/);
    expect(parseHsmUrl("http://127.0.0.1:8443", true).origin).toBe("http://127.0.0.1:8443");
    expect(parseHsmUrl("http://localhost:8443", true).origin).toBe("http://localhost:8443");
    expect(parseHsmUrl("https://contoso.managedhsm.azure.net/", false).hostname).toBe("contoso.managedhsm.azure.net");
  });

  it("refuses a principal id that is not a GUID", async () => {
    await expect(
      grantHsmRoles({
        hsmUrls: ["https://contoso.managedhsm.azure.net"],
        principalId: "my-app",
        restoreEnabled: true,
        credential,
      }),
    ).rejects.toThrow(/principal id "my-app" is not a GUID/);
  });
});

describe("assignmentName", () => {
  const principal = "11111111-2222-3333-4444-555555555555";

  it("is a stable version-5 GUID of HSM, principal and role", () => {
    const name = assignmentName("https://contoso.managedhsm.azure.net", principal, HSM_ROLE_IDS.backup);
    expect(name).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(assignmentName("https://CONTOSO.managedhsm.azure.net/", principal.toUpperCase(), HSM_ROLE_IDS.backup)).toBe(
      name,
    );
  });

  it("differs when any input differs", () => {
    const names = new Set([
      assignmentName("https://contoso.managedhsm.azure.net", principal, HSM_ROLE_IDS.backup),
      assignmentName("https://contoso.managedhsm.azure.net", principal, HSM_ROLE_IDS.restore),
      assignmentName("https://fabrikam.managedhsm.azure.net", principal, HSM_ROLE_IDS.backup),
      assignmentName("https://contoso.managedhsm.azure.net", randomUUID(), HSM_ROLE_IDS.backup),
    ]);
    expect(names.size).toBe(4);
  });
});

describe("readHookSettings (azd environment)", () => {
  const principal = "11111111-2222-3333-4444-555555555555";

  it("reads the outputs of main.bicep", () => {
    expect(
      readHookSettings({
        MANAGED_HSM_URLS: " https://a.managedhsm.azure.net, https://b.managedhsm.azure.net ,",
        FUNCTION_IDENTITY_PRINCIPAL_ID: principal,
        RESTORE_ENABLED: "False",
        AZURE_TENANT_ID: "tenant",
      }),
    ).toEqual({
      hsmUrls: ["https://a.managedhsm.azure.net", "https://b.managedhsm.azure.net"],
      principalId: principal,
      restoreEnabled: false,
      operatorPrincipalIds: [],
      tenantId: "tenant",
    });
  });

  it("reads the operators' object ids from OPERATOR_PRINCIPAL_IDS, naming one that is not a GUID", () => {
    const operator = "aaaaaaaa-1111-2222-3333-444444444444";
    const base = { MANAGED_HSM_URLS: "https://a.managedhsm.azure.net", FUNCTION_IDENTITY_PRINCIPAL_ID: principal };
    expect(readHookSettings({ ...base, OPERATOR_PRINCIPAL_IDS: ` ${operator} ,` }).operatorPrincipalIds).toEqual([
      operator,
    ]);
    expect(readHookSettings({ ...base, OPERATOR_PRINCIPAL_IDS: "" }).operatorPrincipalIds).toEqual([]);
    expect(() => readHookSettings({ ...base, OPERATOR_PRINCIPAL_IDS: `${operator},alice@contoso.com` })).toThrow(
      /^OPERATOR_PRINCIPAL_IDS lists "alice@contoso\.com", which is not a GUID/,
    );
  });

  it("names the variable that is missing or malformed", () => {
    expect(() => readHookSettings({ FUNCTION_IDENTITY_PRINCIPAL_ID: principal })).toThrow(/^MANAGED_HSM_URLS is empty/);
    expect(() => readHookSettings({ MANAGED_HSM_URLS: "https://a.managedhsm.azure.net" })).toThrow(
      /^FUNCTION_IDENTITY_PRINCIPAL_ID "" is not a GUID/,
    );
    expect(() =>
      readHookSettings({
        MANAGED_HSM_URLS: "https://a.managedhsm.azure.net",
        FUNCTION_IDENTITY_PRINCIPAL_ID: principal,
        RESTORE_ENABLED: "yes",
      }),
    ).toThrow(/^RESTORE_ENABLED "yes" is not true or false/);
  });
});
