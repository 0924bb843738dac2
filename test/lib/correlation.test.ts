/**
 * Azure correlation ids in every failure (issue 10): a forced HSM 500 carries the service's
 * x-ms-request-id, and the client request id the pipeline sent, into the error, the catalog record,
 * the outcome event, the CLI output and a problem+json detail; a storage failure's ids reach the CLI.
 * The hostile HSM stand-in sends the header a real HSM sends; Azurite sends its own.
 */
import { afterEach, describe, expect, it } from "vitest";
import { main } from "../../src/cli/hsm-backup.js";
import { postRestore } from "../../src/handlers/restores.js";
import { createDeps } from "../../src/lib/deps.js";
import { EVENTS } from "../../src/lib/telemetry.js";
import { bodyOf, postJson, type TestApp } from "../support/app.js";
import { events, Night } from "../support/bad-night.js";
import { keyVaultError } from "../support/hostile-hsm.js";

const night = new Night();
afterEach(() => night.stopAll());

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

async function cli(
  app: TestApp,
  argv: string[],
  env = app.env,
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(
    argv,
    {
      env,
      stdout: { write: (text: string) => (stdout += text) },
      stderr: { write: (text: string) => (stderr += text) },
      isTTY: false,
    },
    { createDeps: (config) => createDeps(config, app.depsOptions), pollIntervalMs: 25 },
  );
  return { code, stdout, stderr };
}

describe("request ids in failures", () => {
  it("a forced HSM 500 on the backup start shows x-ms-request-id in the record, the outcome event and the CLI output", async () => {
    const hsm = await night.hostile();
    const requestId = "3c9a1f2e-5b7d-4e08-9c61-0a2b4d6f8e10";
    hsm.on(
      "POST",
      "/backup",
      keyVaultError(500, "InternalServerError", "The service hit an internal error.", { "x-ms-request-id": requestId }),
    );
    const { app } = await night.app([hsm.url]);

    const run = await cli(app, ["backup", "--verbose"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`x-ms-request-id ${requestId}`);

    const [record] = (await app.deps.catalog.list("backup", { top: 10 })).items;
    const sent = hsm.authenticated("POST", /^\/backup$/)[0]!.headers["x-ms-client-request-id"];
    expect(sent).toMatch(GUID);
    expect(record).toMatchObject({
      status: "Failed",
      errorCode: "InternalServerError",
      requestId,
      clientRequestId: sent,
    });
    expect(record!.errorMessage).toContain(`x-ms-request-id ${requestId}, x-ms-client-request-id ${sent}`);

    const line = run.stderr.split("\n").find((l) => l.startsWith(`${EVENTS.backupOutcome} `));
    expect(JSON.parse(line!.slice(EVENTS.backupOutcome.length + 1))).toMatchObject({
      status: "Failed",
      requestId,
      clientRequestId: sent,
    });
  });

  it("a job that ends Failed names the status read that reported it", async () => {
    const emulator = await night.emulator();
    const { app } = await night.app([emulator.url]);
    emulator.faults.failNextJob("backup", { code: "StorageUnavailable", message: "could not write" });
    const run = await cli(app, ["backup", "--json"]);
    expect(run.code).toBe(1);
    const [record] = JSON.parse(run.stdout);
    expect(record).toMatchObject({ status: "Failed", errorCode: "StorageUnavailable" });
    // The emulator answers every call with an x-ms-request-id, as Managed HSM does.
    expect(record.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(record.errorMessage).toContain(`x-ms-request-id ${record.requestId}`);
  });

  it("a restore start the HSM answers with 500 gets a problem+json detail naming the request id", async () => {
    const hsm = await night.hostile();
    const { app } = await night.app([hsm.url]);
    const backup = await cli(app, ["backup", "--json"]);
    expect(backup.code, backup.stderr).toBe(0);
    const [record] = JSON.parse(backup.stdout);
    const requestId = "7d1e0c3b-2a94-4f6e-8b15-c0d9e8f7a6b5";
    hsm.on(
      "PUT",
      /^\/keys\/[^/]+\/restore$/,
      keyVaultError(500, "InternalServerError", "boom", { "x-ms-request-id": requestId }),
    );

    const response = await postRestore(
      postJson("/api/restores", { backupId: record.id, keyName: "k1" }),
      app.context("postRestore"),
      app.deps,
    );
    expect(response.status).toBe(502);
    expect(bodyOf(response).detail).toContain(`x-ms-request-id ${requestId}`);
    const restores = (await app.deps.catalog.list("restore", { top: 10 })).items;
    expect(restores[0]).toMatchObject({ status: "Failed", requestId });
    expect(events(app.logs, EVENTS.restoreOutcome)[0]).toMatchObject({ requestId });
  });

  it("a storage failure printed by the CLI carries Azurite's x-ms-request-id", async () => {
    const { app } = await night.app([(await night.emulator()).url]);
    const wrongKey = Buffer.alloc(64, 7).toString("base64");
    const connectionString = String(app.env.BackupStorage).replace(/AccountKey=[^;]+/, `AccountKey=${wrongKey}`);
    const run = await cli(app, ["list"], { ...app.env, BackupStorage: connectionString });
    expect(run.code).toBe(4);
    expect(run.stderr).toMatch(/x-ms-request-id [0-9a-f-]{36}/);
    expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
  });
});
