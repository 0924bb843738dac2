/**
 * No secret leaves the app. One run goes through every path that handles a SAS or a token — a full
 * backup, a full and a selective restore, backups and restores that fail (injected job failure,
 * throttled start, deleted container), restores the app refuses — and captures everything the app
 * puts out: every log line, every catalog entity (raw, every version seen), every HTTP answer
 * (status, headers, body), every thrown error and any console output. None of it may hold a SAS
 * (its exact text, its signature in any encoding, or SAS-shaped query fragments), the storage account
 * key or a bearer token.
 *
 * The secrets to look for are observed from outside the code under test: the real containerSas is
 * wrapped to record what it returned, and the real credential is wrapped to record the tokens it issued.
 */
import type { AccessToken, GetTokenOptions, TokenCredential } from "@azure/core-auth";
import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import { DefaultAzureCredential } from "@azure/identity";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { getBackup, listBackups } from "../../src/handlers/backups.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { getRestore, postRestore } from "../../src/handlers/restores.js";
import type { AppDeps } from "../../src/lib/deps.js";
import type { ContainerSas } from "../../src/lib/storage.js";
import {
  bodyOf,
  catalogEntities,
  get,
  jobStartRequests,
  onTime,
  postJson,
  request,
  startTestApp,
  type TestApp,
} from "../support/app.js";

interface Captured {
  readonly where: string;
  readonly text: string;
}

/** One thing that must never appear, and the forms it could appear in. */
interface Secret {
  readonly what: string;
  readonly forms: readonly string[];
}

/** SAS-shaped text even when the token itself is unknown or partly redacted. */
const SAS_SHAPES: readonly [string, RegExp][] = [
  ["a sig= parameter", /\bsig=/i],
  ["se= and sp= together (a SAS query)", /(?=[\s\S]*(?:^|[^A-Za-z0-9_])se=)(?=[\s\S]*(?:^|[^A-Za-z0-9_])sp=)/i],
  ["an sv=<date> parameter", /(?:^|[^A-Za-z0-9_])sv=\d{4}-\d{2}-\d{2}/i],
  ["a bearer token", /\bBearer\s+[A-Za-z0-9\-._~+/]{8,}/i],
  ["a JWT", /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}/],
  ["an AccountKey", /AccountKey=/i],
];

/** Every form a SAS could take in output: as issued, decoded, its signature raw, percent-encoded or base64url. */
function sasForms(token: string): string[] {
  const sig = new URLSearchParams(token).get("sig") ?? "";
  return [
    token,
    decodeURIComponent(token),
    sig,
    encodeURIComponent(sig),
    sig.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""),
    sig.slice(0, 24),
  ].filter((form) => form.length >= 16);
}

function tokenForms(token: string): string[] {
  // The JWT payload (and signature, when there is one) are each enough to matter.
  return [token, ...token.split(".").filter((part) => part.length >= 16)];
}

/** Every place a secret or a SAS shape occurs in what was captured: empty when nothing leaked. */
function findLeaks(captured: readonly Captured[], secrets: readonly Secret[]): string[] {
  const leaks: string[] = [];
  for (const { where, text } of captured) {
    for (const secret of secrets) {
      if (secret.forms.some((form) => text.includes(form))) leaks.push(`${where}: contains ${secret.what}`);
    }
    for (const [what, shape] of SAS_SHAPES) {
      if (shape.test(text)) leaks.push(`${where}: contains ${what}: ${text.slice(0, 300)}`);
    }
  }
  return leaks;
}

function accountKeyOf(connectionString: string): string {
  const key = /(?:^|;)AccountKey=([^;]+)/i.exec(connectionString)?.[1];
  if (!key) throw new Error("the Azurite connection string has no AccountKey");
  return key;
}

describe("no SAS, account key or bearer token in anything the app puts out", () => {
  let app: TestApp;
  let deps: AppDeps;
  const issuedSas: { purpose: string; sas: ContainerSas }[] = [];
  const issuedTokens = new Set<string>();
  const responses: Captured[] = [];
  const thrown: Captured[] = [];
  const entityVersions: Captured[] = [];
  const consoleLines: Captured[] = [];
  const outcomes: Record<string, unknown> = {};

  /** Observes the real credential: what it hands the HSM client is what must not leak. */
  function recordingCredential(real: TokenCredential): TokenCredential {
    return {
      async getToken(scopes: string | string[], options?: GetTokenOptions): Promise<AccessToken | null> {
        const token = await real.getToken(scopes, options);
        if (token) issuedTokens.add(token.token);
        return token;
      },
    };
  }

  async function call(
    name: string,
    handler: (r: HttpRequest, c: InvocationContext, d?: AppDeps) => Promise<HttpResponseInit>,
    req: HttpRequest,
  ): Promise<HttpResponseInit> {
    const response = await handler(req, app.context(name), deps);
    responses.push({
      where: `${name} ${req.method} ${new URL(req.url).pathname} -> ${response.status}`,
      text: JSON.stringify(response),
    });
    return response;
  }

  async function snapshotCatalog(step: string): Promise<void> {
    for (const entity of await catalogEntities(app)) {
      entityVersions.push({
        where: `catalog after ${step}: ${entity.partitionKey}/${entity.rowKey}`,
        text: JSON.stringify(entity),
      });
    }
  }

  async function runNightly(step: string): Promise<Error | undefined> {
    app.clock.advance(24 * 3_600_000); // each run a night of its own: one backup per schedule slot
    try {
      await nightlyBackup(onTime, app.context("nightlyBackup"), deps);
      return undefined;
    } catch (error) {
      const e = error as Error;
      thrown.push({
        where: `nightlyBackup (${step}) threw`,
        text: `${e.name}: ${e.message}\n${e.stack ?? ""}\n${JSON.stringify(e)}`,
      });
      return e;
    } finally {
      await snapshotCatalog(step);
    }
  }

  async function restore(step: string, body: unknown): Promise<any> {
    const started = await call("postRestore", postRestore, postJson("/api/restores", body));
    let final = bodyOf(started);
    if (started.status === 202) {
      for (let i = 0; i < 200 && (final.status === "Running" || final.status === "Starting"); i++) {
        await new Promise((r) => setTimeout(r, 25));
        final = bodyOf(await call("getRestore", getRestore, get(final.statusUrl ?? `/api/restores/${final.id}`)));
      }
    }
    await snapshotCatalog(step);
    return { http: started.status, ...final };
  }

  beforeAll(async () => {
    app = await startTestApp({ deps: { credential: recordingCredential(new DefaultAzureCredential()) } });
    const real = app.deps;
    deps = {
      ...real,
      storage: {
        ...real.storage,
        containerSas: async (container, purpose, ttlMinutes) => {
          const sas = await real.storage.containerSas(container, purpose, ttlMinutes);
          issuedSas.push({ purpose, sas });
          return sas;
        },
      },
    };
    const hsm = app.emulators[0]!;
    for (const name of ["payments-rsa", "tokens-ec", "wrapping-oct"]) hsm.keys.create(name);

    const originalConsole = {
      log: console.log,
      info: console.info,
      warn: console.warn,
      error: console.error,
      debug: console.debug,
    };
    for (const level of Object.keys(originalConsole) as (keyof typeof originalConsole)[]) {
      console[level] = (...args: unknown[]) => {
        consoleLines.push({
          where: `console.${level}`,
          text: args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" "),
        });
        originalConsole[level](...args);
      };
    }
    try {
      outcomes.backupThrew = await runNightly("a successful backup");
      const backups = bodyOf(await call("listBackups", listBackups, get("/api/backups")));
      const good = backups.items[0];
      outcomes.backup = good;
      await call("getBackup", getBackup, get(`/api/backups/${good.id}`));

      app.clock.advance(31 * 60_000);
      hsm.keys.create("created-after-backup");
      outcomes.fullRestore = await restore("a full restore", { backupId: good.id, confirm: good.hsmName });

      hsm.keys.delete("tokens-ec");
      hsm.keys.purge("tokens-ec");
      outcomes.selectiveRestore = await restore("a selective restore", { backupId: good.id, keyName: "tokens-ec" });

      hsm.faults.failNextJob("backup", {
        code: "InternalError",
        message: "Injected failure while the job held its SAS",
      });
      outcomes.faultedBackupThrew = await runNightly("a backup the HSM failed");
      const failed = bodyOf(await call("listBackups", listBackups, get("/api/backups?status=Failed"))).items[0];
      outcomes.faultedBackup = failed;

      outcomes.refusedFailedBackup = await restore("a restore of a failed backup", {
        backupId: failed.id,
        keyName: "tokens-ec",
      });
      outcomes.refusedMalformed = bodyOf(
        await call("postRestore", postRestore, request("POST", "/api/restores", '{"backupId":')),
      );
      outcomes.refusedUnknownField = bodyOf(
        await call("postRestore", postRestore, postJson("/api/restores", { backupId: good.id, keyname: "x" })),
      );

      // The start is throttled: the HSM refuses the restore after the SAS was issued, and an HTTP
      // handler answers at once instead of sleeping on it.
      hsm.faults.throttleNext(1, 429, 0);
      outcomes.throttledRestore = await restore("a restore the HSM refused", {
        backupId: good.id,
        keyName: "payments-rsa",
      });

      hsm.faults.failNextJob("restore", { code: "InternalError", message: "Injected restore failure" });
      outcomes.faultedRestore = await restore("a restore the HSM failed", {
        backupId: good.id,
        keyName: "wrapping-oct",
      });

      // Once the container is gone the backup's pre-flight says so; a restore's failure text comes from Azurite via the HSM.
      await app.deps.storage.blobService.getContainerClient(app.container).delete();
      outcomes.storageFailedBackupThrew = await runNightly("a backup whose container was deleted");
      outcomes.storageFailedRestore = await restore("a restore whose container was deleted", {
        backupId: good.id,
        keyName: "payments-rsa",
      });

      await call("listBackups", listBackups, get("/api/backups?top=100"));
      for (const entity of await catalogEntities(app)) {
        if (entity.partitionKey === "restore")
          await call("getRestore", getRestore, get(`/api/restores/${String(entity.rowKey)}`));
      }
    } finally {
      Object.assign(console, originalConsole);
    }
  });
  afterAll(() => app?.stop());

  const secrets = (): Secret[] => [
    ...issuedSas.map(({ purpose, sas }, i) => ({
      what: `the ${purpose} SAS #${i + 1} (or its signature)`,
      forms: sasForms(sas.token),
    })),
    ...[...issuedTokens].map((token, i) => ({ what: `bearer token #${i + 1}`, forms: tokenForms(token) })),
    { what: "the storage account key", forms: [accountKeyOf(inject("azuriteConnectionString"))] },
    { what: "the storage connection string", forms: [inject("azuriteConnectionString")] },
  ];

  it("went through every path: backups and restores that succeeded, failed and were refused", () => {
    expect(outcomes.backupThrew).toBeUndefined();
    expect(outcomes.backup).toMatchObject({ status: "Succeeded" });
    expect(outcomes.fullRestore).toMatchObject({ http: 202, status: "Succeeded" });
    expect(outcomes.selectiveRestore).toMatchObject({ http: 202, status: "Succeeded", keyName: "tokens-ec" });
    expect(outcomes.faultedBackupThrew).toBeInstanceOf(Error);
    expect(outcomes.faultedBackup).toMatchObject({
      status: "Failed",
      errorMessage: expect.stringContaining("Injected failure"),
    });
    expect(outcomes.refusedFailedBackup).toMatchObject({ http: 409, title: "Backup cannot be restored" });
    expect(outcomes.refusedMalformed).toMatchObject({ status: 400 });
    expect(outcomes.refusedUnknownField).toMatchObject({ status: 400 });
    expect(outcomes.throttledRestore).toMatchObject({ http: 503, title: "Managed HSM is throttling" });
    expect(outcomes.faultedRestore).toMatchObject({
      http: 202,
      status: "Failed",
      errorMessage: expect.stringContaining("Injected restore failure"),
    });
    expect(outcomes.storageFailedBackupThrew).toBeInstanceOf(Error);
    expect((outcomes.storageFailedBackupThrew as Error).message).toMatch(/ContainerNotFound|container/i);
    expect(outcomes.storageFailedRestore).toMatchObject({ http: 202, status: "Failed" });
  });

  it("observed the secrets it looks for: one SAS per job start, and the HSM client's bearer tokens", () => {
    // 2 backups that reached the HSM, each with its pre-backup check (its own SAS), and a third the
    // pre-flight stopped before any SAS (container gone); the pre-restore check that verified the one
    // that succeeded; full, selective, throttled, failed and storage-failed restores.
    expect(issuedSas.map((s) => s.purpose).sort()).toEqual([
      "backup",
      "backup",
      "backup",
      "backup",
      "restore",
      "restore",
      "restore",
      "restore",
      "restore",
      "restore",
    ]);
    for (const { sas } of issuedSas) expect(new URLSearchParams(sas.token).get("sig")).toMatch(/.{40,}/);
    expect(issuedTokens.size).toBeGreaterThan(0);
    // Each SAS really went to the HSM (the emulator records the request with the token blanked).
    const starts = jobStartRequests(app.emulators[0]!).filter((r) => r.status !== 401);
    expect(starts.length).toBeGreaterThanOrEqual(issuedSas.length);
  });

  it("the leak detector flags each secret and each SAS shape (so a clean result means something)", () => {
    const all = secrets();
    for (const secret of all) {
      for (const form of secret.forms)
        expect(findLeaks([{ where: "planted", text: `x ${form} y` }], all)).not.toEqual([]);
    }
    const sas = issuedSas[0]!.sas.token;
    const redactedSas = sas.replace(/sig=[^&]*/, "sig=<redacted>");
    for (const text of [
      redactedSas,
      `?${redactedSas.replace(/&?sig=[^&]*/, "")}`,
      "Authorization: Bearer abcdefghijkl",
      `AccountKey=<redacted>`,
    ]) {
      expect(findLeaks([{ where: "planted", text }], [])).not.toEqual([]);
    }
    // Ordinary output does not trip it.
    expect(
      findLeaks(
        [{ where: "plain", text: "response=ok; close=1; Backup of HSM x succeeded: http://127.0.0.1:1/a/mhsm-x-2026" }],
        all,
      ),
    ).toEqual([]);
  });

  it("logs no secret", () => {
    expect(app.logs.length).toBeGreaterThan(10);
    expect(app.logs.some((line) => line.includes(String((outcomes.backup as any).folderUri)))).toBe(true);
    expect(
      findLeaks(
        app.logs.map((text, i) => ({ where: `log line ${i + 1}`, text })),
        secrets(),
      ),
    ).toEqual([]);
  });

  it("stores no secret in any catalog entity, in any version of it", () => {
    expect(entityVersions.length).toBeGreaterThan(10);
    expect(entityVersions.some((e) => e.text.includes("errorMessage"))).toBe(true);
    expect(findLeaks(entityVersions, secrets())).toEqual([]);
  });

  it("answers no secret in any HTTP status, header or body", () => {
    expect(responses.length).toBeGreaterThan(10);
    expect(findLeaks(responses, secrets())).toEqual([]);
  });

  it("throws no secret", () => {
    expect(thrown).toHaveLength(2);
    expect(findLeaks(thrown, secrets())).toEqual([]);
  });

  it("writes no secret to the console", () => {
    expect(findLeaks(consoleLines, secrets())).toEqual([]);
  });
});
