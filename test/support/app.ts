/**
 * Builds the app against the real local services: Azurite from the global setup, a fresh HSM
 * emulator per test, and the app's own createDeps with its production credential (which reaches
 * the local managed-identity endpoint). Each test gets its own container and table.
 *
 * By default the app reaches its HSMs the way production does: https://testhsmN.managedhsm.azure.net,
 * TLS checked against a throwaway test CA, the Key Vault challenge-resource check on. Only the TCP
 * connection is redirected to the emulator's loopback port, by a transport passed in through the
 * client options (tools/loopback-transport.ts).
 */
import { randomBytes } from "node:crypto";
import { HttpRequest, InvocationContext, type HttpResponseInit, type Timer } from "@azure/functions";
import { DefaultAzureCredential } from "@azure/identity";
import { KeyClient } from "@azure/keyvault-keys";
import { expect, inject } from "vitest";
import { getBackup } from "../../src/handlers/backups.js";
import { getRestore } from "../../src/handlers/restores.js";
import type { Handler } from "../../src/lib/handler.js";
import { parseConfig, type Env } from "../../src/lib/config.js";
import { createDeps, type AppDeps, type DepsOptions } from "../../src/lib/deps.js";
import {
  startHsmEmulator,
  type HsmEmulator,
  type HsmEmulatorOptions,
  type RecordedRequest,
} from "../../tools/hsm-emulator/index.js";
import { HSM_DOMAIN, hsmRealNames, type LoopbackTransport } from "../../tools/loopback-transport.js";

export { HSM_DOMAIN };
import { createTestCa, type TestCa } from "../../tools/tls.js";

/**
 * A daily backup slot twelve hours from now. Reconcile starts no HSM check of its own within 15
 * minutes of a backup slot; with the default 02:00 a test would behave differently when run then.
 */
export function scheduleFarFromNow(): string {
  return `0 0 ${(new Date().getUTCHours() + 12) % 24} * * *`;
}

export function uniqueName(prefix: string): string {
  return `${prefix}${randomBytes(5).toString("hex")}`;
}

/** The official KeyClient on the app's HSM number `index`, over the app's own transport (https, verification on). */
export function keyClient(app: TestApp, index = 0): KeyClient {
  const httpClient = app.depsOptions.hsmClientOptions?.httpClient;
  if (!httpClient)
    throw new Error("keyClient needs the HTTPS test app (hsmAccess 'https'): KeyClient sends tokens over https only");
  return new KeyClient(app.deps.config.hsms[index]!.url, new DefaultAzureCredential(), { httpClient });
}

/** A controllable clock: tests move it instead of waiting (the 30-minute restore rule, stale records). */
export class Clock {
  constructor(private offsetMs = 0) {}
  now = (): Date => new Date(Date.now() + this.offsetMs);
  advance(ms: number): void {
    this.offsetMs += ms;
  }
}

/** A domain outside it that the certificate covers too: a host whose challenge must not be believed. */
export const OTHER_DOMAIN = "elsewhere.test";

let ca: TestCa | undefined;

/** One test CA per test worker: made with openssl on first use, never written anywhere lasting. */
export function testCa(): TestCa {
  // The real HSM domain, and a domain outside it (OTHER_DOMAIN).
  ca ??= createTestCa([`*.${HSM_DOMAIN}`, `*.${OTHER_DOMAIN}`]);
  return ca;
}

/** An emulator serving HTTPS with the test CA's `*.managedhsm.azure.net` certificate. */
export function startHttpsEmulator(options: HsmEmulatorOptions = {}): Promise<HsmEmulator> {
  const { cert, key } = testCa();
  return startHsmEmulator({ tls: { cert, key }, ...options });
}

/** `https://<name>.managedhsm.azure.net` for each HTTPS emulator, and the transport that reaches them there. */
export function realNames(
  emulators: readonly HsmEmulator[],
  extraRoutes: Record<string, number> = {},
): { urls: string[]; transport: LoopbackTransport } {
  return hsmRealNames(emulators, testCa().ca, extraRoutes);
}

export interface TestApp {
  readonly deps: AppDeps;
  /** What createDeps was given, so a test can build the same dependencies again (e.g. for the CLI). */
  readonly depsOptions: DepsOptions;
  readonly emulators: HsmEmulator[];
  readonly clock: Clock;
  readonly env: Env;
  readonly container: string;
  readonly table: string;
  /** Every line any invocation context of this app logged, in order. */
  readonly logs: string[];
  context(functionName?: string): InvocationContext;
  stop(): Promise<void>;
}

export interface TestAppOptions {
  readonly hsmCount?: number;
  readonly emulator?: HsmEmulatorOptions;
  readonly env?: Env;
  readonly deps?: DepsOptions;
  /**
   * "https" (default): https://testhsmN.managedhsm.azure.net, as in production. "loopback-http":
   * http://127.0.0.1:<port>, the `npm run local` mode, for what cannot take a transport (a child
   * process); its emulators then carry the app's loopback names (`loopback-<port>`).
   */
  readonly hsmAccess?: "https" | "loopback-http";
}

export async function startTestApp(options: TestAppOptions = {}): Promise<TestApp> {
  const https = (options.hsmAccess ?? "https") === "https";
  const emulators: HsmEmulator[] = [];
  for (let i = 0; i < (options.hsmCount ?? 1); i++) {
    const emulatorOptions: HsmEmulatorOptions = { retryAfterSeconds: 0, jobDurationMs: 100, ...options.emulator };
    emulators.push(
      https
        ? await startHttpsEmulator({ name: `testhsm${i}`, ...emulatorOptions })
        : await startHsmEmulator(emulatorOptions),
    );
  }
  const access = https ? realNames(emulators) : { urls: emulators.map((e) => e.url), transport: undefined };
  const container = uniqueName("bk");
  const table = uniqueName("cat");
  const env: Env = {
    MANAGED_HSM_URLS: access.urls.join(","),
    BackupStorage: inject("azuriteConnectionString"),
    BACKUP_CONTAINER: container,
    CATALOG_TABLE: table,
    BACKUP_SCHEDULE: scheduleFarFromNow(),
    ...options.env,
  };
  const clock = new Clock();
  const depsOptions: DepsOptions = {
    now: clock.now,
    ...options.deps,
    hsmClientOptions: {
      defaultPollIntervalMs: 25,
      ...(access.transport ? { httpClient: access.transport } : {}),
      ...options.deps?.hsmClientOptions,
    },
  };
  const deps = createDeps(parseConfig(env), depsOptions);
  const logs: string[] = [];
  return {
    deps,
    depsOptions,
    emulators,
    clock,
    env,
    container,
    table,
    logs,
    context: (functionName = "test") =>
      new InvocationContext({
        invocationId: uniqueName("inv-"),
        functionName,
        logHandler: (level, ...args) => logs.push(`${level}: ${args.map(String).join(" ")}`),
      }),
    stop: async () => {
      access.transport?.close();
      await Promise.all(emulators.map((e) => e.stop()));
    },
  };
}

export function get(url: string): HttpRequest {
  return request("GET", url);
}

export function request(method: string, url: string, body?: string, headers: Record<string, string> = {}): HttpRequest {
  const parsed = new URL(url, "http://localhost:7071");
  const id = /\/api\/(?:backups|restores)\/(.+)$/.exec(parsed.pathname)?.[1];
  return new HttpRequest({
    method,
    url: parsed.href,
    headers: body !== undefined ? { "content-type": "application/json", ...headers } : headers,
    ...(body !== undefined ? { body: { string: body } } : {}),
    params: id !== undefined ? { id: decodeURIComponent(id) } : {},
  });
}

export function postJson(url: string, body: unknown): HttpRequest {
  return request("POST", url, JSON.stringify(body));
}

/** The JSON body of a handler's answer, whichever of jsonBody/body it used. */
export function bodyOf(response: HttpResponseInit): any {
  if (response.jsonBody !== undefined) return response.jsonBody;
  return typeof response.body === "string" ? JSON.parse(response.body) : undefined;
}

export function headerOf(response: HttpResponseInit, name: string): string | undefined {
  const headers = response.headers as Record<string, string> | undefined;
  const key = Object.keys(headers ?? {}).find((k) => k.toLowerCase() === name.toLowerCase());
  return key !== undefined ? headers![key] : undefined;
}

/** A timer invocation on schedule. */
export const onTime: Timer = {
  isPastDue: false,
  schedule: { adjustForDST: false },
  scheduleStatus: { last: "", next: "", lastUpdated: "" },
};

/** Polls GET /api/restores/{id} until the restore leaves Starting/Running. */
export function waitForRestore(app: TestApp, statusUrl: string): Promise<any> {
  return waitForRecord(app, statusUrl, getRestore, "getRestore");
}

/** Polls GET /api/backups/{id} (which refreshes a running backup from the HSM) until it leaves Starting/Running. */
export function waitForBackup(app: TestApp, statusUrl: string): Promise<any> {
  return waitForRecord(app, statusUrl, getBackup, "getBackup");
}

async function waitForRecord(app: TestApp, statusUrl: string, read: Handler, name: string): Promise<any> {
  for (let i = 0; i < 200; i++) {
    const response = await read(get(statusUrl), app.context(name), app.deps);
    expect(response.status).toBe(200);
    const body = bodyOf(response);
    if (body.status !== "Running" && body.status !== "Starting") return body;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${name} at ${statusUrl} did not finish`);
}

/** Every raw entity of the app's catalog table, system properties (etag, timestamp) included, in key order. */
export async function catalogEntities(app: TestApp): Promise<Record<string, unknown>[]> {
  const entities: Record<string, unknown>[] = [];
  for await (const entity of app.deps.storage.table(app.table).listEntities<Record<string, unknown>>())
    entities.push({ ...entity });
  return entities;
}

/** Requests that would start a job on the HSM: backups, full restores and selective key restores (answered or not). */
export function jobStartRequests(emulator: HsmEmulator): RecordedRequest[] {
  return emulator.requests.filter(
    (r) =>
      (r.method === "POST" && /^\/+(pre)?backup\/*$/i.test(r.path)) ||
      (r.method === "PUT" && /^\/+(pre)?restore\/*$/i.test(r.path)) ||
      (r.method === "PUT" && /^\/+keys\/[^/]+\/restore\/*$/i.test(r.path)),
  );
}

/** The JSON fields of every outcome event line (e.g. MhsmBackupOutcome) in a test app's logs, in order. */
export function events(logs: readonly string[], name: string): any[] {
  return logs
    .filter((l) => l.includes(` ${name} `))
    .map((l) => JSON.parse(l.slice(l.indexOf(`${name} `) + name.length + 1)));
}
