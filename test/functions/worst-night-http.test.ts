/**
 * The worst night (issue 6) through the real handlers: a setting that names an internal host, a
 * credential that cannot get a token (so nothing ever reaches the HSM), and a one-key restore the
 * HSM "succeeds" without restoring anything. Real Azurite, the HSM emulator and @azure/identity.
 */
import { AzureCliCredential } from "@azure/identity";
import { afterEach, describe, expect, it } from "vitest";
import { health } from "../../src/handlers/health.js";
import { nightlyBackup } from "../../src/handlers/nightlyBackup.js";
import { getRestore, postRestore } from "../../src/handlers/restores.js";
import { parseConfig } from "../../src/lib/config.js";
import { createDeps } from "../../src/lib/deps.js";
import { NOT_SENT_TITLE } from "../../src/lib/restore.js";
import {
  bodyOf,
  events,
  get,
  headerOf,
  onTime,
  postJson,
  startTestApp,
  waitForRestore,
  type TestApp,
} from "../support/app.js";

let app: TestApp | undefined;
afterEach(async () => {
  await app?.stop();
  app = undefined;
});

/** One Succeeded backup taken with the app's good deps, as a later restore's source. */
async function succeededBackup(testApp: TestApp): Promise<any> {
  await nightlyBackup(onTime, testApp.context("nightlyBackup"), testApp.deps);
  const [backup] = (await testApp.deps.catalog.list("backup", { status: "Succeeded", top: 1 })).items;
  expect(backup).toMatchObject({ status: "Succeeded" });
  return backup;
}

describe("/api/health with a malformed setting", () => {
  const INTERNAL = "http://backup-internal.corp.example:8443";

  it("names the setting but no part of its value (host, port) in the anonymous answer", async () => {
    app = await startTestApp();
    // The handler builds its deps from process.env when none are passed, as in Azure; only this
    // test's two settings are changed, and put back whatever happens.
    const saved = { MANAGED_HSM_URLS: process.env.MANAGED_HSM_URLS, BackupStorage: process.env.BackupStorage };
    process.env.MANAGED_HSM_URLS = INTERNAL;
    process.env.BackupStorage = app.env.BackupStorage;
    let response;
    try {
      response = await health(get("/api/health"), app.context("health"));
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
    expect(response.status).toBe(500);
    expect(headerOf(response, "content-type")).toBe("application/problem+json");
    const body = bodyOf(response);
    expect(body).toMatchObject({ status: 500, title: "Configuration error", instance: "/api/health" });
    expect(body.detail).toMatch(/App setting MANAGED_HSM_URLS is missing or malformed/);
    const answer = JSON.stringify(body) + JSON.stringify(response.headers ?? {});
    for (const part of ["backup-internal", "corp.example", "8443", INTERNAL]) expect(answer).not.toContain(part);
    // The operator still learns the value, from the function log only.
    expect(app.logs.join("\n")).toMatch(
      /Setting MANAGED_HSM_URLS: "http:\/\/backup-internal\.corp\.example:8443" must use https/,
    );
  });
});

describe("a credential that cannot get a token", () => {
  it("records the nightly backup Failed StartNotSent in one line saying what to do, sends the HSM nothing authenticated, and leaves the HSM free for a restore", async () => {
    app = await startTestApp();
    const hsm = app.emulators[0]!;
    hsm.keys.create("night-key");
    const earlier = await succeededBackup(app);
    const before = hsm.requests.length;
    const logsBefore = app.logs.length;

    // No az CLI here: AzureCliCredential throws a real CredentialUnavailableError.
    const noToken = createDeps(parseConfig(app.env), { ...app.depsOptions, credential: new AzureCliCredential() });
    app.clock.advance(24 * 3_600_000); // the next night: its own schedule slot
    await expect(nightlyBackup(onTime, app.context("nightlyBackup"), noToken)).rejects.toThrow(
      /1 of 1 HSM\(s\): .*StartNotSent/,
    );

    const failed = (await app.deps.catalog.list("backup", { top: 10 })).items.filter((r) => r.id !== earlier.id);
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ status: "Failed", errorCode: "StartNotSent" });
    const message = failed[0]!.errorMessage!;
    expect(message).not.toContain("\n");
    expect(message).toMatch(/no token could be acquired/);
    expect(message).toMatch(/sign in \(az login\) or check the app's managed identity/);
    expect(message).toMatch(/nothing was started/);
    const outcomes = events(app.logs.slice(logsBefore), "MhsmBackupOutcome");
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]).toMatchObject({ status: "Failed", errorCode: "StartNotSent", recordId: failed[0]!.id });

    const during = hsm.requests.slice(before);
    expect(during.filter((r) => r.headers.authorization !== undefined)).toEqual([]);

    // Nothing runs on the HSM: a restore right after is started, not refused as busy.
    hsm.keys.delete("night-key");
    hsm.keys.purge("night-key");
    const restore = await postRestore(
      postJson("/api/restores", { backupId: earlier.id, keyName: "night-key" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(bodyOf(restore).title).not.toBe("HSM busy");
    expect(restore.status).toBe(202);
    expect(await waitForRestore(app, bodyOf(restore).statusUrl)).toMatchObject({ status: "Succeeded" });
  });

  it("answers POST /api/restores 502 'Restore not sent to Managed HSM' saying (once) that nothing was started, and records the restore Failed StartNotSent", async () => {
    app = await startTestApp();
    const hsm = app.emulators[0]!;
    hsm.keys.create("lost-key");
    const backup = await succeededBackup(app);
    hsm.keys.delete("lost-key");
    hsm.keys.purge("lost-key");
    const before = hsm.requests.length;

    const noToken = createDeps(parseConfig(app.env), { ...app.depsOptions, credential: new AzureCliCredential() });
    const response = await postRestore(
      postJson("/api/restores", { backupId: backup.id, keyName: "lost-key" }),
      app.context("postRestore"),
      noToken,
    );
    expect(response.status).toBe(502);
    expect(headerOf(response, "content-type")).toBe("application/problem+json");
    const body = bodyOf(response);
    expect(body.title).toBe(NOT_SENT_TITLE);
    expect(body.title).toBe("Restore not sent to Managed HSM");
    expect(body.detail).toMatch(/no token could be acquired.*; nothing was started$/);
    expect(body.detail).not.toContain("\n");
    expect(body.restore).toMatch(/^\/api\/restores\/\d{13}-[0-9a-f]{8}$/);

    const status = await getRestore(get(body.restore), app.context("getRestore"), app.deps);
    expect(status.status).toBe(200);
    expect(bodyOf(status)).toMatchObject({
      status: "Failed",
      errorCode: "StartNotSent",
      keyName: "lost-key",
      backupId: backup.id,
    });
    expect(hsm.requests.slice(before).filter((r) => r.headers.authorization !== undefined)).toEqual([]);
    expect(hsm.keys.has("lost-key")).toBe(false);
    // Last, so that it hides nothing above: the client's message already ends "nothing was started".
    expect(body.detail.match(/nothing was started/gi)).toHaveLength(1);
  });
});

describe("selective key restore of a key that still exists", () => {
  it("ends Failed KeyNotRestored telling to purge first, while the key exists or is only soft-deleted; after a purge the same restore succeeds", async () => {
    app = await startTestApp();
    const hsm = app.emulators[0]!;
    hsm.keys.create("still-here");
    hsm.keys.create("still-here");
    const backup = await succeededBackup(app);

    const restoreKey = async () => {
      const started = await postRestore(
        postJson("/api/restores", { backupId: backup.id, keyName: "still-here" }),
        app!.context("postRestore"),
        app!.deps,
      );
      expect(started.status).toBe(202);
      return waitForRestore(app!, bodyOf(started).statusUrl);
    };

    const existing = await restoreKey();
    expect(existing).toMatchObject({ status: "Failed", errorCode: "KeyNotRestored", keyName: "still-here" });
    expect(existing.errorMessage).toMatch(/restored no version of key still-here/);
    expect(existing.errorMessage).toMatch(/purge it and restore again/);
    expect(existing.statusDetails).toMatch(/restored: 0/);

    hsm.keys.delete("still-here");
    const softDeleted = await restoreKey();
    expect(softDeleted).toMatchObject({ status: "Failed", errorCode: "KeyNotRestored" });
    expect(softDeleted.errorMessage).toMatch(/recover a soft-deleted key/);

    hsm.keys.purge("still-here");
    const purged = await restoreKey();
    expect(purged).toMatchObject({ status: "Succeeded", keyName: "still-here" });
    expect(purged.errorCode).toBeUndefined();
    expect(purged.statusDetails).toMatch(/Number of successful key versions restored: 2/);
    expect(hsm.keys.has("still-here")).toBe(true);
  });
});
