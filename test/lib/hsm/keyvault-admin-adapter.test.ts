/**
 * The claim in src/lib/hsm/client.ts, made checkable: the app's operations depend on
 * HsmBackupOperations (src/lib/hsm/types.ts), and @azure/keyvault-admin's KeyVaultBackupClient could
 * serve them through the small adapter below — errors mapped to the app's own, a job resumed from its
 * id alone. @azure/keyvault-admin is not served by the registry this project can reach, so the client
 * here is a fake with its public shape (4.x: begin* return pollers whose toString() is
 * `{"state":{...}}` and which resume from that string through `resumeFrom`); the adapter is
 * type-checked against the app's interface and driven through it.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { RestError, createHttpHeaders, createPipelineRequest } from "@azure/core-rest-pipeline";
import { describe, expect, it } from "vitest";
import { HsmJobFailedError, HsmRequestError, HsmWaitDeadlineError } from "../../../src/lib/hsm/errors.js";
import type {
  BeginOptions,
  HsmBackupOperations,
  HsmOperation,
  HsmOperationState,
  OperationKind,
  OperationStatus,
  PollUntilDoneOptions,
} from "../../../src/lib/hsm/types.js";

// ---- The public shape of @azure/keyvault-admin's KeyVaultBackupClient that the adapter uses. ----

interface AdminPollerOptions {
  readonly abortSignal?: AbortSignal;
  readonly intervalInMs?: number;
  /** A serialized poller (`poller.toString()`), to resume an existing operation. */
  readonly resumeFrom?: string;
}

interface AdminState {
  readonly jobId?: string;
  readonly status?: string;
  readonly statusDetails?: string;
  readonly startTime?: Date;
  readonly endTime?: Date;
  readonly isStarted?: boolean;
  readonly isCompleted?: boolean;
  readonly error?: Error;
  readonly result?: { readonly folderUri?: string; readonly startTime?: Date; readonly endTime?: Date };
}

interface AdminPoller {
  poll(options?: { abortSignal?: AbortSignal }): Promise<void>;
  isDone(): boolean;
  getOperationState(): AdminState;
  toString(): string;
}

/** The overloads collapse to one signature here: a begin call without a token is the managed-identity form. */
interface KeyVaultBackupClientLike {
  readonly vaultUrl: string;
  beginBackup(
    blobStorageUri: string,
    sasTokenOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller>;
  beginRestore(
    folderUri: string,
    sasTokenOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller>;
  beginSelectiveKeyRestore(
    keyName: string,
    folderUri: string,
    sasTokenOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller>;
  beginPreBackup(
    blobStorageUri: string,
    sasTokenOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller>;
  beginPreRestore(
    folderUri: string,
    sasTokenOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller>;
}

// ---- The adapter. ----

class KeyVaultAdminOperations implements HsmBackupOperations {
  constructor(
    private readonly client: KeyVaultBackupClientLike,
    private readonly pollIntervalMs = 2000,
  ) {}

  beginBackup(uri: string, sasOrOptions?: string | BeginOptions, options?: BeginOptions): Promise<HsmOperation> {
    return this.begin("backup", sasOrOptions, options, (sas, admin) =>
      sas !== undefined ? this.client.beginBackup(uri, sas, admin) : this.client.beginBackup(uri, admin),
    );
  }

  beginRestore(folderUri: string, sasOrOptions?: string | BeginOptions, options?: BeginOptions): Promise<HsmOperation> {
    return this.begin("restore", sasOrOptions, options, (sas, admin) =>
      sas !== undefined ? this.client.beginRestore(folderUri, sas, admin) : this.client.beginRestore(folderUri, admin),
    );
  }

  beginSelectiveKeyRestore(
    keyName: string,
    folderUri: string,
    sasOrOptions?: string | BeginOptions,
    options?: BeginOptions,
  ): Promise<HsmOperation> {
    return this.begin("selectiveKeyRestore", sasOrOptions, options, (sas, admin) =>
      sas !== undefined
        ? this.client.beginSelectiveKeyRestore(keyName, folderUri, sas, admin)
        : this.client.beginSelectiveKeyRestore(keyName, folderUri, admin),
    );
  }

  beginPreBackup(uri: string, sasOrOptions?: string | BeginOptions, options?: BeginOptions): Promise<HsmOperation> {
    return this.begin("preBackup", sasOrOptions, options, (sas, admin) =>
      sas !== undefined ? this.client.beginPreBackup(uri, sas, admin) : this.client.beginPreBackup(uri, admin),
    );
  }

  beginPreRestore(
    folderUri: string,
    sasOrOptions?: string | BeginOptions,
    options?: BeginOptions,
  ): Promise<HsmOperation> {
    return this.begin("preRestore", sasOrOptions, options, (sas, admin) =>
      sas !== undefined
        ? this.client.beginPreRestore(folderUri, sas, admin)
        : this.client.beginPreRestore(folderUri, admin),
    );
  }

  async getOperationStatus(kind: OperationKind, jobId: string, options: BeginOptions = {}): Promise<HsmOperationState> {
    const operation = this.resumeOperation(kind, jobId) as AdminOperation;
    return operation.readOnce(options.abortSignal);
  }

  /**
   * keyvault-admin resumes from a serialized state: one that says "started, job <id>" makes the poller
   * read that job's status; the begin call's other arguments are not used again once it has started.
   */
  resumeOperation(kind: OperationKind, jobId: string): HsmOperation {
    const resumeFrom = JSON.stringify({ state: { jobId, isStarted: true } });
    const family =
      kind === "backup" || kind === "preBackup"
        ? this.client.beginBackup("", { resumeFrom })
        : this.client.beginRestore("", { resumeFrom });
    return new AdminOperation(kind, this.client.vaultUrl, jobId, family, this.pollIntervalMs);
  }

  private async begin(
    kind: OperationKind,
    sasOrOptions: string | BeginOptions | undefined,
    options: BeginOptions | undefined,
    start: (sas: string | undefined, admin: AdminPollerOptions) => Promise<AdminPoller>,
  ): Promise<HsmOperation> {
    const [sas, begin] =
      typeof sasOrOptions === "string" ? [sasOrOptions, options ?? {}] : [undefined, sasOrOptions ?? {}];
    let poller: AdminPoller;
    try {
      poller = await start(sas, {
        ...(begin.abortSignal ? { abortSignal: begin.abortSignal } : {}),
        intervalInMs: this.pollIntervalMs,
      });
    } catch (error) {
      throw mapError(`${kind} start`, this.client.vaultUrl, error);
    }
    const jobId = poller.getOperationState().jobId;
    if (!jobId)
      throw new HsmRequestError(
        `${kind} start`,
        this.client.vaultUrl,
        undefined,
        undefined,
        "keyvault-admin returned no job id",
        "unanswered",
      );
    return new AdminOperation(kind, this.client.vaultUrl, jobId, Promise.resolve(poller), this.pollIntervalMs);
  }
}

class AdminOperation implements HsmOperation {
  private state: HsmOperationState | undefined;
  constructor(
    readonly kind: OperationKind,
    private readonly vaultUrl: string,
    readonly jobId: string,
    private readonly poller: Promise<AdminPoller>,
    private readonly intervalMs: number,
  ) {}

  getOperationState(): HsmOperationState | undefined {
    return this.state;
  }

  async readOnce(signal?: AbortSignal): Promise<HsmOperationState> {
    const poller = await this.poller;
    try {
      await poller.poll(signal ? { abortSignal: signal } : {});
    } catch (error) {
      // A job that ended Failed rejects the poll, but its state says so: that is an answer, not an error.
      if (!/^(failed|canceled|cancelled)$/i.test(poller.getOperationState().status ?? ""))
        throw mapError(`${this.kind} status`, this.vaultUrl, error);
    }
    this.state = toState(this.kind, this.jobId, poller.getOperationState());
    return this.state;
  }

  async pollUntilDone(options: PollUntilDoneOptions = {}): Promise<HsmOperationState> {
    for (;;) {
      const state = await this.readOnce(options.abortSignal);
      options.onProgress?.(state);
      if (state.status === "Succeeded") return state;
      if (state.status !== "InProgress") throw new HsmJobFailedError(this.kind, this.vaultUrl, this.jobId, state);
      if (options.deadline && Date.now() + this.intervalMs > options.deadline.getTime()) {
        throw new HsmWaitDeadlineError(this.kind, this.vaultUrl, this.jobId, options.deadline, state, undefined);
      }
      await sleep(this.intervalMs, undefined, options.abortSignal ? { signal: options.abortSignal } : {});
    }
  }
}

const STATUS: Readonly<Record<string, OperationStatus>> = {
  inprogress: "InProgress",
  succeeded: "Succeeded",
  failed: "Failed",
  canceled: "Canceled",
  cancelled: "Canceled",
};

function toState(kind: OperationKind, jobId: string, admin: AdminState): HsmOperationState {
  const status = STATUS[(admin.status ?? "InProgress").toLowerCase()] ?? "InProgress";
  const folderUri = admin.result?.folderUri;
  return {
    kind,
    jobId,
    status,
    ...(admin.statusDetails ? { statusDetails: admin.statusDetails } : {}),
    ...(admin.error
      ? {
          error: {
            message: admin.error.message,
            ...((admin.error as { code?: string }).code ? { code: (admin.error as { code?: string }).code! } : {}),
          },
        }
      : {}),
    ...(admin.startTime ? { startTime: admin.startTime } : {}),
    ...(admin.endTime ? { endTime: admin.endTime } : {}),
    ...(folderUri ? { folderUri } : {}),
  };
}

/** A RestError (the service answered, or the request failed on the way) becomes the app's HsmRequestError, ids included. */
function mapError(operation: string, vaultUrl: string, error: unknown): unknown {
  if (!(error instanceof RestError)) return error;
  const ids = {
    ...(error.response?.headers.get("x-ms-request-id")
      ? { requestId: error.response.headers.get("x-ms-request-id")! }
      : {}),
    ...(error.request?.requestId ? { clientRequestId: error.request.requestId } : {}),
  };
  return error.statusCode !== undefined
    ? new HsmRequestError(operation, vaultUrl, error.statusCode, error.code, error.message, "answered", ids)
    : new HsmRequestError(operation, vaultUrl, undefined, undefined, error.message, "unanswered", ids);
}

// ---- A fake with keyvault-admin's shape: jobs in memory, pollers that serialize and resume. ----

class FakeKeyVaultBackupClient implements KeyVaultBackupClientLike {
  readonly vaultUrl = "https://contoso.managedhsm.azure.net";
  readonly jobs = new Map<string, { reads: number; failWith?: string; folderUri?: string }>();
  readonly calls: { method: string; args: unknown[] }[] = [];
  refuseNextStart: RestError | undefined;
  private next = 1;

  beginBackup(
    uri: string,
    sasOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller> {
    return this.begin("beginBackup", [uri, sasOrOptions, options], `${uri}/mhsm-contoso-2026120102000012`);
  }
  beginRestore(
    folderUri: string,
    sasOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller> {
    return this.begin("beginRestore", [folderUri, sasOrOptions, options]);
  }
  beginSelectiveKeyRestore(
    keyName: string,
    folderUri: string,
    sasOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller> {
    return this.begin("beginSelectiveKeyRestore", [keyName, folderUri, sasOrOptions, options]);
  }
  beginPreBackup(
    uri: string,
    sasOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller> {
    return this.begin("beginPreBackup", [uri, sasOrOptions, options]);
  }
  beginPreRestore(
    folderUri: string,
    sasOrOptions?: string | AdminPollerOptions,
    options?: AdminPollerOptions,
  ): Promise<AdminPoller> {
    return this.begin("beginPreRestore", [folderUri, sasOrOptions, options]);
  }

  private async begin(method: string, args: unknown[], folderUri?: string): Promise<AdminPoller> {
    this.calls.push({ method, args });
    const options = ([...args].reverse().find((a) => typeof a === "object" && a !== null) ?? {}) as AdminPollerOptions;
    if (options.resumeFrom)
      return this.poller((JSON.parse(options.resumeFrom) as { state: { jobId: string } }).state.jobId);
    if (this.refuseNextStart) {
      const error = this.refuseNextStart;
      this.refuseNextStart = undefined;
      throw error;
    }
    const jobId = `${this.next++}`.padStart(32, "0");
    this.jobs.set(jobId, { reads: 0, ...(folderUri ? { folderUri } : {}) });
    return this.poller(jobId);
  }

  private poller(jobId: string): AdminPoller {
    const jobs = this.jobs;
    let state: AdminState = { jobId, status: "InProgress", isStarted: true };
    return {
      async poll() {
        const job = jobs.get(jobId);
        if (!job) throw new RestError(`Job ${jobId} not found`, { statusCode: 404, code: "JobNotFound" });
        job.reads++;
        if (job.reads < 2) return;
        if (job.failWith) {
          state = {
            ...state,
            status: "Failed",
            isCompleted: true,
            statusDetails: job.failWith,
            error: Object.assign(new Error(job.failWith), { code: "StorageUnavailable" }),
          };
          throw state.error;
        }
        state = {
          ...state,
          status: "Succeeded",
          isCompleted: true,
          endTime: new Date(),
          ...(job.folderUri ? { result: { folderUri: job.folderUri } } : {}),
        };
      },
      isDone: () => state.isCompleted === true,
      getOperationState: () => state,
      toString: () => JSON.stringify({ state }),
    };
  }
}

describe("HsmBackupOperations over a KeyVaultBackupClient-shaped client", () => {
  const container = "https://stbak.blob.core.windows.net/mhsm-backups";

  it("backs up through the adapter: a job id, progress, the folder of a Succeeded job", async () => {
    const fake = new FakeKeyVaultBackupClient();
    const operations: HsmBackupOperations = new KeyVaultAdminOperations(fake, 1);
    const job = await operations.beginBackup(container, "sv=2025-11-05&sig=abc");
    expect(job.jobId).toMatch(/^0{31}1$/);
    expect(fake.calls[0]).toMatchObject({
      method: "beginBackup",
      args: [container, "sv=2025-11-05&sig=abc", { intervalInMs: 1 }],
    });
    const seen: string[] = [];
    const final = await job.pollUntilDone({ onProgress: (s) => seen.push(s.status) });
    expect(seen).toEqual(["InProgress", "Succeeded"]);
    expect(final).toMatchObject({
      kind: "backup",
      jobId: job.jobId,
      status: "Succeeded",
      folderUri: `${container}/mhsm-contoso-2026120102000012`,
    });

    // Without a token: the managed-identity overload.
    await operations.beginBackup(container);
    expect(fake.calls[1]!.args).toEqual([container, { intervalInMs: 1 }, undefined]);
  });

  it("maps a refused start (RestError) to HsmRequestError with the request ids, and a Failed job to HsmJobFailedError", async () => {
    const fake = new FakeKeyVaultBackupClient();
    const operations = new KeyVaultAdminOperations(fake, 1);
    const request = createPipelineRequest({ url: `${fake.vaultUrl}/restore` });
    fake.refuseNextStart = new RestError("Another operation is running", {
      statusCode: 409,
      code: "Conflict",
      request,
      response: {
        status: 409,
        headers: createHttpHeaders({ "x-ms-request-id": "11111111-2222-3333-4444-555555555555" }),
        request,
      },
    });
    const refused = await operations.beginRestore(`${container}/mhsm-contoso-1`, "sig=x").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(HsmRequestError);
    expect(refused).toMatchObject({
      statusCode: 409,
      code: "Conflict",
      delivery: "answered",
      requestId: "11111111-2222-3333-4444-555555555555",
      clientRequestId: request.requestId,
    });

    const job = await operations.beginSelectiveKeyRestore("k1", `${container}/mhsm-contoso-1`);
    fake.jobs.get(job.jobId)!.failWith = "the key is not in the backup";
    const failed = await job.pollUntilDone().catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(HsmJobFailedError);
    expect(failed).toMatchObject({
      kind: "selectiveKeyRestore",
      jobId: job.jobId,
      status: "Failed",
      code: "StorageUnavailable",
    });
  });

  it("resumes from a job id alone (a recycled worker), reads one status without waiting, and honours a deadline", async () => {
    const fake = new FakeKeyVaultBackupClient();
    const started = await new KeyVaultAdminOperations(fake, 1).beginBackup(container, "sig=x");

    const elsewhere = new KeyVaultAdminOperations(fake, 1);
    expect(await elsewhere.getOperationStatus("backup", started.jobId)).toMatchObject({
      jobId: started.jobId,
      status: "InProgress",
    });
    expect(JSON.parse((fake.calls.at(-1)!.args[1] as AdminPollerOptions).resumeFrom!)).toEqual({
      state: { jobId: started.jobId, isStarted: true },
    });
    expect(await elsewhere.resumeOperation("backup", started.jobId).pollUntilDone()).toMatchObject({
      status: "Succeeded",
    });

    const slow = new KeyVaultAdminOperations(fake, 60_000);
    const another = await slow.beginBackup(container, "sig=x");
    await expect(another.pollUntilDone({ deadline: new Date(Date.now() + 10) })).rejects.toBeInstanceOf(
      HsmWaitDeadlineError,
    );

    const unknown = await elsewhere.getOperationStatus("restore", "f".repeat(32)).catch((e: unknown) => e);
    expect(unknown).toMatchObject({ name: "HsmRequestError", statusCode: 404, code: "JobNotFound" });
  });
});
