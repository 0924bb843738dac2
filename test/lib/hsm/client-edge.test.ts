/**
 * The HSM client's wire behaviour at its edges, through its real pipeline and challenge policy
 * against scripted answers (test/support/scripted-hsm.ts): what each call sends, when a start is
 * re-sent and when never, how a 202 names its job, how status reads fail, Retry-After, and how far
 * a call that got no answer went.
 */
import type { TokenCredential } from "@azure/core-auth";
import { describe, expect, it } from "vitest";
import { startHsmEmulator } from "../../../tools/hsm-emulator/index.js";
import { createTestCa } from "../../../tools/tls.js";
import { ManagedHsmBackupClient, splitFolderUri } from "../../../src/lib/hsm/client.js";
import {
  HsmInvalidResponseError,
  HsmJobFailedError,
  HsmRequestError,
  HsmStatusUnavailableError,
} from "../../../src/lib/hsm/errors.js";
import {
  accepted,
  JOB,
  operation,
  ScriptedHsm,
  scriptedClient,
  status,
  tokenCredential,
  VAULT,
  type Step,
  withoutRequestIds,
} from "../../support/scripted-hsm.js";

const CONTAINER = "https://acct.blob.core.windows.net/mhsm-backups";
const FOLDER = `${CONTAINER}/mhsm-contoso-2026120100000000`;
const OTHER_JOB = "fedcba9876543210fedcba9876543210";

async function failure(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof Error)) throw new Error(`expected a failure, got ${String(error)}`);
  return error;
}

describe("constructor", () => {
  it("keeps the origin and the api-version", () => {
    const client = new ManagedHsmBackupClient("https://contoso.managedhsm.azure.net/", tokenCredential);
    expect(client.vaultUrl).toBe(VAULT);
    expect(client.serviceVersion).toBe("7.6");
    expect(new ManagedHsmBackupClient(VAULT, tokenCredential, { serviceVersion: "7.2" }).serviceVersion).toBe("7.2");
  });

  it.each([
    [
      "ftp://contoso.managedhsm.azure.net",
      `Managed HSM URL "ftp://contoso.managedhsm.azure.net" must use https; plain http is accepted only for loopback hosts`,
    ],
    [
      "http://10.0.0.1",
      `Managed HSM URL "http://10.0.0.1" must use https; plain http is accepted only for loopback hosts`,
    ],
    [
      "ftp://127.0.0.1:8443",
      `Managed HSM URL "ftp://127.0.0.1:8443" must use https; plain http is accepted only for loopback hosts`,
    ],
    [`${VAULT}/?x=1`, `Managed HSM URL "${VAULT}/?x=1" must be the HSM's base URL, without a path or query`],
    [`${VAULT}/keys`, `Managed HSM URL "${VAULT}/keys" must be the HSM's base URL, without a path or query`],
  ])("refuses %s", (url, message) => {
    expect(() => new ManagedHsmBackupClient(url, tokenCredential)).toThrow(message);
  });
});

describe("what each call sends", () => {
  it("a backup with a SAS: POST /backup with the container and the token without its leading ?", async () => {
    const { client, hsm } = scriptedClient([accepted()], { serviceVersion: "2025-07-01" });
    const poller = await client.beginBackup(CONTAINER, "?sv=1&sig=abc");
    expect(poller.jobId).toBe(JOB);
    const [sent] = hsm.sent;
    expect(`${sent!.method} ${sent!.url.pathname}${sent!.url.search}`).toBe("POST /backup?api-version=2025-07-01");
    expect(sent!.body).toStrictEqual({ storageResourceUri: CONTAINER, token: "sv=1&sig=abc" });
    expect(sent!.headers["content-type"]).toBe("application/json");
    expect(sent!.headers.accept).toBe("application/json");
    expect(sent!.headers["user-agent"]).toMatch(/^mhsm-backup-functions /);
  });

  it("a backup with the HSM's identity: useManagedIdentity and no token", async () => {
    const { client, hsm } = scriptedClient([accepted()]);
    await client.beginBackup(CONTAINER, { maxAttempts: 1 });
    expect(hsm.sent[0]!.body).toStrictEqual({ storageResourceUri: CONTAINER, useManagedIdentity: true });
  });

  it("refuses an empty SAS before sending anything", async () => {
    const { client, hsm } = scriptedClient([accepted()]);
    expect((await failure(client.beginBackup(CONTAINER, "  "))).message).toBe("The SAS token is empty");
    expect(hsm.sent).toEqual([]);
  });

  it("a full restore: PUT /restore with the container and the folder path", async () => {
    const { client, hsm } = scriptedClient([accepted(), status("Succeeded")]);
    const poller = await client.beginRestore(`${CONTAINER}/a/mhsm-x`, "sv=1&sig=abc");
    await poller.poll();
    expect(hsm.sent.map((r) => `${r.method} ${r.url.pathname}`)).toEqual([
      "PUT /restore",
      `GET /restore/${JOB}/pending`,
    ]);
    expect(hsm.sent[0]!.body).toStrictEqual({
      sasTokenParameters: { storageResourceUri: CONTAINER, token: "sv=1&sig=abc" },
      folderToRestore: "a/mhsm-x",
    });
    expect(hsm.sent[1]!.body).toBeNull();
    expect(hsm.sent[1]!.headers).not.toHaveProperty("content-type");
  });

  it('a key restore: PUT /keys/{name}/restore naming the folder "folder"', async () => {
    const { client, hsm } = scriptedClient([accepted(), status("Succeeded")]);
    await (await client.beginSelectiveKeyRestore("key-1", FOLDER, { maxAttempts: 1 })).poll();
    expect(hsm.sent.map((r) => `${r.method} ${r.url.pathname}`)).toEqual([
      "PUT /keys/key-1/restore",
      `GET /restore/${JOB}/pending`,
    ]);
    expect(hsm.sent[0]!.body).toStrictEqual({
      sasTokenParameters: { storageResourceUri: CONTAINER, useManagedIdentity: true },
      folder: "mhsm-contoso-2026120100000000",
    });
  });

  it("refuses a key name that could change the path", async () => {
    const { client, hsm } = scriptedClient([accepted()]);
    for (const name of ["a/b", "", "k".repeat(128), "key 1"]) {
      expect((await failure(client.beginSelectiveKeyRestore(name, FOLDER, "sig=x"))).message).toBe(
        `Key name "${name}" is not a Managed HSM key name (1-127 letters, digits and hyphens)`,
      );
    }
    await client.beginSelectiveKeyRestore("k".repeat(127), FOLDER, "sig=x");
    expect(hsm.sent).toHaveLength(1);
  });

  it("the pre-checks: POST /prebackup and PUT /prerestore, read back on the backup and restore status paths", async () => {
    const { client, hsm } = scriptedClient([accepted(), status("Succeeded"), accepted(), status("Succeeded")]);
    await (await client.beginPreBackup(CONTAINER, "sig=x")).poll();
    await (await client.beginPreRestore(FOLDER)).poll();
    expect(hsm.sent.map((r) => `${r.method} ${r.url.pathname}`)).toEqual([
      "POST /prebackup",
      `GET /backup/${JOB}/pending`,
      "PUT /prerestore",
      `GET /restore/${JOB}/pending`,
    ]);
    expect(hsm.sent[0]!.body).toStrictEqual({ storageResourceUri: CONTAINER, token: "sig=x" });
    expect(hsm.sent[2]!.body).toStrictEqual({
      sasTokenParameters: { storageResourceUri: CONTAINER, useManagedIdentity: true },
      folderToRestore: "mhsm-contoso-2026120100000000",
    });
    const resumed = scriptedClient([status("InProgress"), status("InProgress")]);
    await resumed.client.resumeOperation("preBackup", JOB).poll();
    await resumed.client.resumeOperation("selectiveKeyRestore", JOB).poll();
    expect(resumed.hsm.sent.map((r) => `${r.url.pathname}${r.url.search}`)).toEqual([
      `/backup/${JOB}/pending?api-version=7.6`,
      `/restore/${JOB}/pending?api-version=7.6`,
    ]);
  });
});

describe("start calls", () => {
  it("re-sends a start the HSM throttled, waiting as asked, and only then", async () => {
    const { client, hsm, clock } = scriptedClient(
      [
        { status: 429, headers: { "retry-after": "2" } },
        { status: 503 },
        { status: 503 },
        { status: 200, body: operation("InProgress") },
      ],
      { maxStartAttempts: 4, maxPollIntervalMs: 12_000 },
    );
    const poller = await client.beginBackup(CONTAINER, "sig=x");
    expect(poller.getOperationState()?.status).toBe("InProgress");
    expect(clock.waits).toEqual([2000, 10_000, 12_000]);
    expect(hsm.sent).toHaveLength(4);
  });

  it("gives up after the attempts allowed, with the service's answer", async () => {
    const { client, hsm } = scriptedClient(
      [
        { status: 429, body: { error: { code: "Throttled", message: "slow down" } } },
        { status: 429, body: { error: { code: "Throttled", message: "slow down" } } },
        accepted(),
      ],
      { maxStartAttempts: 2 },
    );
    const error = await failure(client.beginBackup(CONTAINER, "sig=x"));
    expect(error).toBeInstanceOf(HsmRequestError);
    expect(error).toMatchObject({ statusCode: 429, code: "Throttled", delivery: "answered" });
    expect(hsm.sent).toHaveLength(2);

    const once = scriptedClient([{ status: 503 }, accepted()]);
    await expect(once.client.beginBackup(CONTAINER, "sig=x", { maxAttempts: 1 })).rejects.toMatchObject({
      statusCode: 503,
    });
    expect(once.hsm.sent).toHaveLength(1);
  });

  it("never re-sends a start refused any other way", async () => {
    for (const refusal of [500, 409, 400, 302]) {
      const { client, hsm } = scriptedClient([{ status: refusal }, accepted()]);
      await expect(client.beginBackup(CONTAINER, "sig=x")).rejects.toMatchObject({
        name: "HsmRequestError",
        statusCode: refusal,
      });
      expect(hsm.sent).toHaveLength(1);
    }
  });

  it("follows the job an Azure-AsyncOperation header names when the body is unusable", async () => {
    const header = `${VAULT}/backup/${OTHER_JOB}/pending?api-version=7.2&x=1`;
    const { client, hsm } = scriptedClient([
      { status: 202, headers: { "azure-asyncoperation": header }, body: "accepted" },
      status("Succeeded", { jobId: OTHER_JOB }),
    ]);
    const poller = await client.beginBackup(CONTAINER, "sig=x");
    expect(poller.jobId).toBe(OTHER_JOB);
    expect(poller.getOperationState()).toStrictEqual({ kind: "backup", jobId: OTHER_JOB, status: "InProgress" });
    await poller.poll();
    expect(`${hsm.sent[1]!.url.pathname}${hsm.sent[1]!.url.search}`).toBe(
      `/backup/${OTHER_JOB}/pending?api-version=7.6`,
    );
  });

  it("polls the header's URL when body and header agree", async () => {
    const header = `${VAULT}/restore/${JOB}/pending`;
    const { client, hsm } = scriptedClient([accepted({}, { "azure-asyncoperation": header }), status("Succeeded")]);
    await (await client.beginPreBackup(CONTAINER, "sig=x")).poll();
    expect(hsm.sent[1]!.url.pathname).toBe(`/restore/${JOB}/pending`);
  });

  it.each([
    ["no header", undefined],
    ["a header on another host", `https://evil.example/backup/${OTHER_JOB}/pending`],
    ["a malformed header (recorded: azure.netbackup)", `${VAULT}backup/${OTHER_JOB}/pending`],
    ["a header on another path", `${VAULT}/keys/${OTHER_JOB}/pending`],
    ["a header with a bad job id", `${VAULT}/backup/job-1/pending`],
    ["a header that is not a URL", "not a url"],
  ])("refuses an unusable body with %s: a job may run that nobody can follow", async (_case, header) => {
    const { client } = scriptedClient([
      { status: 202, headers: header ? { "azure-asyncoperation": header } : {}, body: "<html/>" },
    ]);
    const error = await failure(client.beginBackup(CONTAINER, "sig=x"));
    expect(error).toBeInstanceOf(HsmInvalidResponseError);
    expect(withoutRequestIds(error.message)).toBe(
      `Managed HSM ${VAULT} backup start: invalid answer: HTTP 202 accepted the call, but the answer was not JSON, and no usable Azure-AsyncOperation header names the job: a job may be running that cannot be followed`,
    );
  });

  it("ignores an unusable header when the body names the job", async () => {
    const { client, hsm } = scriptedClient([
      accepted({}, { "azure-asyncoperation": `https://evil.example/backup/${OTHER_JOB}/pending` }),
      status("Succeeded"),
    ]);
    await (await client.beginBackup(CONTAINER, "sig=x")).poll();
    expect(hsm.sent[1]!.url.href).toBe(`${VAULT}/backup/${JOB}/pending?api-version=7.6`);
  });

  it("refuses a body and a header naming different jobs", async () => {
    const { client } = scriptedClient([
      accepted({}, { "azure-asyncoperation": `${VAULT}/backup/${OTHER_JOB}/pending` }),
    ]);
    expect(withoutRequestIds((await failure(client.beginBackup(CONTAINER, "sig=x"))).message)).toBe(
      `Managed HSM ${VAULT} backup start: invalid answer: HTTP 202 accepted the call, but the body names job ${JOB} and Azure-AsyncOperation job ${OTHER_JOB}: a job may be running that cannot be followed`,
    );
  });
});

describe("status reads", () => {
  it("says an access problem is about the status, not the job", async () => {
    for (const code of [401, 403]) {
      const { client } = scriptedClient([{ status: code }]);
      const error = await failure(client.getOperationStatus("backup", JOB));
      expect(error).toBeInstanceOf(HsmRequestError);
      expect(error).toMatchObject({ statusCode: code, operation: "backup status" });
    }
  });

  it("takes another 4xx as the job's terminal failure", async () => {
    for (const code of [400, 404, 410]) {
      const { client } = scriptedClient([{ status: code, body: { error: { code: "Gone", message: "no" } } }]);
      const error = await failure(client.getOperationStatus("backup", JOB));
      expect(error).toBeInstanceOf(HsmJobFailedError);
      expect(error).toMatchObject({ code: "Gone", jobId: JOB, kind: "backup" });
    }
  });

  it("retries redirects, 408, 429 and 5xx with growing waits, then says the status is unavailable", async () => {
    const { client, hsm, clock } = scriptedClient(
      [{ status: 302 }, { status: 408 }, { status: 429 }, { status: 500 }],
      { maxStatusAttempts: 4, maxPollIntervalMs: 5000 },
    );
    const error = await failure(client.resumeOperation("backup", JOB).poll());
    expect(error).toBeInstanceOf(HsmStatusUnavailableError);
    expect(withoutRequestIds(error.message)).toBe(
      `Managed HSM ${VAULT} backup job ${JOB}: status unavailable after 4 attempt(s) (last: HTTP 500); the job may still be running`,
    );
    expect(clock.waits).toEqual([2000, 4000, 5000]);
    expect(hsm.sent).toHaveLength(4);
    const redirect = scriptedClient([{ status: 302 }]);
    expect(withoutRequestIds((await failure(redirect.client.getOperationStatus("backup", JOB))).message)).toContain(
      "(last: HTTP 302 (a redirect, not followed))",
    );
  });

  it("waits as a failed read's Retry-After says", async () => {
    const { client, clock } = scriptedClient([{ status: 503, headers: { "retry-after": "3" } }, status("InProgress")], {
      maxStatusAttempts: 2,
    });
    expect((await client.resumeOperation("backup", JOB).poll()).status).toBe("InProgress");
    expect(clock.waits).toEqual([3000]);
  });

  it("reads once, without waiting, when a person waits for the answer", async () => {
    const { client, hsm, clock } = scriptedClient([{ status: 503 }, status("Succeeded")], { maxStatusAttempts: 4 });
    await expect(client.getOperationStatus("backup", JOB)).rejects.toBeInstanceOf(HsmStatusUnavailableError);
    expect(hsm.sent).toHaveLength(1);
    expect(clock.waits).toEqual([]);
    const ok = scriptedClient([status("Canceled", {}, { "retry-after": "4" })]);
    const state = await ok.client.getOperationStatus("restore", JOB);
    expect(state).toStrictEqual({
      kind: "restore",
      jobId: JOB,
      status: "Canceled",
      startTime: new Date(1_764_547_200_000),
    });
  });

  it("refuses a status that is about another job", async () => {
    const { client } = scriptedClient([status("Succeeded", { jobId: OTHER_JOB })]);
    expect((await failure(client.getOperationStatus("backup", JOB))).message).toContain(
      `the status is for job ${OTHER_JOB}, not for job ${JOB}`,
    );
  });
});

describe("Retry-After", () => {
  async function waitsFor(value: string): Promise<number[]> {
    const { client, clock } = scriptedClient(
      [status("InProgress", {}, { "retry-after": value }), status("Succeeded")],
      { maxPollIntervalMs: 60_000 },
    );
    await client.resumeOperation("backup", JOB).pollUntilDone();
    return clock.waits;
  }

  it("reads seconds and HTTP dates, caps them, and ignores nonsense", async () => {
    // A floor after the first read: an HSM saying "now" (or a past date) every time is not obeyed in a loop.
    expect(await waitsFor("0")).toEqual([1000]);
    expect(await waitsFor(" 7 ")).toEqual([7000]);
    expect(await waitsFor("86400")).toEqual([60_000]);
    expect(await waitsFor("soon")).toEqual([1000]);
    expect(await waitsFor("")).toEqual([1000]);
    expect(await waitsFor("Tue, 01 Dec 2026 00:00:09 GMT")).toEqual([9000]);
    expect(await waitsFor("Mon, 30 Nov 2026 00:00:00 GMT")).toEqual([1000]);
    expect(await waitsFor("Fri, 01 Jan 2100 00:00:00 GMT")).toEqual([60_000]);
  });
});

describe("calls that got no answer", () => {
  const refused = () =>
    Object.assign(new Error("send failed"), {
      code: "REQUEST_SEND_ERROR",
      cause: Object.assign(new Error("connect ECONNREFUSED 10.0.0.1:443"), { code: "ECONNREFUSED" }),
    });

  it("a start that never connected was not sent: nothing was started", async () => {
    const { client } = scriptedClient([refused()]);
    const error = await failure(client.beginBackup(CONTAINER, "sig=x"));
    expect(error).toBeInstanceOf(HsmRequestError);
    expect(error).toMatchObject({ delivery: "notSent", notSent: true, unanswered: false });
    expect(withoutRequestIds(error.message)).toBe(
      `Managed HSM ${VAULT} backup start: the call was not sent (send failed); nothing was started`,
    );
  });

  it("a start that failed after it went out may have started a job, and is not re-sent", async () => {
    const { client, hsm } = scriptedClient([new Error("socket hang up\nmore detail"), accepted()]);
    const error = await failure(client.beginBackup(CONTAINER, "sig=x"));
    expect(error).toMatchObject({ delivery: "unanswered", unanswered: true });
    expect(withoutRequestIds(error.message)).toBe(
      `Managed HSM ${VAULT} backup start: the call failed before an answer arrived (socket hang up); it was not retried, because the HSM may have started the job. Check the HSM's status before starting again`,
    );
    expect(hsm.sent).toHaveLength(1);
    const deep = Object.assign(new Error("a"), { cause: { cause: { cause: { cause: { code: "ECONNREFUSED" } } } } });
    const tooDeep = scriptedClient([deep]);
    expect(await failure(tooDeep.client.beginBackup(CONTAINER, "sig=x"))).toMatchObject({ delivery: "unanswered" });
    const other = scriptedClient([Object.assign(new Error("reset"), { code: "ECONNRESET" })]);
    expect(await failure(other.client.beginBackup(CONTAINER, "sig=x"))).toMatchObject({ delivery: "unanswered" });
    const numeric = scriptedClient([Object.assign(new Error("odd"), { code: 7, cause: { code: "ENOTFOUND" } })]);
    expect(await failure(numeric.client.beginBackup(CONTAINER, "sig=x"))).toMatchObject({ delivery: "notSent" });
  });

  it("a call whose token could not be acquired was not sent, and says what to do", async () => {
    const noToken: TokenCredential = {
      getToken: async () => {
        throw Object.assign(new Error("ManagedIdentityCredential: no endpoint\nline two"), {
          name: "CredentialUnavailableError",
        });
      },
    };
    const hsm = new ScriptedHsm([accepted()]);
    const client = new ManagedHsmBackupClient(VAULT, noToken, { httpClient: hsm, delay: async () => {} });
    const error = await failure(client.beginBackup(CONTAINER, "sig=x"));
    expect(error).toMatchObject({ delivery: "notSent" });
    expect(withoutRequestIds(error.message)).toBe(
      `Managed HSM ${VAULT} backup start: the call was not sent (no token could be acquired for the HSM (CredentialUnavailableError: ManagedIdentityCredential: no endpoint); sign in (az login) or check the app's managed identity and its IDENTITY_ENDPOINT); nothing was started`,
    );
    expect(hsm.sent).toEqual([]);
  });

  it("a call that outlived the request timeout says so", async () => {
    const hang: Step = (request) =>
      new Promise((resolve) => request.abortSignal?.addEventListener("abort", () => resolve(new Error("aborted"))));
    const { client } = scriptedClient([hang], { requestTimeoutMs: 50 });
    const error = await failure(client.getOperationStatus("backup", JOB));
    expect(error.message).toContain("(last: no answer within 0.05 s");
  });

  it("a caller's abort ends the call with the caller's reason", async () => {
    const controller = new AbortController();
    const stop = new Error("stop");
    const abortWhileSending: Step = () => {
      controller.abort(stop);
      return new Error("aborted");
    };
    const { client } = scriptedClient([abortWhileSending]);
    expect(await failure(client.beginBackup(CONTAINER, "sig=x", { abortSignal: controller.signal }))).toBe(stop);
  });

  it("a status read is bounded by its attempts when the HSM cannot be reached", async () => {
    const { client, hsm } = scriptedClient([refused(), refused()], { maxStatusAttempts: 2 });
    expect((await failure(client.resumeOperation("backup", JOB).poll())).message).toContain(
      "status unavailable after 2 attempt(s) (last: send failed)",
    );
    expect(hsm.sent).toHaveLength(2);
  });
});

describe("the client's own TLS settings", () => {
  it("trust the CA they are given, and only then, for an HTTPS HSM", async () => {
    const ca = createTestCa(["localhost"]);
    const hsm = await startHsmEmulator({ tls: { cert: ca.cert, key: ca.key } });
    try {
      const url = `https://localhost:${hsm.port}`;
      const options = { delay: async () => {}, maxStatusAttempts: 1 };
      const trusted = new ManagedHsmBackupClient(url, tokenCredential, { ...options, tlsOptions: { ca: ca.ca } });
      const answered = await failure(trusted.getOperationStatus("backup", JOB));
      // An answer (the emulator refuses the test's token), so the TLS handshake succeeded.
      expect(answered).toBeInstanceOf(HsmRequestError);
      expect(answered).toMatchObject({ statusCode: 401 });
      const untrusted = new ManagedHsmBackupClient(url, tokenCredential, options);
      const refused = await failure(untrusted.getOperationStatus("backup", JOB));
      expect(refused).toBeInstanceOf(HsmStatusUnavailableError);
      expect(refused.message).toMatch(/certificate/);
    } finally {
      await hsm.stop();
    }
  });
});

describe("the default wait", () => {
  it("really waits, and stops waiting on abort", async () => {
    const hsm = new ScriptedHsm([
      { status: 429, headers: { "retry-after": "0" } },
      accepted(),
      { status: 429, headers: { "retry-after": "30" } },
      { status: 429 },
    ]);
    const client = new ManagedHsmBackupClient(VAULT, tokenCredential, { httpClient: hsm });
    expect((await client.beginBackup(CONTAINER, "sig=x")).jobId).toBe(JOB);

    const controller = new AbortController();
    const reason = new Error("shutting down");
    setTimeout(() => controller.abort(reason), 20);
    const started = Date.now();
    expect(await failure(client.beginBackup(CONTAINER, "sig=x", { abortSignal: controller.signal }))).toBe(reason);
    expect(Date.now() - started).toBeLessThan(5000);
    // Nothing more was sent after the abort ended the wait.
    expect(hsm.sent).toHaveLength(3);

    const aborted = new AbortController();
    aborted.abort(reason);
    const already = new ManagedHsmBackupClient(VAULT, tokenCredential, {
      httpClient: new ScriptedHsm([{ status: 429 }]),
    });
    expect(await failure(already.beginBackup(CONTAINER, "sig=x", { abortSignal: aborted.signal }))).toBe(reason);
  });
});

describe("the challenge", () => {
  it("sends no token to an HSM whose challenge names another audience", async () => {
    const hsm = new ScriptedHsm(
      [accepted()],
      'Bearer authorization="https://login.microsoftonline.com/t", resource="https://evil.example"',
    );
    const client = new ManagedHsmBackupClient(VAULT, tokenCredential, { httpClient: hsm, delay: async () => {} });
    await expect(client.beginBackup(CONTAINER, "sig=x")).rejects.toMatchObject({ delivery: "notSent" });
    expect(hsm.sent).toEqual([]);
  });

  it("lets a loopback emulator answer with any audience", async () => {
    const hsm = new ScriptedHsm(
      [accepted()],
      'Bearer authorization="https://login.microsoftonline.com/t", resource="https://managedhsm.azure.net"',
    );
    const client = new ManagedHsmBackupClient("http://127.0.0.1:1", tokenCredential, {
      httpClient: hsm,
      delay: async () => {},
    });
    expect((await client.beginBackup("http://127.0.0.1:10000/devstoreaccount1/c", "sig=x")).jobId).toBe(JOB);
    expect(hsm.sent[0]!.url.origin).toBe("http://127.0.0.1:1");
  });
});

describe("splitFolderUri", () => {
  it("refuses what is not a folder inside a container, without echoing a SAS", () => {
    expect(() => splitFolderUri("not a url sig=abc")).toThrow(
      'Backup folder URI "not a url sig=<redacted>" is not a URL',
    );
    expect(() => splitFolderUri(`${FOLDER}?sv=1&sig=abc`)).toThrow(
      `Backup folder URI "${FOLDER}?<redacted-sas>" must not carry a query (a SAS goes separately)`,
    );
    expect(() => splitFolderUri("https://acct.blob.core.windows.net/")).toThrow(
      'Backup folder URI "https://acct.blob.core.windows.net/" names no folder inside a container',
    );
    expect(() => splitFolderUri("http://127.0.0.1:10000/devstoreaccount1/c")).toThrow(
      "names no folder inside a container",
    );
    expect(() => splitFolderUri("http://127.0.0.1:10000/devstoreaccount1")).toThrow(
      "names no folder inside a container",
    );
    expect(splitFolderUri("https://acct.blob.core.windows.net//c//f/")).toStrictEqual({
      containerUri: "https://acct.blob.core.windows.net/c",
      folder: "f",
    });
  });
});

describe("more of what a failure says", () => {
  it.each([
    "ECONNREFUSED",
    "ENOTFOUND",
    "EAI_AGAIN",
    "EAI_FAIL",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "EADDRNOTAVAIL",
    "CERT_HAS_EXPIRED",
    "DEPTH_ZERO_SELF_SIGNED_CERT",
    "SELF_SIGNED_CERT_IN_CHAIN",
    "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "ERR_TLS_CERT_ALTNAME_INVALID",
    "ERR_INVALID_URL",
  ])("%s means the call never reached the HSM", async (code) => {
    const { client } = scriptedClient([Object.assign(new Error(`failed: ${code}`), { code })]);
    expect(await failure(client.beginBackup(CONTAINER, "sig=x"))).toMatchObject({ delivery: "notSent" });
  });

  it("a call that failed before it carried a token was not sent, whatever the error", async () => {
    const failing = { sendRequest: async () => Promise.reject(new Error("socket closed")) };
    const client = new ManagedHsmBackupClient(VAULT, tokenCredential, { httpClient: failing, delay: async () => {} });
    expect(await failure(client.beginBackup(CONTAINER, "sig=x"))).toMatchObject({ delivery: "notSent" });
  });

  it("keeps the first 300 characters of the first line of a transport error", async () => {
    const { client } = scriptedClient([new Error(`${"x".repeat(400)}\nsecond`)]);
    expect((await failure(client.beginBackup(CONTAINER, "sig=x"))).message).toContain(
      `(${"x".repeat(300)}); it was not retried`,
    );
  });

  it("names the operation that failed", async () => {
    const { client } = scriptedClient([{ status: 400 }]);
    expect(withoutRequestIds((await failure(client.beginPreRestore(FOLDER, "sig=x"))).message)).toBe(
      `Managed HSM ${VAULT} preRestore start: HTTP 400: no error details in the answer`,
    );
  });

  it("shows at most 80 characters of a job id it refuses", () => {
    const { client } = scriptedClient();
    expect(() => client.resumeOperation("backup", `${"a".repeat(80)}/x`)).toThrow(
      `"${"a".repeat(80)}" is not a Managed HSM job id`,
    );
  });

  it("ties the caller's abort to the request itself, not only to the wait after it", async () => {
    const hang: Step = (request) =>
      new Promise((resolve) => request.abortSignal?.addEventListener("abort", () => resolve(new Error("aborted"))));
    const { client } = scriptedClient([hang], { requestTimeoutMs: 20_000 });
    const controller = new AbortController();
    const reason = new Error("caller gave up");
    setTimeout(() => controller.abort(reason), 20);
    const started = Date.now();
    expect(await failure(client.getOperationStatus("backup", JOB, { abortSignal: controller.signal }))).toBe(reason);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
