/**
 * Waiting for a job, through the real client and pipeline against scripted service answers (see
 * test/support/scripted-hsm.ts), with a clock that only moves when the poller waits; and the edge
 * where a status body becomes the app's type (parseOperation), called directly.
 */
import { describe, expect, it } from "vitest";
import {
  HsmInvalidResponseError,
  HsmJobFailedError,
  HsmStatusUnavailableError,
  HsmWaitDeadlineError,
} from "../../../src/lib/hsm/errors.js";
import { parseOperation, type HsmOperationState } from "../../../src/lib/hsm/poller.js";
import { accepted, JOB, scriptedClient, status, VAULT, withoutRequestIds } from "../../support/scripted-hsm.js";

const START = 1_764_547_200; // 2025-12-01T00:00:00Z

function invalid(body: string | null | undefined, expectedJobId?: string): HsmInvalidResponseError {
  try {
    parseOperation("backup", body, VAULT, expectedJobId);
  } catch (error) {
    expect(error).toBeInstanceOf(HsmInvalidResponseError);
    return error as HsmInvalidResponseError;
  }
  throw new Error(`parseOperation accepted ${body}`);
}

describe("parseOperation", () => {
  it("reads a finished backup with every field", () => {
    const body = JSON.stringify({
      status: "Succeeded",
      statusDetails: "done",
      error: { code: "C", message: "M" },
      startTime: START,
      endTime: START + 90,
      jobId: JOB,
      azureStorageBlobContainerUri: "https://a.blob.core.windows.net/c/mhsm-x",
    });
    expect(parseOperation("backup", body, VAULT)).toStrictEqual({
      kind: "backup",
      jobId: JOB,
      status: "Succeeded",
      statusDetails: "done",
      error: { code: "C", message: "M" },
      startTime: new Date(START * 1000),
      endTime: new Date((START + 90) * 1000),
      folderUri: "https://a.blob.core.windows.net/c/mhsm-x",
    });
  });

  it("leaves out what the service left empty or null", () => {
    const body = JSON.stringify({
      status: "InProgress",
      statusDetails: "",
      error: { code: "", message: "" },
      startTime: null,
      endTime: 0,
      jobId: JOB,
      azureStorageBlobContainerUri: "",
    });
    expect(parseOperation("restore", body, VAULT)).toStrictEqual({ kind: "restore", jobId: JOB, status: "InProgress" });
    // Details that are not text (a number, a list) are no status details.
    for (const statusDetails of [42, ["restored: 0"]]) {
      const odd = JSON.stringify({ status: "InProgress", jobId: JOB, statusDetails });
      expect(parseOperation("restore", odd, VAULT)).toStrictEqual({
        kind: "restore",
        jobId: JOB,
        status: "InProgress",
      });
    }
    const nullError = JSON.stringify({ status: "InProgress", jobId: JOB, error: null });
    expect(parseOperation("restore", nullError, VAULT)).toStrictEqual({
      kind: "restore",
      jobId: JOB,
      status: "InProgress",
    });
  });

  it("keeps only the error part the service gave", () => {
    const codeOnly = JSON.stringify({ status: "Failed", jobId: JOB, error: { code: "Forbidden", message: null } });
    expect(parseOperation("backup", codeOnly, VAULT).error).toStrictEqual({ code: "Forbidden" });
    const messageOnly = JSON.stringify({ status: "Failed", jobId: JOB, error: { code: 7, message: "no access" } });
    expect(parseOperation("backup", messageOnly, VAULT).error).toStrictEqual({ message: "no access" });
  });

  it("cuts long texts: code 100, message and details 1000 characters", () => {
    const body = JSON.stringify({
      status: "Failed",
      jobId: JOB,
      statusDetails: "d".repeat(1500),
      error: { code: "c".repeat(150), message: "m".repeat(1500) },
    });
    const state = parseOperation("backup", body, VAULT);
    expect(state.error?.code).toBe("c".repeat(100));
    expect(state.error?.message).toBe("m".repeat(1000));
    expect(state.statusDetails).toBe("d".repeat(1000));
  });

  it.each([
    ["InProgress", "InProgress"],
    ["inprogress", "InProgress"],
    ["Running", "InProgress"],
    ["NotStarted", "InProgress"],
    ["Succeeded", "Succeeded"],
    ["SUCCEEDED", "Succeeded"],
    ["Failed", "Failed"],
    ["failed", "Failed"],
    ["Canceled", "Canceled"],
    ["cancelled", "Canceled"],
    ["Cancelled", "Canceled"],
  ])("reads status %s as %s", (word, expected) => {
    expect(parseOperation("backup", JSON.stringify({ status: word, jobId: JOB }), VAULT).status).toBe(expected);
  });

  it("refuses a status word nobody documented", () => {
    expect(invalid(JSON.stringify({ status: "TimedOut", jobId: JOB })).message).toBe(
      `Managed HSM ${VAULT} backup start: invalid answer: status "TimedOut" is not one Managed HSM documents (InProgress, Succeeded, Failed, Canceled)`,
    );
    expect(invalid(JSON.stringify({ status: "x".repeat(60), jobId: JOB })).problem).toContain(
      `status "${"x".repeat(40)}" is not`,
    );
  });

  it("reads times only within 2015-2100", () => {
    const at = (startTime: unknown) =>
      parseOperation("backup", JSON.stringify({ status: "InProgress", jobId: JOB, startTime }), VAULT).startTime;
    expect(at(1_420_070_400)).toEqual(new Date(1_420_070_400_000));
    expect(at(4_102_444_800)).toEqual(new Date(4_102_444_800_000));
    expect(at(1_420_070_399)).toBeUndefined();
    expect(at(4_102_444_801)).toBeUndefined();
    expect(at(1e15)).toBeUndefined();
    expect(at(String(START))).toBeUndefined();
    const end = parseOperation(
      "backup",
      JSON.stringify({ status: "Succeeded", jobId: JOB, endTime: 4_102_444_801 }),
      VAULT,
    );
    expect(end).not.toHaveProperty("endTime");
  });

  it.each([
    [undefined, "the answer was not JSON"],
    [null, "the answer was not JSON"],
    ["<html>busy</html>", "the answer was not JSON"],
    ["null", "the answer was not a JSON object"],
    ["[]", "the answer was not a JSON object"],
    ["5", "the answer was not a JSON object"],
    ['{"status":"InProgress"}', "the answer had no jobId or status"],
    [`{"jobId":"${JOB}"}`, "the answer had no jobId or status"],
    [`{"jobId":7,"status":"InProgress"}`, "the answer had no jobId or status"],
    [`{"jobId":"${JOB}","status":1}`, "the answer had no jobId or status"],
    ['{"jobId":"job-1","status":"InProgress"}', 'job id "job-1" is not a Managed HSM job id'],
  ])("refuses the body %j: %s", (body, problem) => {
    const error = invalid(body);
    expect(error.problem).toBe(problem);
    expect(error.message).toBe(`Managed HSM ${VAULT} backup start: invalid answer: ${problem}`);
  });

  it("shows at most 80 characters of a bad job id", () => {
    expect(invalid(JSON.stringify({ jobId: `${"a".repeat(80)}-tail`, status: "InProgress" })).problem).toBe(
      `job id "${"a".repeat(80)}" is not a Managed HSM job id`,
    );
  });

  it("with an expected job id, refuses a status for another job and names it a status read", () => {
    const other = "fedcba9876543210fedcba9876543210";
    const error = invalid(JSON.stringify({ jobId: other, status: "Succeeded" }), JOB);
    expect(error.message).toBe(
      `Managed HSM ${VAULT} backup status: invalid answer: the status is for job ${other}, not for job ${JOB}`,
    );
    expect(parseOperation("backup", JSON.stringify({ jobId: JOB, status: "Succeeded" }), VAULT, JOB).jobId).toBe(JOB);
  });
});

describe("HsmOperationPoller.pollUntilDone", () => {
  it("waits as Retry-After says, then the default interval, and resolves with the final state", async () => {
    const { client, hsm, clock } = scriptedClient([
      accepted({}, { "retry-after": "3" }),
      status("InProgress"),
      status("InProgress", {}, { "retry-after": "5" }),
      status("Succeeded", { endTime: START + 60, azureStorageBlobContainerUri: "https://a.blob.core.windows.net/c/f" }),
    ]);
    const poller = await client.beginBackup("https://a.blob.core.windows.net/c", "sv=1&sig=x");
    expect(poller.isDone()).toBe(false);
    expect(poller.toString()).toBe(JSON.stringify({ kind: "backup", jobId: JOB }));
    const seen: string[] = [];
    const final = await poller.pollUntilDone({ onProgress: (state) => seen.push(state.status) });
    expect(clock.waits).toEqual([3000, 1000, 5000]);
    expect(seen).toEqual(["InProgress", "InProgress", "Succeeded"]);
    expect(final).toMatchObject({ status: "Succeeded", jobId: JOB, folderUri: "https://a.blob.core.windows.net/c/f" });
    expect(poller.isDone()).toBe(true);
    expect(poller.getOperationState()).toBe(final);
    expect(hsm.sent.map((r) => `${r.method} ${r.url.pathname}`)).toEqual([
      "POST /backup",
      ...Array(3).fill(`GET /backup/${JOB}/pending`),
    ]);
  });

  it("never waits longer than the cap, even when the default interval is longer", async () => {
    const { client, clock } = scriptedClient(
      [accepted(), status("InProgress"), status("Succeeded", { azureStorageBlobContainerUri: "https://a/c/f" })],
      { defaultPollIntervalMs: 5000, maxPollIntervalMs: 1500 },
    );
    await (await client.beginBackup("https://a.blob.core.windows.net/c", "sig=x")).pollUntilDone();
    expect(clock.waits).toEqual([1500, 1500]);
  });

  it("reads a resumed job at once, without waiting first", async () => {
    const { client, clock } = scriptedClient([status("InProgress"), status("Succeeded")]);
    const poller = client.resumeOperation("restore", JOB);
    expect(poller.getOperationState()).toBeUndefined();
    expect(poller.isDone()).toBe(false);
    await poller.pollUntilDone();
    expect(clock.waits).toEqual([1000]);
  });

  it.each([["Canceled"], ["cancelled"], ["Failed"]])(
    "ends a job that ended %s with HsmJobFailedError carrying its state",
    async (word) => {
      const { client, hsm } = scriptedClient([
        status("InProgress"),
        status(word, { error: { code: "Stopped", message: "by request" } }),
      ]);
      const error = await client
        .resumeOperation("backup", JOB)
        .pollUntilDone()
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(HsmJobFailedError);
      expect(error).toMatchObject({
        status: word === "Failed" ? "Failed" : "Canceled",
        code: "Stopped",
        jobId: JOB,
        vaultUrl: VAULT,
      });
      expect((error as HsmJobFailedError).state?.status).toBe(word === "Failed" ? "Failed" : "Canceled");
      expect(hsm.remaining).toBe(0);
    },
  );

  it("stops at the deadline with the last state, having waited only up to it", async () => {
    const { client, clock, hsm } = scriptedClient([
      status("InProgress"),
      status("InProgress"),
      status("InProgress"),
      status("InProgress"),
    ]);
    const deadline = new Date(clock.now().getTime() + 2500);
    const poller = client.resumeOperation("backup", JOB);
    const error = await poller.pollUntilDone({ deadline }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HsmWaitDeadlineError);
    expect(error).toMatchObject({ kind: "backup", vaultUrl: VAULT, jobId: JOB, deadline, lastProblem: undefined });
    expect((error as HsmWaitDeadlineError).lastState?.status).toBe("InProgress");
    expect(clock.waits).toEqual([1000, 1000, 500]);
    expect(hsm.sent).toHaveLength(4);
    expect(hsm.remaining).toBe(0);
  });

  it("stops exactly at the deadline rather than reading once more", async () => {
    const { client, clock, hsm } = scriptedClient([
      status("InProgress"),
      status("InProgress"),
      status("InProgress"),
      status("InProgress"),
    ]);
    const deadline = new Date(clock.now().getTime() + 2000);
    const error = await client
      .resumeOperation("backup", JOB)
      .pollUntilDone({ deadline })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HsmWaitDeadlineError);
    expect(clock.waits).toEqual([1000, 1000]);
    expect(hsm.remaining).toBe(1);
  });

  it("with a deadline, reads on through unreadable and nonsense answers, forgetting a Retry-After the failed read replaced", async () => {
    const { client, clock } = scriptedClient([
      status("InProgress", {}, { "retry-after": "7" }),
      { status: 503 },
      { status: 200, body: "<html>gateway</html>" },
      status("Succeeded"),
    ]);
    const progress: HsmOperationState[] = [];
    const final = await client
      .resumeOperation("restore", JOB)
      .pollUntilDone({ deadline: new Date(clock.now().getTime() + 60_000), onProgress: (s) => progress.push(s) });
    expect(final.status).toBe("Succeeded");
    expect(clock.waits).toEqual([7000, 1000, 1000]);
    expect(progress.map((s) => s.status)).toEqual(["InProgress", "Succeeded"]);
  });

  it("names the last problem at the deadline when the last read failed, and not once a read succeeded again", async () => {
    const failing = scriptedClient([status("InProgress"), { status: 503 }, { status: 500 }]);
    const deadline = new Date(failing.clock.now().getTime() + 2000);
    const error = await failing.client
      .resumeOperation("backup", JOB)
      .pollUntilDone({ deadline })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HsmWaitDeadlineError);
    expect(withoutRequestIds((error as HsmWaitDeadlineError).lastProblem!)).toBe(
      `Managed HSM ${VAULT} backup job ${JOB}: status unavailable after 1 attempt(s) (last: HTTP 500); the job may still be running`,
    );
    expect((error as HsmWaitDeadlineError).lastState?.status).toBe("InProgress");

    const recovered = scriptedClient([{ status: 503 }, status("InProgress"), status("InProgress")]);
    const later = await recovered.client
      .resumeOperation("backup", JOB)
      .pollUntilDone({ deadline: new Date(recovered.clock.now().getTime() + 2000) })
      .catch((e: unknown) => e);
    expect(later).toBeInstanceOf(HsmWaitDeadlineError);
    expect((later as HsmWaitDeadlineError).lastProblem).toBeUndefined();
  });

  it("without a deadline, an unreadable or nonsense status ends the wait at once", async () => {
    const unreadable = scriptedClient([{ status: 503 }, status("Succeeded")]);
    await expect(unreadable.client.resumeOperation("backup", JOB).pollUntilDone()).rejects.toBeInstanceOf(
      HsmStatusUnavailableError,
    );
    const nonsense = scriptedClient([{ status: 200, body: "{}" }, status("Succeeded")]);
    await expect(nonsense.client.resumeOperation("backup", JOB).pollUntilDone()).rejects.toBeInstanceOf(
      HsmInvalidResponseError,
    );
  });

  it("ends at once on a terminal status error, deadline or not", async () => {
    const { client, clock, hsm } = scriptedClient([
      { status: 404, body: { error: { code: "NotFound", message: "no such job" } } },
      status("Succeeded"),
    ]);
    const error = await client
      .resumeOperation("backup", JOB)
      .pollUntilDone({ deadline: new Date(clock.now().getTime() + 60_000) })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HsmJobFailedError);
    expect(error).toMatchObject({ code: "NotFound" });
    expect(hsm.remaining).toBe(1);
  });

  it("poll() reads once and keeps what it read", async () => {
    const { client } = scriptedClient([status("Failed")]);
    const poller = client.resumeOperation("backup", JOB);
    const state = await poller.poll();
    expect(state.status).toBe("Failed");
    expect(poller.getOperationState()).toBe(state);
    expect(poller.isDone()).toBe(true);
    expect(state).not.toHaveProperty("retryAfterMs");
  });
});
