/**
 * From what the HSM said to the catalog record: the pure patches (finalPatch, folderProblem,
 * startRefusedPatch, timedOutPatch) called directly, and refreshRecord / finish / recordAccepted on
 * a real catalog in Azurite with the real HSM client answering from a script (scripted-hsm.ts).
 */
import { beforeAll, describe, expect, inject, it } from "vitest";
import { Catalog, type BackupRecord, type Kind, type RestoreRecord, type Stored } from "../../src/lib/catalog.js";
import { parseConfig, staleStartMs } from "../../src/lib/config.js";
import { createDeps, type AppDeps } from "../../src/lib/deps.js";
import { HsmInvalidResponseError, HsmJobFailedError, HsmRequestError } from "../../src/lib/hsm/errors.js";
import type { HsmOperationState } from "../../src/lib/hsm/types.js";
import type { Logger } from "../../src/lib/logger.js";
import {
  deadlineOf,
  emitJobAccepted,
  emitOutcome,
  finalPatch,
  finish,
  folderProblem,
  isProvisional,
  operationKind,
  persist,
  recordAccepted,
  refreshRecord,
  startRefusedPatch,
  timedOutPatch,
  type AnyRecord,
} from "../../src/lib/outcome.js";
import { uniqueName } from "../support/app.js";
import {
  JOB,
  operation,
  ScriptedHsm,
  status,
  tokenCredential,
  VAULT,
  withoutRequestIds,
} from "../support/scripted-hsm.js";

const T0 = new Date("2026-12-01T00:00:00.000Z");
const CONTAINER_URL = "https://acct.blob.core.windows.net/mhsm-backups";

/** A clock that stands still until a test sets it. */
class FixedClock {
  ms = T0.getTime();
  now = (): Date => new Date(this.ms);
}

/** Deps on a real (unused until called) catalog table and the real HSM client over a script. */
function makeDeps(hsm = new ScriptedHsm(), clock = new FixedClock(), table = uniqueName("out")): AppDeps {
  return createDeps(
    parseConfig({
      MANAGED_HSM_URLS: VAULT,
      BackupStorage: inject("azuriteConnectionString"),
      CATALOG_TABLE: table,
      BACKUP_CONTAINER: "mhsm-backups",
    }),
    {
      credential: tokenCredential,
      now: clock.now,
      persistDelaysMs: [1, 1],
      hsmClientOptions: { httpClient: hsm, delay: async () => {}, maxStatusAttempts: 1 },
    },
  );
}

function backup(extra: Partial<BackupRecord> = {}): BackupRecord {
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

function restore(extra: Partial<RestoreRecord> = {}): RestoreRecord {
  return {
    id: Catalog.newId(T0),
    hsmName: "contoso",
    hsmUrl: VAULT,
    status: "Running",
    jobId: JOB,
    startedAt: T0.toISOString(),
    backupId: "8234567890123-0a1b2c3d",
    folderUri: `${CONTAINER_URL}/mhsm-contoso-1`,
    ...extra,
  };
}

function state(extra: Partial<HsmOperationState> = {}): HsmOperationState {
  return { kind: "backup", jobId: JOB, status: "Succeeded", ...extra };
}

function capture() {
  const lines: string[] = [];
  const log: Logger = {
    info: (l) => lines.push(`info ${l}`),
    warn: (l) => lines.push(`warn ${l}`),
    error: (l) => lines.push(`error ${l}`),
  };
  const events = (name: string) =>
    lines.filter((l) => l.startsWith(`info ${name} `)).map((l) => JSON.parse(l.slice(`info ${name} `.length)));
  return { lines, log, events };
}

describe("operationKind and deadlineOf", () => {
  it("names the operation a record's job is", () => {
    expect(operationKind("backup", backup())).toBe("backup");
    expect(operationKind("restore", restore())).toBe("restore");
    expect(operationKind("restore", restore({ keyName: "k1" }))).toBe("selectiveKeyRestore");
  });

  it("uses the recorded deadline, or the job timeout after the start when none (or nonsense) is recorded", () => {
    const deps = makeDeps();
    expect(deadlineOf(deps, backup({ deadlineAt: "2026-12-01T00:10:00.000Z" })).toISOString()).toBe(
      "2026-12-01T00:10:00.000Z",
    );
    expect(deadlineOf(deps, backup()).toISOString()).toBe("2026-12-01T02:00:00.000Z");
    expect(deadlineOf(deps, backup({ deadlineAt: "soon" })).toISOString()).toBe("2026-12-01T02:00:00.000Z");
  });
});

describe("finalPatch", () => {
  const deps = makeDeps();
  const now = new Date("2026-12-01T00:30:00.000Z");
  const folder = (name: string) => `${deps.storage.containerUrl("mhsm-backups")}/${name}`;

  it("records a succeeded backup with the HSM's own start and end times and its folder", () => {
    const outcome = state({
      startTime: new Date("2026-12-01T00:00:30Z"),
      endTime: new Date("2026-12-01T00:02:00.600Z"),
      folderUri: folder("mhsm-contoso-1"),
      statusDetails: "ok",
    });
    expect(finalPatch(deps, "backup", backup(), outcome, now)).toStrictEqual({
      status: "Succeeded",
      jobId: JOB,
      endedAt: "2026-12-01T00:02:00.600Z",
      durationSeconds: 91,
      statusDetails: "ok",
      folderUri: folder("mhsm-contoso-1"),
    });
  });

  it("falls back to the record's start and the read time when the HSM gave no times", () => {
    const patch = finalPatch(deps, "backup", backup(), state({ folderUri: folder("f1") }), now);
    expect(patch).toStrictEqual({
      status: "Succeeded",
      jobId: JOB,
      endedAt: now.toISOString(),
      durationSeconds: 1800,
      folderUri: folder("f1"),
    });
  });

  it("never records a negative duration", () => {
    const outcome = state({
      startTime: new Date("2026-12-01T00:05:00Z"),
      endTime: new Date("2026-12-01T00:04:00Z"),
      folderUri: folder("f1"),
    });
    expect(finalPatch(deps, "backup", backup(), outcome, now).durationSeconds).toBe(0);
  });

  it("records a succeeded backup without a usable folder as Failed, keeping the times", () => {
    expect(finalPatch(deps, "backup", backup(), state({ statusDetails: "done" }), now)).toStrictEqual({
      status: "Failed",
      jobId: JOB,
      endedAt: now.toISOString(),
      durationSeconds: 1800,
      statusDetails: "done",
      errorCode: "InvalidServiceResponse",
      errorMessage: `Managed HSM reported backup job ${JOB} Succeeded, but it gave no backup folder. No usable backup is recorded.`,
    });
    expect(
      finalPatch(
        deps,
        "backup",
        backup(),
        state({ folderUri: "https://evil.blob.core.windows.net/mhsm-backups/f" }),
        now,
      ).errorMessage,
    ).toContain("is not on the app's storage account");
  });

  it("records a job that failed or was canceled with the HSM's code, message and times", () => {
    const ended = state({
      status: "Canceled",
      error: { code: "Stopped", message: "by request" },
      startTime: new Date("2026-12-01T00:01:00Z"),
      endTime: new Date("2026-12-01T00:01:10Z"),
    });
    const error = new HsmJobFailedError("backup", VAULT, JOB, ended);
    expect(finalPatch(deps, "backup", backup(), error, now)).toStrictEqual({
      status: "Canceled",
      jobId: JOB,
      endedAt: "2026-12-01T00:01:10.000Z",
      durationSeconds: 10,
      errorCode: "Stopped",
      errorMessage: error.message,
    });
  });

  it("records a terminal status error at the read time, from the record's start", () => {
    const error = new HsmJobFailedError(
      "backup",
      VAULT,
      JOB,
      new HsmRequestError("backup status", VAULT, 404, undefined, "gone"),
    );
    expect(finalPatch(deps, "backup", backup(), error, now)).toStrictEqual({
      status: "Failed",
      jobId: JOB,
      endedAt: now.toISOString(),
      durationSeconds: 1800,
      errorCode: "HTTP404",
      errorMessage: error.message,
    });
  });

  it("records a key restore that restored nothing as KeyNotRestored, and one that restored versions as Succeeded", () => {
    const nothing = "Number of successful key versions restored: 0, Number of key versions could not overwrite: 2";
    const patch = finalPatch(
      deps,
      "restore",
      restore({ keyName: "k1" }),
      state({ kind: "selectiveKeyRestore", statusDetails: nothing }),
      now,
    );
    expect(patch).toStrictEqual({
      status: "Failed",
      jobId: JOB,
      endedAt: now.toISOString(),
      durationSeconds: 1800,
      statusDetails: nothing,
      errorCode: "KeyNotRestored",
      errorMessage: `Managed HSM restored no version of key k1 (${nothing}). A key that still exists, even soft-deleted, is not overwritten: recover a soft-deleted key, or purge it and restore again.`,
    });
    expect(
      finalPatch(deps, "restore", restore({ keyName: "k1" }), state({ statusDetails: "RESTORED:0" }), now).errorCode,
    ).toBe("KeyNotRestored");
    for (const details of ["Number of successful key versions restored: 2", "restored: 05", undefined]) {
      expect(
        finalPatch(deps, "restore", restore({ keyName: "k1" }), state(details ? { statusDetails: details } : {}), now)
          .status,
      ).toBe("Succeeded");
    }
    expect(finalPatch(deps, "restore", restore(), state({ statusDetails: nothing }), now)).toStrictEqual({
      status: "Succeeded",
      jobId: JOB,
      endedAt: now.toISOString(),
      durationSeconds: 1800,
      statusDetails: nothing,
    });
  });
});

describe("folderProblem", () => {
  it.each([
    [undefined, "it gave no backup folder"],
    ["not a url", "its backup folder is not a URL"],
    [
      "https://other.blob.core.windows.net/mhsm-backups/f",
      'its backup folder "https://other.blob.core.windows.net/mhsm-backups/f" is not on the app\'s storage account (acct.blob.core.windows.net)',
    ],
    [
      "http://acct.blob.core.windows.net/mhsm-backups/f",
      'its backup folder "http://acct.blob.core.windows.net/mhsm-backups/f" is not on the app\'s storage account (acct.blob.core.windows.net)',
    ],
    [`${CONTAINER_URL}/f?sig=abc`, `its backup folder "${CONTAINER_URL}/f" carries a query or credentials`],
    [`${CONTAINER_URL}/f#frag`, `its backup folder "${CONTAINER_URL}/f" carries a query or credentials`],
    [
      "https://user@acct.blob.core.windows.net/mhsm-backups/f",
      `its backup folder "${CONTAINER_URL}/f" carries a query or credentials`,
    ],
    [
      "https://:pw@acct.blob.core.windows.net/mhsm-backups/f",
      `its backup folder "${CONTAINER_URL}/f" carries a query or credentials`,
    ],
    [
      "https://acct.blob.core.windows.net/other/f",
      'its backup folder "https://acct.blob.core.windows.net/other/f" is not a folder directly inside the container /mhsm-backups',
    ],
    [
      "https://acct.blob.core.windows.net/mhsm-backupsX/f",
      'its backup folder "https://acct.blob.core.windows.net/mhsm-backupsX/f" is not a folder directly inside the container /mhsm-backups',
    ],
    [
      `${CONTAINER_URL}/`,
      `its backup folder "${CONTAINER_URL}/" is not a folder directly inside the container /mhsm-backups`,
    ],
    [
      `${CONTAINER_URL}/a/b`,
      `its backup folder "${CONTAINER_URL}/a/b" is not a folder directly inside the container /mhsm-backups`,
    ],
    [
      `${CONTAINER_URL}/.hidden`,
      `its backup folder "${CONTAINER_URL}/.hidden" is not a folder directly inside the container /mhsm-backups`,
    ],
    [
      `${CONTAINER_URL}/${"f".repeat(252)}`,
      `its backup folder ${JSON.stringify(`${CONTAINER_URL}/${"f".repeat(252)}`.slice(0, 200))} is not a folder directly inside the container /mhsm-backups`,
    ],
  ])("finds %s wrong: %s", (folder, problem) => {
    expect(folderProblem(folder, CONTAINER_URL)).toBe(problem);
  });

  it("accepts a folder directly inside the container, also with a trailing slash on the container", () => {
    expect(folderProblem(`${CONTAINER_URL}/mhsm-contoso-2026120100000000`, CONTAINER_URL)).toBeUndefined();
    expect(folderProblem(`${CONTAINER_URL}/A1._-z`, `${CONTAINER_URL}/`)).toBeUndefined();
    expect(folderProblem(`${CONTAINER_URL}/${"f".repeat(251)}`, CONTAINER_URL)).toBeUndefined();
    expect(
      folderProblem("http://127.0.0.1:10000/devstoreaccount1/c/f", "http://127.0.0.1:10000/devstoreaccount1/c"),
    ).toBeUndefined();
  });
});

describe("startRefusedPatch and timedOutPatch", () => {
  const now = new Date("2026-12-01T00:00:05.000Z");

  it.each([
    [new HsmRequestError("backup start", VAULT, undefined, undefined, "no token", "notSent"), "StartNotSent"],
    [new HsmRequestError("backup start", VAULT, 409, "Conflict", "busy"), "Conflict"],
    [new HsmRequestError("backup start", VAULT, 500, undefined, "oops"), "HTTP500"],
    [new HsmInvalidResponseError("backup start", VAULT, "not JSON"), "InvalidServiceResponse"],
    [new TypeError("bad"), "TypeError"],
    ["a string", "Error"],
  ])("records a refused start as Failed with the code of %s", (error, code) => {
    const patch = startRefusedPatch(error, now);
    expect(patch).toStrictEqual({
      status: "Failed",
      endedAt: now.toISOString(),
      errorCode: code,
      errorMessage: expect.any(String),
    });
  });

  it("keeps the error's text, redacted", () => {
    expect(startRefusedPatch(new Error("PUT https://a/c?sv=1&sig=abc failed"), now).errorMessage).toBe(
      "PUT https://a/c?<redacted-sas> failed",
    );
  });

  it("says what was last known at the deadline", () => {
    const deadline = new Date("2026-12-01T02:00:00.000Z");
    expect(timedOutPatch(backup(), deadline, state({ status: "InProgress" }), "HTTP 503")).toStrictEqual({
      status: "TimedOut",
      errorCode: "JobTimeout",
      errorMessage: `Job ${JOB} had not ended by the deadline 2026-12-01T02:00:00.000Z; its last status was InProgress (last problem: HTTP 503). The HSM may still finish it: if a later status read reports the outcome, it replaces this one.`,
    });
    const { jobId: _none, ...noJob } = backup();
    expect(timedOutPatch(noJob, deadline, undefined, undefined).errorMessage).toBe(
      "Job (no job id) had not ended by the deadline 2026-12-01T02:00:00.000Z; no status was ever read. The HSM may still finish it: if a later status read reports the outcome, it replaces this one.",
    );
  });

  it("calls TimedOut and the outcomes recorded without the HSM's word provisional", () => {
    expect(isProvisional(backup({ status: "TimedOut" }))).toBe(true);
    expect(isProvisional(backup({ status: "Failed", errorCode: "StartOutcomeUnknown" }))).toBe(true);
    expect(isProvisional(backup({ status: "Failed", errorCode: "JobTimeout" }))).toBe(true);
    expect(isProvisional(backup({ status: "Failed", errorCode: "Forbidden" }))).toBe(false);
    expect(isProvisional(backup({ status: "Failed" }))).toBe(false);
    expect(isProvisional(backup({ status: "Succeeded" }))).toBe(false);
  });
});

describe("emitOutcome", () => {
  it("emits a backup's outcome with its folder and origin", () => {
    const { log, events } = capture();
    const record = backup({
      status: "Succeeded",
      folderUri: `${CONTAINER_URL}/f`,
      durationSeconds: 12,
      origin: "discovered",
      statusDetails: "x",
    });
    emitOutcome(log, "backup", record);
    expect(events("MhsmBackupOutcome")).toStrictEqual([
      {
        hsm: "contoso",
        recordId: record.id,
        jobId: JOB,
        status: "Succeeded",
        folderUri: `${CONTAINER_URL}/f`,
        durationSeconds: 12,
        origin: "discovered",
      },
    ]);
  });

  it("emits a restore's outcome with its folder, backup id and key name, and what it corrected", () => {
    const { log, events } = capture();
    const record = restore({
      status: "Failed",
      keyName: "k1",
      errorCode: "KeyNotRestored",
      errorMessage: "none",
      correctedAt: T0.toISOString(),
      correctedFrom: "TimedOut JobTimeout",
    });
    emitOutcome(log, "restore", record);
    expect(events("MhsmRestoreOutcome")).toStrictEqual([
      {
        hsm: "contoso",
        recordId: record.id,
        jobId: JOB,
        status: "Failed",
        folderUri: record.folderUri,
        backupId: record.backupId,
        keyName: "k1",
        errorCode: "KeyNotRestored",
        errorMessage: "none",
        correctionOf: "TimedOut JobTimeout",
      },
    ]);
    const uncorrected = capture();
    emitOutcome(uncorrected.log, "restore", restore({ status: "Succeeded", correctedFrom: "stale" }));
    expect(uncorrected.events("MhsmRestoreOutcome")[0]).not.toHaveProperty("correctionOf");
  });
});

describe("emitJobAccepted", () => {
  it("logs the accepted job's event with everything needed to find it again", () => {
    const { log, events } = capture();
    emitJobAccepted(log, "contoso", "8234567890123-0a1b2c3d", JOB, "selectiveKeyRestore");
    expect(events("MhsmJobAccepted")).toEqual([
      {
        hsm: "contoso",
        recordId: "8234567890123-0a1b2c3d",
        jobId: JOB,
        status: "Running",
        operation: "selectiveKeyRestore",
      },
    ]);
  });
});

describe("persist", () => {
  it("retries a failing write once per configured delay, then gives up with the last error", async () => {
    let calls = 0;
    await expect(
      persist({ persistDelaysMs: [1, 1] }, async () => {
        calls++;
        throw new Error(`write ${calls}`);
      }),
    ).rejects.toThrow("write 3");
    expect(calls).toBe(3);
    let tries = 0;
    expect(
      await persist({ persistDelaysMs: [1, 1] }, async () =>
        ++tries < 3 ? Promise.reject(new Error("busy")) : "saved",
      ),
    ).toBe("saved");
  });
});

describe("against a real catalog", () => {
  const hsm = new ScriptedHsm();
  const clock = new FixedClock();
  let deps: AppDeps;

  beforeAll(async () => {
    deps = makeDeps(hsm, clock);
    await deps.catalog.ensureTable();
  });

  async function stored<K extends Kind>(
    kind: K,
    record: K extends "backup" ? BackupRecord : RestoreRecord,
  ): Promise<Stored<AnyRecord>> {
    return deps.catalog.insert(kind, record as never) as Promise<Stored<AnyRecord>>;
  }

  /** Runs refreshRecord at T0 + offsetMs. */
  async function refreshAt<T extends AnyRecord>(
    offsetMs: number,
    kind: Kind,
    record: Stored<T>,
    log: Logger,
  ): Promise<Stored<T>> {
    clock.ms = T0.getTime() + offsetMs;
    return refreshRecord(deps, kind, record, log);
  }

  it("leaves a settled record alone without asking the HSM", async () => {
    const { log, lines } = capture();
    const record = await stored("backup", backup({ status: "Succeeded" }));
    const sent = hsm.sent.length;
    expect(await refreshAt(0, "backup", record, log)).toBe(record);
    expect(hsm.sent.length).toBe(sent);
    expect(lines).toEqual([]);
  });

  it("gives a Starting record its worker's time, then records that the start's outcome is unknown", async () => {
    const { jobId: _none, ...starting } = backup({ status: "Starting", errorMessage: "socket hang up" });
    const record = await stored("backup", starting);
    const fresh = capture();
    // A backup's worker has its pre-flight's time too (config.test.ts).
    const stale = staleStartMs(deps.config);
    expect(await refreshAt(stale - 1, "backup", record, fresh.log)).toBe(record);
    const late = capture();
    const failed = await refreshAt(stale, "backup", record, late.log);
    expect(failed.record).toMatchObject({
      status: "Failed",
      errorCode: "StartOutcomeUnknown",
      endedAt: new Date(T0.getTime() + stale).toISOString(),
      errorMessage:
        "The worker stopped before the HSM answered the start call (socket hang up). The HSM may have run a backup that is not recorded here: check its audit log.",
    });
    expect(late.events("MhsmBackupOutcome")).toHaveLength(1);
    const { jobId: _n, ...plain } = backup({ status: "Starting" });
    const quiet = await refreshAt(60 * 60_000, "backup", await stored("backup", plain), capture().log);
    expect(quiet.record.errorMessage).toBe(
      "The worker stopped before the HSM answered the start call. The HSM may have run a backup that is not recorded here: check its audit log.",
    );
  });

  it("leaves a Running record without a job id alone", async () => {
    const { jobId: _none, ...running } = backup({ status: "Running" });
    const record = await stored("backup", running);
    expect(await refreshAt(60 * 60_000, "backup", record, capture().log)).toBe(record);
  });

  it("fails a record whose job id could not be a Managed HSM one", async () => {
    const record = await stored("backup", backup({ jobId: "job-1" }));
    const { record: failed } = await refreshAt(0, "backup", record, capture().log);
    expect(failed).toMatchObject({
      status: "Failed",
      errorCode: "InvalidServiceResponse",
      endedAt: T0.toISOString(),
      errorMessage: 'The recorded job id "job-1" is not a Managed HSM job id, so the job\'s status cannot be read.',
    });
  });

  it("leaves a record of an HSM no longer configured alone", async () => {
    const record = await stored("backup", backup({ hsmUrl: "https://gone.managedhsm.azure.net" }));
    const sent = hsm.sent.length;
    expect(await refreshAt(0, "backup", record, capture().log)).toBe(record);
    expect(hsm.sent.length).toBe(sent);
  });

  it("records a succeeded job once, with the HSM's times, its folder and one event", async () => {
    const record = await stored("backup", backup());
    hsm.push(
      status("Succeeded", {
        startTime: 1_796_083_230,
        endTime: 1_796_083_290,
        azureStorageBlobContainerUri: `${deps.storage.containerUrl("mhsm-backups")}/mhsm-contoso-1`,
      }),
    );
    const { log, events } = capture();
    const done = await refreshAt(60_000, "backup", record, log);
    expect(done.record).toMatchObject({
      status: "Succeeded",
      durationSeconds: 60,
      endedAt: new Date(1_796_083_290_000).toISOString(),
      folderUri: `${deps.storage.containerUrl("mhsm-backups")}/mhsm-contoso-1`,
    });
    expect(events("MhsmBackupOutcome")).toMatchObject([
      { status: "Succeeded", durationSeconds: 60, recordId: record.record.id },
    ]);
    expect(hsm.sent.at(-1)?.url.pathname).toBe(`/backup/${JOB}/pending`);
    expect((await deps.catalog.get("backup", record.record.id))?.record.status).toBe("Succeeded");
    // The record is settled: asked again, nothing changes and nothing is emitted.
    const again = capture();
    expect(await refreshAt(120_000, "backup", done, again.log)).toBe(done);
    expect(again.lines).toEqual([]);
  });

  it.each([
    ["Failed", "Failed"],
    ["Canceled", "Canceled"],
  ])("records a job that ended %s with the HSM's code", async (word, expected) => {
    const record = await stored("restore", restore({ keyName: "k1" }));
    hsm.push(status(word, { error: { code: "Boom", message: "it broke" } }));
    const { record: ended } = await refreshAt(0, "restore", record, capture().log);
    expect(ended).toMatchObject({ status: expected, errorCode: "Boom" });
    expect(hsm.sent.at(-1)?.url.pathname).toBe(`/restore/${JOB}/pending`);
  });

  it("records a terminal status error as Failed", async () => {
    const record = await stored("backup", backup());
    hsm.push({ status: 404, body: { error: { code: "NotFound", message: "no such job" } } });
    expect((await refreshAt(0, "backup", record, capture().log)).record).toMatchObject({
      status: "Failed",
      errorCode: "NotFound",
    });
  });

  it("leaves a running job alone before its deadline and records TimedOut after it", async () => {
    const record = await stored("backup", backup({ deadlineAt: "2026-12-01T01:00:00.000Z" }));
    hsm.push(status("InProgress"));
    expect(await refreshAt(60 * 60_000 - 1, "backup", record, capture().log)).toBe(record);
    hsm.push(status("InProgress"));
    const { log, events } = capture();
    const timedOut = await refreshAt(60 * 60_000, "backup", record, log);
    expect(timedOut.record).toMatchObject({ status: "TimedOut", errorCode: "JobTimeout" });
    expect(timedOut.record.errorMessage).toContain("its last status was InProgress.");
    expect(events("MhsmBackupOutcome")).toMatchObject([{ status: "TimedOut" }]);
    // Already TimedOut, still running: nothing more to record.
    hsm.push(status("InProgress"));
    expect(await refreshAt(2 * 60 * 60_000, "backup", timedOut, capture().log)).toBe(timedOut);
  });

  it("treats an unreadable status as unknown, not failed: unchanged before the deadline, TimedOut after it", async () => {
    const record = await stored("backup", backup({ deadlineAt: "2026-12-01T01:00:00.000Z" }));
    hsm.push({ status: 503 });
    const early = capture();
    expect(await refreshAt(0, "backup", record, early.log)).toBe(record);
    expect(early.lines.map(withoutRequestIds)).toEqual([
      `warn Status of backup ${record.record.id} (HSM contoso, job ${JOB}) is unknown for now: Managed HSM ${VAULT} backup job ${JOB}: status unavailable after 1 attempt(s) (last: HTTP 503); the job may still be running`,
    ]);
    for (const answer of [{ status: 403 }, { status: 200, body: "<html/>" }]) {
      hsm.push(answer);
      expect(await refreshAt(0, "backup", record, capture().log)).toBe(record);
    }
    hsm.push({ status: 503 });
    const timedOut = await refreshAt(60 * 60_000, "backup", record, capture().log);
    expect(timedOut.record).toMatchObject({ status: "TimedOut", errorCode: "JobTimeout" });
    expect(timedOut.record.errorMessage).toContain("no status was ever read (last problem: Managed HSM");
    hsm.push({ status: 503 });
    expect(await refreshAt(2 * 60 * 60_000, "backup", timedOut, capture().log)).toBe(timedOut);
  });

  it("lets a failure that is not about the HSM's answer through, before and after the deadline, changing nothing", async () => {
    const record = await stored("backup", backup({ deadlineAt: "2026-12-01T01:00:00.000Z" }));
    const bug = new TypeError("a bug, not an answer");
    // The status read is the dependency that fails here; refreshRecord is the code under test.
    const broken: AppDeps = {
      ...deps,
      hsmClient: (hsm) =>
        Object.assign(Object.create(deps.hsmClient(hsm)), { getOperationStatus: () => Promise.reject(bug) }),
    };
    for (const offset of [0, 2 * 60 * 60_000]) {
      clock.ms = T0.getTime() + offset;
      await expect(refreshRecord(broken, "backup", record, capture().log)).rejects.toBe(bug);
    }
    expect(await deps.catalog.get("backup", record.record.id)).toStrictEqual(record);
  });

  it("corrects a TimedOut record when the HSM reports the outcome, clearing what no longer holds", async () => {
    const record = await stored(
      "backup",
      backup({
        status: "TimedOut",
        errorCode: "JobTimeout",
        errorMessage: "had not ended",
        endedAt: T0.toISOString(),
        durationSeconds: 5,
      }),
    );
    hsm.push(
      status("Succeeded", {
        startTime: null,
        azureStorageBlobContainerUri: `${deps.storage.containerUrl("mhsm-backups")}/f2`,
      }),
    );
    const { log, lines, events } = capture();
    const corrected = await refreshAt(3 * 60 * 60_000, "backup", record, log);
    expect(corrected.record).toMatchObject({
      status: "Succeeded",
      correctedFrom: "TimedOut JobTimeout",
      correctedAt: "2026-12-01T03:00:00.000Z",
      durationSeconds: 10_800,
    });
    expect(corrected.record).not.toHaveProperty("errorCode");
    expect(corrected.record).not.toHaveProperty("errorMessage");
    const reread = (await deps.catalog.get("backup", record.record.id))!.record;
    expect(reread).not.toHaveProperty("errorCode");
    expect(reread.status).toBe("Succeeded");
    expect(lines).toContain(
      `warn backup record ${record.record.id} of HSM contoso: TimedOut JobTimeout corrected to Succeeded from the HSM's own answer`,
    );
    expect(events("MhsmBackupOutcome")).toMatchObject([{ status: "Succeeded", correctionOf: "TimedOut JobTimeout" }]);
  });

  it("does not correct a provisional outcome with the same one", async () => {
    const record = await stored("backup", backup({ status: "Failed", errorCode: "StartOutcomeUnknown" }));
    const { log, lines } = capture();
    const same = await finish(deps, "backup", record, { status: "Failed", errorCode: "StartOutcomeUnknown" }, log);
    expect(same.record).toEqual(record.record);
    expect(lines).toEqual([]);
    const other = await finish(deps, "backup", record, { status: "Failed", errorCode: "NotFound" }, log);
    expect(other.record).toMatchObject({ errorCode: "NotFound", correctedFrom: "Failed StartOutcomeUnknown" });
  });

  it("leaves an outcome the HSM gave alone and emits nothing", async () => {
    const record = await stored("backup", backup({ status: "Failed", errorCode: "Forbidden" }));
    const { log, lines } = capture();
    const kept = await finish(deps, "backup", record, { status: "Succeeded" }, log);
    expect(kept.record).toEqual(record.record);
    expect(lines).toEqual([]);
  });

  it("records an accepted job as Running with the HSM's start time, and corrects a StartOutcomeUnknown back to Running without an outcome event", async () => {
    const starting = (): BackupRecord => {
      const { jobId: _none, ...record } = backup({ status: "Starting" });
      return record;
    };
    const record = await stored("backup", starting());
    const { log, lines } = capture();
    const running = await recordAccepted(
      deps,
      "backup",
      record,
      state({ status: "InProgress", startTime: new Date("2026-12-01T00:00:02Z") }),
      JOB,
      log,
    );
    expect(running.record).toMatchObject({ status: "Running", jobId: JOB, startedAt: "2026-12-01T00:00:02.000Z" });
    const plain = await recordAccepted(deps, "backup", await stored("backup", starting()), undefined, JOB, log);
    expect(plain.record.startedAt).toBe(T0.toISOString());
    expect(lines).toEqual([]);

    const given = await stored("backup", {
      ...starting(),
      status: "Failed",
      errorCode: "StartOutcomeUnknown",
      errorMessage: "worker stopped",
    } as BackupRecord);
    const back = capture();
    const revived = await recordAccepted(deps, "backup", given, undefined, JOB, back.log);
    expect(revived.record).toMatchObject({
      status: "Running",
      jobId: JOB,
      correctedFrom: "Failed StartOutcomeUnknown",
    });
    expect(revived.record).not.toHaveProperty("errorCode");
    expect(back.lines).toEqual([
      `warn backup record ${given.record.id} of HSM contoso: Failed StartOutcomeUnknown corrected to Running from the HSM's own answer`,
    ]);
  });

  it("keeps the status body the HSM sent for a restore", async () => {
    const record = await stored("restore", restore());
    hsm.push({ status: 200, body: operation("Succeeded", { statusDetails: "Restored" }) });
    expect((await refreshAt(0, "restore", record, capture().log)).record).toMatchObject({
      status: "Succeeded",
      statusDetails: "Restored",
    });
  });
});
