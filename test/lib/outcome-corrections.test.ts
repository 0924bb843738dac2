/**
 * Corrections at their edges, on a real catalog (Azurite) with the real HSM client over scripted
 * answers: a provisional outcome without an error code, a same-code different-status truth, a
 * correction that lost a race, and the echo limit of a bad recorded job id; and a status body whose
 * folder is not a string.
 */
import { describe, expect, inject, it } from "vitest";
import { Catalog, type BackupRecord } from "../../src/lib/catalog.js";
import { parseConfig } from "../../src/lib/config.js";
import { createDeps } from "../../src/lib/deps.js";
import { parseOperation } from "../../src/lib/hsm/poller.js";
import type { Logger } from "../../src/lib/logger.js";
import { finish, refreshRecord } from "../../src/lib/outcome.js";
import { uniqueName } from "../support/app.js";
import { JOB, ScriptedHsm, tokenCredential, VAULT } from "../support/scripted-hsm.js";

const T0 = new Date("2026-12-01T00:00:00.000Z");

async function setup() {
  const deps = createDeps(
    parseConfig({
      MANAGED_HSM_URLS: VAULT,
      BackupStorage: inject("azuriteConnectionString"),
      CATALOG_TABLE: uniqueName("cor"),
    }),
    {
      credential: tokenCredential,
      now: () => T0,
      persistDelaysMs: [1],
      hsmClientOptions: { httpClient: new ScriptedHsm(), delay: async () => {}, maxStatusAttempts: 1 },
    },
  );
  await deps.catalog.ensureTable();
  const lines: string[] = [];
  const log: Logger = {
    info: (l) => lines.push(`info ${l}`),
    warn: (l) => lines.push(`warn ${l}`),
    error: (l) => lines.push(`error ${l}`),
  };
  return { deps, lines, log };
}

function backup(extra: Partial<BackupRecord>): BackupRecord {
  return {
    id: Catalog.newId(T0),
    hsmName: "contoso",
    hsmUrl: VAULT,
    status: "Running",
    jobId: JOB,
    startedAt: T0.toISOString(),
    trigger: "timer",
    ...extra,
  };
}

describe("corrections", () => {
  it("names a provisional outcome without an error code by its status alone", async () => {
    const { deps, log } = await setup();
    const stored = await deps.catalog.insert("backup", backup({ status: "TimedOut" }));
    const corrected = await finish(deps, "backup", stored, { status: "Failed", errorCode: "NotFound" }, log);
    expect(corrected.record.correctedFrom).toBe("TimedOut");
  });

  it("corrects a provisional outcome when the status differs, even with the same code", async () => {
    const { deps, log } = await setup();
    const stored = await deps.catalog.insert("backup", backup({ status: "TimedOut", errorCode: "JobTimeout" }));
    const corrected = await finish(deps, "backup", stored, { status: "Failed", errorCode: "JobTimeout" }, log);
    expect(corrected.record).toMatchObject({ status: "Failed", correctedFrom: "TimedOut JobTimeout" });
  });

  it("a correction that lost a race returns the record as the winner left it, silently", async () => {
    const { deps, lines, log } = await setup();
    const stale = await deps.catalog.insert("backup", backup({ status: "TimedOut", errorCode: "JobTimeout" }));
    const winner = await finish(deps, "backup", stale, { status: "Succeeded" }, log);
    lines.length = 0;
    const late = await finish(deps, "backup", stale, { status: "Failed", errorCode: "Boom" }, log);
    expect(late.record).toStrictEqual(winner.record);
    expect(late.etag).toBe(winner.etag);
    expect(lines).toEqual([]);
  });

  it("shows at most 80 characters of a recorded job id that cannot be one", async () => {
    const { deps, log } = await setup();
    const stored = await deps.catalog.insert("backup", backup({ jobId: `${"a".repeat(80)}-x` }));
    const { record } = await refreshRecord(deps, "backup", stored, log);
    expect(record.errorMessage).toBe(
      `The recorded job id "${"a".repeat(80)}" is not a Managed HSM job id, so the job's status cannot be read.`,
    );
  });
});

describe("poller edges", () => {
  it("reads a folder only when it is a non-empty string", () => {
    for (const folder of [42, { uri: "x" }, true]) {
      expect(
        parseOperation(
          "backup",
          JSON.stringify({ status: "Succeeded", jobId: JOB, azureStorageBlobContainerUri: folder }),
          VAULT,
        ),
      ).not.toHaveProperty("folderUri");
    }
  });
});
