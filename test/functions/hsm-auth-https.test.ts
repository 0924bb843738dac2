/**
 * The production authentication path, over HTTPS to real-looking host names: the app's own client
 * with keyvault-common's challenge policy (resource check on), its DefaultAzureCredential reaching the
 * local managed-identity endpoint, and the HSM emulator behind a test CA. What must never happen is
 * checked where it would show: the requests the stand-in received, the tokens the credential issued.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { TokenCredential } from "@azure/core-auth";
import type { HttpClient } from "@azure/core-rest-pipeline";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { parseConfig, type Env } from "../../src/lib/config.js";
import { createDeps, type AppDeps } from "../../src/lib/deps.js";
import type { HsmEmulator } from "../../tools/hsm-emulator/index.js";
import { createLoopbackTransport } from "../../tools/loopback-transport.js";
import {
  HSM_DOMAIN,
  OTHER_DOMAIN,
  onTime,
  startHttpsEmulator,
  startTestApp,
  testCa,
  uniqueName,
  type TestApp,
} from "../support/app.js";
import { HSM_SCOPE, scopeRecordingCredential } from "../support/tokens.js";

/** The test app's dependencies again, with another HSM transport (and credential or settings) in. */
function redeploy(
  testApp: TestApp,
  httpClient: HttpClient,
  extra: { env?: Env; credential?: TokenCredential } = {},
): AppDeps {
  return createDeps(parseConfig({ ...testApp.env, ...extra.env }), {
    ...testApp.depsOptions,
    ...(extra.credential ? { credential: extra.credential } : {}),
    hsmClientOptions: { ...testApp.depsOptions.hsmClientOptions, httpClient },
  });
}

const authorized = (hsm: HsmEmulator) => hsm.requests.filter((r) => r.headers.authorization !== undefined);

describe("the app's HSM authentication over HTTPS", () => {
  const stops: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const stop of stops.splice(0).reverse()) await stop();
  });

  async function app(options: Parameters<typeof startTestApp>[0] = {}): Promise<TestApp> {
    const started = await startTestApp(options);
    stops.push(() => started.stop());
    return started;
  }

  it("sends a token only after the HSM's challenge, and only a token issued for the HSM, never with the insecure flag", async () => {
    const { credential, issued } = scopeRecordingCredential();
    const testApp = await app({ deps: { credential } });
    // Between the app's client and the transport: what the client asked of each request.
    const insecureFlags: (boolean | undefined)[] = [];
    const transport = testApp.depsOptions.hsmClientOptions!.httpClient!;
    const watched: HttpClient = {
      sendRequest: (request) => (insecureFlags.push(request.allowInsecureConnection), transport.sendRequest(request)),
    };
    const deps = redeploy(testApp, watched);
    await nightlyBackup(onTime, testApp.context("nightlyBackup"), deps);
    const hsm = testApp.emulators[0]!;
    expect(insecureFlags.length).toBe(hsm.requests.length);
    expect(insecureFlags.every((flag) => !flag)).toBe(true);

    // keyvault-common's probe: the first request carries neither token nor body and gets the challenge.
    const [probe, resent, ...rest] = hsm.requests;
    // The first call of a night is the pre-backup check.
    expect(probe).toMatchObject({ method: "POST", path: "/prebackup", status: 401, body: null });
    expect(probe!.headers.authorization).toBeUndefined();
    expect(resent).toMatchObject({
      method: "POST",
      path: "/prebackup",
      status: 202,
      headers: { authorization: "<redacted>" },
    });
    expect(rest.length).toBeGreaterThan(0);
    // Then status polls, and the pre-restore check that verifies the new backup: all with the token.
    for (const call of rest)
      expect(call).toMatchObject({ status: expect.any(Number), headers: { authorization: "<redacted>" } });
    expect(rest.map((r) => `${r.method} ${r.path.replace(/[0-9a-f]{32}/, "<job>")}`)).toEqual(
      expect.arrayContaining([
        "GET /backup/<job>/pending",
        "POST /backup",
        "PUT /prerestore",
        "GET /restore/<job>/pending",
      ]),
    );
    expect(rest.every((r) => r.status === 200 || r.status === 202)).toBe(true);
    // Every request went to the HSM's real name over https, through the test CA.
    expect(hsm.requests.every((r) => r.headers.host === `testhsm0.${HSM_DOMAIN}`)).toBe(true);

    // Storage here is shared-key (Azurite connection string): the only token ever asked for is the HSM's.
    expect([...issued.values()]).toEqual([HSM_SCOPE]);
  });

  it("refuses a challenge whose resource does not match the host: no token is asked for, no Authorization header leaves", async () => {
    // An HSM URL outside managedhsm.azure.net (a typo, a hijacked name) whose server claims to be an HSM.
    const impostor = await startHttpsEmulator({ name: "contoso", retryAfterSeconds: 0, jobDurationMs: 50 });
    stops.push(() => impostor.stop());
    const transport = createLoopbackTransport({
      routes: { [`contoso.${OTHER_DOMAIN}`]: impostor.port },
      ca: testCa().ca,
    });
    stops.push(() => transport.close());
    const { credential, issued } = scopeRecordingCredential();
    const testApp = await app();
    const deps = redeploy(testApp, transport, {
      credential,
      env: { MANAGED_HSM_URLS: `https://contoso.${OTHER_DOMAIN}`, CATALOG_TABLE: uniqueName("cat") },
    });

    await expect(nightlyBackup(onTime, testApp.context("nightlyBackup"), deps)).rejects.toThrow(/1 of 1 HSM/);
    expect(testApp.logs.join("\n")).toMatch(
      /challenge resource 'managedhsm\.azure\.net' does not match the requested domain/,
    );
    expect(impostor.requests.length).toBeGreaterThan(0);
    expect(authorized(impostor)).toEqual([]);
    expect(impostor.jobs()).toEqual([]);
    expect(issued.size).toBe(0);
  });

  it("never follows a status URL to another host: polls stay on the HSM it chose, the other host hears nothing", async () => {
    const other = await startHttpsEmulator({ name: "otherhsm" });
    stops.push(() => other.stop());
    const testApp = await app();
    const hsm = testApp.emulators[0]!;
    // The other host is reachable through the same transport, so following it would show as requests there.
    const transport = createLoopbackTransport({
      routes: { [`testhsm0.${HSM_DOMAIN}`]: hsm.port, [`otherhsm.${HSM_DOMAIN}`]: other.port },
      ca: testCa().ca,
    });
    stops.push(() => transport.close());
    const deps = redeploy(testApp, transport);
    hsm.faults.foreignAsyncOperationNext(`https://otherhsm.${HSM_DOMAIN}`);

    await nightlyBackup(onTime, testApp.context("nightlyBackup"), deps);
    const started = hsm.requests.find((r) => r.method === "POST" && r.status === 202);
    expect(started).toBeDefined();
    const [pre, job, check] = hsm.jobs();
    expect(pre).toMatchObject({ kind: "preBackup", status: "Succeeded" });
    expect(job).toMatchObject({ kind: "backup", status: "Succeeded" });
    expect(check).toMatchObject({ kind: "preRestore", status: "Succeeded" });
    expect(other.requests).toEqual([]);
    expect(transport.sent.filter((line) => line.includes("otherhsm"))).toEqual([]);
    const polls = hsm.requests.filter((r) => r.method === "GET");
    expect(polls.length).toBeGreaterThan(0);
    for (const poll of polls)
      expect([
        `/backup/${pre!.jobId}/pending`,
        `/backup/${job!.jobId}/pending`,
        `/restore/${check!.jobId}/pending`,
      ]).toContain(poll.path);
    expect((await deps.catalog.list("backup", { top: 1 })).items[0]).toMatchObject({ status: "Succeeded" });
  });
});
