/**
 * The postdeploy hook against the real handlers served over HTTP on loopback (with the function key
 * check the Functions host does), Azurite and the HSM emulator; and against a stand-in for Azure
 * Resource Manager for the key.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { AccessToken, TokenCredential } from "@azure/core-auth";
import { HttpRequest, type HttpResponseInit } from "@azure/functions";
import { afterEach, describe, expect, it } from "vitest";
import { getBackup, listBackups, postBackup } from "../../src/handlers/backups.js";
import type { Handler } from "../../src/lib/handler.js";
import {
  fetchFunctionKey,
  readFirstBackupSettings,
  takeFirstBackups,
  WEB_API_VERSION,
  type FirstBackupOptions,
} from "../../tools/first-backup.js";
import { bodyOf, get, jobStartRequests, startTestApp, type TestApp } from "../support/app.js";

const KEY = "k3y-Zm9vYmFyYmF6cXV4LXNlY3JldC1mdW5jdGlvbi1rZXk==";

const servers: Server[] = [];
const apps: TestApp[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
  await Promise.all(apps.splice(0).map((a) => a.stop()));
});

async function listen(handle: (req: IncomingMessage, body: string, res: ServerResponse) => Promise<void>) {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      handle(req, Buffer.concat(chunks).toString("utf8"), res).catch((error: unknown) => {
        res.writeHead(500).end(String(error));
      });
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** The app's backup routes as the Functions host serves them: 401 without the function key. */
async function serveApp(app: TestApp, options: { notFoundFirst?: number } = {}): Promise<string> {
  let notFound = options.notFoundFirst ?? 0;
  return listen(async (req, body, res) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (notFound-- > 0) return void res.writeHead(404).end();
    if (req.headers["x-functions-key"] !== KEY && url.searchParams.get("code") !== KEY)
      return void res.writeHead(401).end();
    const id = /^\/api\/backups\/([^/]+)$/.exec(url.pathname)?.[1];
    const handler: Handler | undefined =
      url.pathname === "/api/backups" ? (req.method === "POST" ? postBackup : listBackups) : id ? getBackup : undefined;
    if (!handler) return void res.writeHead(404).end();
    const request = new HttpRequest({
      method: req.method ?? "GET",
      url: `http://localhost${req.url ?? "/"}`,
      headers: req.headers as Record<string, string>,
      ...(body ? { body: { string: body } } : {}),
      params: id ? { id } : {},
    });
    const response: HttpResponseInit = await handler(request, app.context("http"), app.deps);
    const text = response.jsonBody !== undefined ? JSON.stringify(response.jsonBody) : String(response.body ?? "");
    res.writeHead(response.status ?? 200, response.headers as Record<string, string>).end(text);
  });
}

async function hook(app: TestApp, appUrl: string, overrides: Partial<FirstBackupOptions> = {}) {
  const lines: string[] = [];
  const results = await takeFirstBackups({
    appUrl,
    hsmNames: app.deps.config.hsms.map((h) => h.name),
    functionKey: async () => KEY,
    log: (line) => lines.push(line),
    pollIntervalMs: 20,
    reachDeadlineMs: 2_000,
    outcomeDeadlineMs: 10_000,
    ...overrides,
  });
  return { results, lines };
}

async function testApp(hsmCount = 2): Promise<TestApp> {
  const app = await startTestApp({ hsmCount });
  apps.push(app);
  return app;
}

describe("takeFirstBackups (the postdeploy hook's work)", () => {
  it("backs up every HSM that has no backup yet, waits for the outcomes, and never prints the key", async () => {
    const app = await testApp();
    const url = await serveApp(app, { notFoundFirst: 2 }); // the host is still syncing its routes
    const { results, lines } = await hook(app, url);
    expect(results.map((r) => `${r.hsm} ${r.outcome}`)).toEqual(["testhsm0 Succeeded", "testhsm1 Succeeded"]);
    expect(results[0]!.detail).toMatch(/backed up to .*mhsm-testhsm0-\d+ \(record /);
    expect(lines.filter((l) => l.includes("not ready yet"))).toHaveLength(2);
    expect(lines.join("\n")).not.toContain(KEY);
    const listed = await listBackups(get("/api/backups"), app.context("listBackups"), app.deps);
    const items: { trigger: string; requestedBy: string }[] = bodyOf(listed).items;
    expect(items.map((b) => `${b.trigger} ${b.requestedBy}`)).toEqual(["http function key", "http function key"]);
  });

  it("starts nothing for an HSM that already has a successful backup (a later azd deploy)", async () => {
    const app = await testApp();
    const url = await serveApp(app);
    await hook(app, url, { hsmNames: [app.deps.config.hsms[0]!.name] });
    const backupStarts = () =>
      app.emulators.map(
        (e) => jobStartRequests(e).filter((r) => /^\/+backup\/*$/i.test(r.path) && r.status === 202).length,
      );
    expect(backupStarts()).toEqual([1, 0]);
    const { results } = await hook(app, url);
    expect(results.map((r) => `${r.hsm} ${r.outcome}`)).toEqual(["testhsm0 existing", "testhsm1 Succeeded"]);
    expect(results[0]!.detail).toMatch(/already backed up \(record \d{13}-[0-9a-f]{8}, ended .*\); nothing to do/);
    expect(backupStarts()).toEqual([1, 1]);
  });

  it("reports a failed first backup with the app's reason and what to do, and still backs up the other HSM", async () => {
    const app = await testApp();
    app.emulators[0]!.faults.failNextJob("backup", { code: "Forbidden", message: "storage said no" });
    const { results } = await hook(app, await serveApp(app));
    expect(results[0]).toMatchObject({ hsm: "testhsm0", outcome: "Failed" });
    expect(results[0]!.detail).toMatch(
      /^Failed \(.*storage said no.*\)\. .*run this hook again \(azd hooks run postdeploy\)/,
    );
    expect(results[1]).toMatchObject({ hsm: "testhsm1", outcome: "Succeeded" });
  });

  it("reports a backup still running at the deadline with its status URL, not as a failure", async () => {
    const app = await testApp(1);
    app.emulators[0]!.faults.setJobDurationMs(60_000, "backup"); // the pre-backup check stays quick
    const url = await serveApp(app);
    const { results } = await hook(app, url, { outcomeDeadlineMs: 300 });
    expect(results[0]).toMatchObject({ hsm: "testhsm0", outcome: "Running" });
    expect(results[0]!.detail).toContain(`${url}/api/backups/`);
  });

  it("says the app is not deployed when its routes never appear", async () => {
    const app = await testApp(1);
    const url = await serveApp(app, { notFoundFirst: 1_000 });
    await expect(hook(app, url, { reachDeadlineMs: 100 })).rejects.toThrow(
      /did not answer GET \/api\/backups \(404\): is the app deployed and running\? Run azd deploy/,
    );
    expect(jobStartRequests(app.emulators[0]!)).toEqual([]);
  });

  it("says the key was refused, without printing it", async () => {
    const app = await testApp(1);
    const url = await serveApp(app);
    const error = await hook(app, url, { functionKey: async () => "wrong-key" }).catch((e: Error) => e);
    expect(String(error)).toMatch(/refused the function key \(401\)/);
    expect(String(error)).not.toContain("wrong-key");
  });

  it("says why there is no key, when reading it fails", async () => {
    const app = await testApp(1);
    const failing = async () => {
      throw new Error("reading the function key of function app func-x was refused (403)");
    };
    await expect(hook(app, "http://127.0.0.1:9", { functionKey: failing })).rejects.toThrow(
      /no function key to call http:\/\/127\.0\.0\.1:9: reading the function key .* refused \(403\)/,
    );
  });
});

/** Hands out a fixed token for any scope and remembers the scopes asked for. */
class FixedTokenCredential implements TokenCredential {
  readonly scopes: string[] = [];
  async getToken(scopes: string | string[]): Promise<AccessToken> {
    this.scopes.push(...(Array.isArray(scopes) ? scopes : [scopes]));
    return { token: "arm-token", expiresOnTimestamp: Date.now() + 3_600_000 };
  }
}

describe("fetchFunctionKey (Azure Resource Manager host/default/listKeys)", () => {
  const settings = { subscriptionId: "sub-1", resourceGroup: "rg-1", appName: "func-1" };

  async function arm(status: number, body: unknown) {
    const seen: { method?: string; url?: string; authorization?: string }[] = [];
    const endpoint = await listen(async (req, _body, res) => {
      seen.push({ method: req.method, url: req.url, authorization: req.headers.authorization });
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
    });
    return { endpoint, seen };
  }

  it("reads functionKeys.default with the signed-in user's token", async () => {
    const { endpoint, seen } = await arm(200, { masterKey: "m", functionKeys: { default: KEY } });
    const credential = new FixedTokenCredential();
    expect(await fetchFunctionKey(settings, credential, { armEndpoint: endpoint })).toBe(KEY);
    expect(credential.scopes).toEqual([`${endpoint}/.default`]);
    expect(seen).toEqual([
      {
        method: "POST",
        url: `/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Web/sites/func-1/host/default/listKeys?api-version=${WEB_API_VERSION}`,
        authorization: "Bearer arm-token",
      },
    ]);
  });

  it.each([
    [
      403,
      { error: { code: "AuthorizationFailed" } },
      /refused \(403\): the signed-in account needs Contributor or Website Contributor/,
    ],
    [
      404,
      { error: { code: "ResourceNotFound" } },
      /function app func-1 \(resource group rg-1\) was not found: run azd provision first/,
    ],
    [200, { functionKeys: {} }, /has no default function key/],
    [500, {}, /answered 500/],
  ])("explains an answer %i", async (status, body, expected) => {
    const { endpoint } = await arm(status, body);
    await expect(fetchFunctionKey(settings, new FixedTokenCredential(), { armEndpoint: endpoint })).rejects.toThrow(
      expected,
    );
  });
});

describe("readFirstBackupSettings", () => {
  const env = {
    SERVICE_API_URI: "https://func-abc.azurewebsites.net/",
    MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net, https://fabrikam.managedhsm.azure.net",
    AZURE_SUBSCRIPTION_ID: "sub",
    AZURE_RESOURCE_GROUP: "rg",
    AZURE_FUNCTION_APP_NAME: "func-abc",
  };

  it("reads azd's environment", () => {
    expect(readFirstBackupSettings(env)).toEqual({
      appUrl: "https://func-abc.azurewebsites.net",
      hsmNames: ["contoso", "fabrikam"],
      subscriptionId: "sub",
      resourceGroup: "rg",
      appName: "func-abc",
    });
  });

  it.each([
    "SERVICE_API_URI",
    "MANAGED_HSM_URLS",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZURE_FUNCTION_APP_NAME",
  ])("names %s when it is missing", (name) => {
    expect(() => readFirstBackupSettings({ ...env, [name]: "" })).toThrow(new RegExp(`^${name} is not set: `));
  });
});
