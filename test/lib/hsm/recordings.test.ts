/**
 * The client replayed against every real recorded Managed HSM session in shared/recordings: each
 * request it sends must match the recorded one (method, path, api-version, body, auth probe first),
 * the recorded answers drive it, and its outcome must be what the recorded service said.
 */
import type { TokenCredential } from "@azure/core-auth";
import { describe, expect, it } from "vitest";
import { ManagedHsmBackupClient } from "../../../src/lib/hsm/client.js";
import { HsmJobFailedError, HsmRequestError } from "../../../src/lib/hsm/errors.js";
import type { HsmOperationPoller } from "../../../src/lib/hsm/poller.js";
import {
  backupRestoreEntries,
  loadRecording,
  recordingFiles,
  ReplayHttpClient,
  type RecordedEntry,
} from "../../support/recordings.js";

const credential: TokenCredential = {
  getToken: async () => ({ token: "token-for-replay", expiresOnTimestamp: Date.now() + 3_600_000 }),
};
const DEFAULT_POLL_MS = 2000;

interface Operation {
  readonly start: RecordedEntry;
  readonly polls: readonly RecordedEntry[];
}

/** Splits the recorded backup/restore calls into start + its status polls. */
function operations(entries: readonly RecordedEntry[]): Operation[] {
  const ops: Array<{ start: RecordedEntry; polls: RecordedEntry[] }> = [];
  for (const entry of entries) {
    if (entry.status === 401) continue;
    if (entry.method === "GET") ops.at(-1)!.polls.push(entry);
    else ops.push({ start: entry, polls: [] });
  }
  return ops;
}

function begin(client: ManagedHsmBackupClient, start: RecordedEntry): Promise<HsmOperationPoller> {
  const body = start.requestBody as Record<string, any>;
  if (start.url.pathname === "/backup") return client.beginBackup(body.storageResourceUri, body.token);
  const folderUri = `${body.sasTokenParameters.storageResourceUri.replace(/\/$/, "")}/${body.folderToRestore ?? body.folder}`;
  if (start.url.pathname === "/restore") return client.beginRestore(folderUri, body.sasTokenParameters.token);
  const keyName = /^\/keys\/([^/]+)\/restore$/.exec(start.url.pathname)![1]!;
  return client.beginSelectiveKeyRestore(keyName, folderUri, body.sasTokenParameters.token);
}

function challengeMatchesHost(entries: readonly RecordedEntry[]): boolean {
  const challenge = entries.find((e) => e.status === 401)?.headers["www-authenticate"] ?? "";
  const resource = /resource="([^"]+)"/.exec(challenge)?.[1];
  return resource !== undefined && entries[0]!.url.hostname.endsWith(`.${new URL(resource).hostname}`);
}

function replayClient(entries: readonly RecordedEntry[], origin: string) {
  const replay = new ReplayHttpClient(entries);
  const waits: number[] = [];
  const apiVersion = entries[0]!.url.searchParams.get("api-version") ?? undefined; // nock files did not keep it
  const client = new ManagedHsmBackupClient(origin, credential, {
    httpClient: replay,
    ...(apiVersion ? { serviceVersion: apiVersion } : {}),
    defaultPollIntervalMs: DEFAULT_POLL_MS,
    delay: async (ms) => void waits.push(ms),
  });
  return { client, replay, waits };
}

/** Replays every operation of a recording and checks each outcome against the recorded answers. */
async function replayAll(entries: readonly RecordedEntry[], origin: string) {
  const { client, replay, waits } = replayClient(entries, origin);
  for (const op of operations(entries)) {
    waits.length = 0;
    if (op.start.status !== 202) {
      const error = await begin(client, op.start).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(HsmRequestError);
      const recorded = JSON.parse(op.start.responseBody).error;
      expect((error as HsmRequestError).statusCode).toBe(op.start.status);
      expect((error as HsmRequestError).code).toBe(recorded.code);
      expect((error as Error).message).toContain(recorded.message);
      continue;
    }
    const poller = await begin(client, op.start);
    const started = JSON.parse(op.start.responseBody);
    expect(poller.jobId).toBe(started.jobId);
    expect(poller.getOperationState()?.status).toBe("InProgress");
    // All-null error objects were recorded on running jobs; they mean nothing.
    expect(poller.getOperationState()?.error).toBeUndefined();
    if (op.polls.length === 0) continue;

    const last = op.polls.at(-1)!;
    const outcome = await poller.pollUntilDone().then(
      (s) => s,
      (e: unknown) => e,
    );
    // Waits: the 202's Retry-After first, then the default interval (status answers carry none).
    const retryAfter = Number(op.start.headers["retry-after"]) * 1000;
    expect(waits).toEqual([retryAfter, ...Array(op.polls.length - 1).fill(DEFAULT_POLL_MS)]);
    if (last.status !== 200) {
      const recorded = JSON.parse(last.responseBody).error;
      expect(outcome).toBeInstanceOf(HsmJobFailedError);
      expect((outcome as HsmJobFailedError).code).toBe(recorded.code);
      expect((outcome as Error).message).toContain(recorded.message);
      continue;
    }
    const final = JSON.parse(last.responseBody);
    if (final.status === "Succeeded") {
      expect(outcome).toMatchObject({
        status: "Succeeded",
        jobId: final.jobId,
        endTime: new Date(final.endTime * 1000),
      });
      if (op.start.url.pathname === "/backup")
        expect((outcome as { folderUri?: string }).folderUri).toBe(final.azureStorageBlobContainerUri);
    } else {
      expect(outcome).toBeInstanceOf(HsmJobFailedError);
      expect((outcome as Error).message).toContain(final.statusDetails);
    }
  }
  expect(replay.remaining).toBe(0);
  return replay;
}

describe("ManagedHsmBackupClient against recorded real HSM sessions", () => {
  const files = recordingFiles();

  it("finds the recordings", () => {
    expect(files.length).toBe(21);
  });

  for (const file of files) {
    const entries = backupRestoreEntries(loadRecording(file));
    const origin = entries[0]!.url.origin;
    const ops = operations(entries);
    const rootFolderRestore = ops.find(
      (op) =>
        op.start.requestBody &&
        (op.start.requestBody as any).folderToRestore === "uri" &&
        (op.start.requestBody as any).sasTokenParameters.storageResourceUri === "https://uri.blob.core.windows.net",
    );

    if (rootFolderRestore) {
      it(`${file}: refuses a "folder" that is a bare container, sending nothing`, async () => {
        const { client, replay } = replayClient(entries, origin);
        await expect(begin(client, rootFolderRestore.start)).rejects.toThrow(/names no folder inside a container/);
        expect(replay.sent).toHaveLength(0);
      });
      continue;
    }

    if (!challengeMatchesHost(entries)) {
      // These 2020 recordings were made against a pre-production HSM: the sanitizer replaced the host
      // but not the challenge. As recorded, answering the challenge would send a token to a host
      // claiming another audience, so the client must refuse after the probe.
      it(`${file}: refuses a challenge whose resource does not match the host`, async () => {
        const { client, replay } = replayClient(entries, origin);
        await expect(begin(client, ops[0]!.start)).rejects.toThrow(/challenge resource/);
        expect(replay.sent).toHaveLength(1);
        expect(replay.sent[0]!.authorization).toBeUndefined();
      });
      it(`${file}: replays fully against the host the challenge names`, async () => {
        const challenge = entries.find((e) => e.status === 401)!.headers["www-authenticate"]!;
        const resourceHost = new URL(/resource="([^"]+)"/.exec(challenge)![1]!).hostname;
        await replayAll(entries, `https://recorded-hsm.${resourceHost}`);
      });
      continue;
    }

    it(`${file}: replays ${ops.length} operation(s), ${entries.length} calls`, async () => {
      const replay = await replayAll(entries, origin);
      // One challenge probe per client, before anything can start; no start call is ever sent twice.
      expect(replay.sent.filter((r) => r.authorization === undefined)).toHaveLength(1);
      const starts = replay.sent.filter((r) => r.method !== "GET" && r.authorization !== undefined);
      expect(starts).toHaveLength(ops.length);
    });
  }
});
