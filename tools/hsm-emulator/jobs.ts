import { randomBytes, randomInt } from "node:crypto";
import type { ContainerClient } from "@azure/storage-blob";
import { HsmHttpError, toError, type KeyVaultErrorDetail } from "./errors.js";
import type { KeyStore } from "./keys.js";
import type { RoleStore } from "./rbac.js";
import {
  InvalidBackup,
  KeyNotInBackup,
  StorageFailure,
  joinBlobPath,
  probeWriteAccess,
  readBackup,
  redact,
  writeBackup,
  type StorageTarget,
} from "./storage.js";

export type JobKind = "backup" | "prebackup" | "restore" | "prerestore" | "selectiveKeyRestore";
export type JobFamily = "backup" | "restore";
/**
 * Which job an injected failure takes: "backup" the next full backup only (not a pre-backup, which an
 * app now runs before every backup), "prebackup" the next pre-backup only, "restore" the next job of
 * the restore family (full, selective or pre-restore), "any" the next job.
 */
export type FaultTarget = "backup" | "prebackup" | "restore" | "any";

const FAULT_TAKES: Record<FaultTarget, (job: Job) => boolean> = {
  backup: (job) => job.kind === "backup",
  prebackup: (job) => job.kind === "prebackup",
  restore: (job) => job.family === "restore",
  any: () => true,
};
export type OperationStatus = "InProgress" | "Succeeded" | "Failed";

/**
 * The error object of a failed job as the real service has sent it: a filled KeyVault error, or — the
 * only recorded failed job (restore of an invalid folder, 2021) — an object whose fields are all null.
 */
export type JobError = KeyVaultErrorDetail | { code: null; message: null; innererror: null };

/** One job as the emulator's job log reports it: the emulator's own view, for tests that watch it work. */
export interface JobLogEntry {
  readonly jobId: string;
  readonly kind: "backup" | "restore" | "selectiveKeyRestore" | "preBackup" | "preRestore";
  /** "Canceled" is part of the service's enum; the emulator never cancels a job. */
  readonly status: OperationStatus | "Canceled";
  readonly folderUri?: string;
  readonly startTime: Date;
  readonly endTime?: Date;
  /** Why it failed, also where the wire shows an all-null error (then e.g. "InvalidBackup"). */
  readonly errorCode?: string;
}

const LOG_KIND: Record<JobKind, JobLogEntry["kind"]> = {
  backup: "backup",
  prebackup: "preBackup",
  restore: "restore",
  prerestore: "preRestore",
  selectiveKeyRestore: "selectiveKeyRestore",
};

export type StorageAccess =
  | { readonly kind: "sas"; readonly target: StorageTarget; readonly token: string }
  | { readonly kind: "managedIdentity"; readonly target: StorageTarget };

/** Pre-operations have no required body fields (spec 7.6): what is missing makes the job fail, not the call. */
export interface MissingParameter {
  readonly kind: "missing";
  readonly detail: string;
}

export type JobRequest =
  | { readonly kind: "backup"; readonly access: StorageAccess }
  | { readonly kind: "prebackup"; readonly access: StorageAccess | MissingParameter }
  | { readonly kind: "restore"; readonly access: StorageAccess; readonly folder: string }
  | {
      readonly kind: "prerestore";
      readonly access: StorageAccess | MissingParameter;
      readonly folder: string | undefined;
    }
  | {
      readonly kind: "selectiveKeyRestore";
      readonly access: StorageAccess;
      readonly folder: string;
      readonly keyName: string;
    };

/** Status body of backup-family jobs (`GET /backup/{jobId}/pending`). */
export interface FullBackupOperation {
  status: OperationStatus;
  statusDetails: string | null;
  error: JobError | null;
  startTime: number;
  endTime: number | null;
  jobId: string;
  azureStorageBlobContainerUri: string | null;
}

/** Status body of restore-family jobs (`GET /restore/{jobId}/pending`), selective key restore included. */
export interface RestoreOperation {
  status: OperationStatus;
  statusDetails: string | null;
  error: JobError | null;
  jobId: string;
  startTime: number;
  endTime: number | null;
}

export interface InjectedJobError {
  code: string;
  message: string;
}

export interface Job {
  readonly id: string;
  readonly kind: JobKind;
  readonly family: JobFamily;
  status: OperationStatus;
  statusDetails: string | null;
  error: JobError | null;
  folderUri: string | null;
  /** Millisecond times: the wire shows them as Unix seconds (unixSeconds), the job log as Dates. */
  readonly startedAt: Date;
  endedAt: Date | undefined;
  /** Why it failed, for the job log, also where the wire shows an all-null error. */
  failureCode: string | undefined;
}

/** A job failure with a known cause: its message becomes statusDetails and error.message. */
export class JobFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "JobFailure";
  }
}

export interface JobManagerDeps {
  readonly hsmName: string;
  readonly keys: KeyStore;
  readonly roles: RoleStore;
  /** Builds the storage client for a job; throws JobFailure when the HSM cannot reach storage that way. */
  storageClient(access: StorageAccess): ContainerClient;
  log(line: string): void;
  /**
   * The clock of job times and folder names (epoch ms); default Date.now. How long a job runs is
   * always real time: a test that moves the app's clock moves this one with it.
   */
  readonly now?: () => number;
}

type Outcome =
  | { readonly ok: true; readonly folderUri?: string; readonly finish?: () => string | null }
  | { readonly ok: false; readonly statusDetails: string; readonly error: JobError; readonly code: string };

const FAMILY: Record<JobKind, JobFamily> = {
  backup: "backup",
  prebackup: "backup",
  restore: "restore",
  prerestore: "restore",
  selectiveKeyRestore: "restore",
};

/** The wire's `unixtime` format (spec: integer seconds). */
function unixSeconds(date: Date): number {
  return Math.floor(date.getTime() / 1000);
}

/** `yyyyMMddHHmmss` in UTC, the documented part of the folder name. */
function folderTimestamp(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:T]/g, "").slice(0, 14);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0 || signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Runs backup/restore jobs one at a time, as the real HSM does ("only one concurrent backup or restore
 * operation per HSM instance"). Storage work happens right away; the job then stays InProgress until
 * its minimum duration has passed, and only then does a restore change the HSM's state — so a test can
 * observe the running job, the restore mode and the conflict deterministically.
 */
export class JobManager {
  private readonly jobs = new Map<string, Job>();
  private readonly faults: { kind: FaultTarget; error: InjectedJobError }[] = [];
  private readonly usedFolders = new Set<string>();
  private readonly stopping = new AbortController();
  private readonly pending = new Set<Promise<void>>();
  private running: Job | undefined;
  /** Durations for one kind of job, over durationMs (e.g. a slow backup after a quick pre-backup). */
  private readonly durationByKind = new Map<JobKind, number>();

  constructor(
    private readonly deps: JobManagerDeps,
    private durationMs: number,
  ) {}

  private now(): number {
    return this.deps.now?.() ?? Date.now();
  }

  setDurationMs(ms: number, kind?: JobKind): void {
    if (!Number.isFinite(ms) || ms < 0)
      throw new Error(`Job duration must be a non-negative number of milliseconds, got ${ms}.`);
    if (kind !== undefined) this.durationByKind.set(kind, ms);
    else {
      this.durationMs = ms;
      this.durationByKind.clear();
    }
  }

  failNext(kind: FaultTarget, error: InjectedJobError): void {
    this.faults.push({ kind, error });
  }

  /** The full restore that currently holds the HSM in restore mode, if any. */
  restoreInProgress(): Job | undefined {
    return this.running?.kind === "restore" ? this.running : undefined;
  }

  /** Every job ever started, in start order (Map keeps insertion order), as detached copies. */
  log(): JobLogEntry[] {
    return [...this.jobs.values()].map((job) => ({
      jobId: job.id,
      kind: LOG_KIND[job.kind],
      status: job.status,
      ...(job.folderUri !== null ? { folderUri: job.folderUri } : {}),
      startTime: new Date(job.startedAt),
      ...(job.endedAt ? { endTime: new Date(job.endedAt) } : {}),
      ...(job.failureCode !== undefined ? { errorCode: job.failureCode } : {}),
    }));
  }

  find(family: JobFamily, id: string): Job | undefined {
    const job = this.jobs.get(id.toLowerCase());
    return job?.family === family ? job : undefined;
  }

  /**
   * Starts a job or refuses with 409 while another runs. The real status and error code for this case
   * are not established (facts doc §12); 409 Conflict is what a client can tell apart from throttling
   * (429/503) and from bad input (400), and it is what clients in azure-sdk-for-python#47742 reported.
   */
  start(request: JobRequest): Job {
    if (this.stopping.signal.aborted)
      throw new HsmHttpError(503, "ServiceUnavailable", "The HSM emulator is stopping.");
    if (this.running) {
      throw new HsmHttpError(
        409,
        "Conflict",
        `Conflict: another backup or restore operation is in progress on this managed HSM (job ${this.running.id}, ${this.running.kind}); only one can run at a time. Retry after it completes.`,
      );
    }
    const startedAtMs = this.now();
    const job: Job = {
      id: randomBytes(16).toString("hex"),
      kind: request.kind,
      family: FAMILY[request.kind],
      status: "InProgress",
      statusDetails: null,
      error: null,
      folderUri: null,
      startedAt: new Date(startedAtMs),
      endedAt: undefined,
      failureCode: undefined,
    };
    this.jobs.set(job.id, job);
    this.running = job;
    // The backup holds the state at the time the call was received, like the folder timestamp says.
    const snapshot =
      request.kind === "backup"
        ? { keys: this.deps.keys.snapshot(), roleAssignments: this.deps.roles.snapshot() }
        : undefined;
    const minimumEnd = Date.now() + (this.durationByKind.get(request.kind) ?? this.durationMs);
    const fault = this.takeFault(job);
    const secrets = "access" in request && request.access.kind === "sas" ? [request.access.token] : [];
    this.deps.log(`job ${job.id} (${job.kind}) started`);
    const run = this.run(job, minimumEnd, secrets, async (signal) => {
      if (fault) throw new JobFailure(fault.code, fault.message);
      return this.execute(job, request, startedAtMs, snapshot, signal);
    });
    this.pending.add(run);
    void run.finally(() => this.pending.delete(run));
    return job;
  }

  render(job: Job): FullBackupOperation | RestoreOperation {
    const common = {
      status: job.status,
      statusDetails: job.statusDetails,
      error: job.error,
      startTime: unixSeconds(job.startedAt),
      endTime: job.endedAt ? unixSeconds(job.endedAt) : null,
    };
    if (job.family === "backup") {
      return {
        ...common,
        jobId: job.id,
        // Pre-backup never reports a folder (spec example; Azure/azure-sdk-for-net#49060).
        azureStorageBlobContainerUri: job.kind === "backup" ? job.folderUri : null,
      };
    }
    return { ...common, jobId: job.id };
  }

  /** Wakes every waiting job, lets it end as Failed, and waits for all of them. */
  async stop(): Promise<void> {
    this.stopping.abort();
    await Promise.allSettled([...this.pending]);
  }

  private takeFault(job: Job): InjectedJobError | undefined {
    const index = this.faults.findIndex((fault) => FAULT_TAKES[fault.kind](job));
    if (index < 0) return undefined;
    return this.faults.splice(index, 1)[0]?.error;
  }

  private async run(
    job: Job,
    minimumEnd: number,
    secrets: string[],
    work: (signal: AbortSignal) => Promise<Outcome>,
  ): Promise<void> {
    const signal = this.stopping.signal;
    let outcome: Outcome;
    try {
      outcome = await work(signal);
    } catch (error) {
      outcome = this.failure(error, secrets);
    }
    await sleep(minimumEnd - Date.now(), signal);
    if (signal.aborted) {
      outcome = this.failure(
        new JobFailure("ServiceUnavailable", "The HSM emulator was stopped while the job was running."),
        secrets,
      );
    }
    if (outcome.ok) {
      try {
        job.statusDetails = outcome.finish?.() ?? null;
        job.folderUri = outcome.folderUri ?? null;
        job.status = "Succeeded";
      } catch (error) {
        outcome = this.failure(error, secrets);
      }
    }
    if (!outcome.ok) {
      job.status = "Failed";
      job.statusDetails = outcome.statusDetails;
      job.error = outcome.error;
      job.failureCode = outcome.code;
    }
    job.endedAt = new Date(this.now());
    this.running = undefined;
    this.deps.log(`job ${job.id} (${job.kind}) ${job.status}${job.statusDetails ? `: ${job.statusDetails}` : ""}`);
  }

  /** Every message passes through redact(): a status body must never carry the SAS or a `sig=`. */
  private failure(error: unknown, secrets: string[]): Outcome {
    const clean = (text: string) => redact(text, secrets);
    const fail = (statusDetails: string, code: string, message: string): Outcome => ({
      ok: false,
      statusDetails: clean(statusDetails),
      error: { code, message: clean(message), innererror: null },
      code,
    });
    if (error instanceof InvalidBackup) {
      // Exactly what a real HSM answered for a bad folder (recorded 2021): only statusDetails, and an
      // error object whose fields are all null. The emulator's detail goes to its log, not the wire.
      this.deps.log(`invalid backup: ${clean(error.message)}`);
      return {
        ok: false,
        statusDetails: "Invalid backup provided",
        error: { code: null, message: null, innererror: null },
        code: "InvalidBackup",
      };
    }
    if (error instanceof StorageFailure || error instanceof JobFailure)
      return fail(error.message, error.code, error.message);
    if (error instanceof KeyNotInBackup) return fail(error.message, "KeyNotFound", error.message);
    const message = `The HSM emulator failed unexpectedly: ${toError(error).message}`;
    return fail(message, "InternalError", message);
  }

  private storage(access: StorageAccess | MissingParameter): { client: ContainerClient; target: StorageTarget } {
    if (access.kind === "missing") throw new JobFailure("BadParameter", access.detail);
    return { client: this.deps.storageClient(access), target: access.target };
  }

  private async execute(
    job: Job,
    request: JobRequest,
    startedAtMs: number,
    snapshot:
      { keys: ReturnType<KeyStore["snapshot"]>; roleAssignments: ReturnType<RoleStore["snapshot"]> } | undefined,
    signal: AbortSignal,
  ): Promise<Outcome> {
    switch (request.kind) {
      case "backup": {
        const { client, target } = this.storage(request.access);
        const folderName = this.newFolderName(startedAtMs);
        await writeBackup(
          client,
          joinBlobPath(target.prefix, folderName),
          { hsmName: this.deps.hsmName, jobId: job.id, startTime: unixSeconds(job.startedAt) },
          snapshot ?? { keys: [], roleAssignments: [] },
          signal,
        );
        return { ok: true, folderUri: `${target.display}/${folderName}` };
      }
      case "prebackup": {
        const { client, target } = this.storage(request.access);
        await probeWriteAccess(client, target.prefix, `mhsm-${this.deps.hsmName}-prebackup-${job.id}.probe`, signal);
        return { ok: true };
      }
      case "restore": {
        const { client, target } = this.storage(request.access);
        const { content } = await readBackup(
          client,
          joinBlobPath(target.prefix, request.folder),
          { kind: "all" },
          signal,
        );
        return {
          ok: true,
          finish: () => {
            this.deps.keys.replaceAll(content.keys);
            this.deps.roles.replaceAll(content.roleAssignments);
            return null;
          },
        };
      }
      case "prerestore": {
        const { client, target } = this.storage(request.access);
        if (request.folder === undefined)
          throw new JobFailure("BadParameter", "Pre-restore check failed: folderToRestore was not provided.");
        await readBackup(client, joinBlobPath(target.prefix, request.folder), { kind: "manifest" }, signal);
        return { ok: true };
      }
      case "selectiveKeyRestore": {
        const { client, target } = this.storage(request.access);
        const { content } = await readBackup(
          client,
          joinBlobPath(target.prefix, request.folder),
          { kind: "key", name: request.keyName },
          signal,
        );
        const record = content.keys[0];
        if (!record) throw new KeyNotInBackup(request.keyName, request.folder);
        return {
          ok: true,
          // Decided when the job ends, against the key state at that moment. A live or soft-deleted
          // key is never overwritten (recorded real statusDetails wording).
          finish: () => {
            const versions = record.versions.length;
            if (this.deps.keys.exists(record.name)) {
              return `Number of successful key versions restored: 0, Number of key versions could not overwrite: ${versions}`;
            }
            this.deps.keys.restore(record);
            return `Number of successful key versions restored: ${versions}, Number of key versions could not overwrite: 0`;
          },
        };
      }
    }
  }

  /**
   * `mhsm-<name>-<yyyyMMddHHmmss><2 digits>`. The digits are re-drawn if this emulator already used the
   * name; should a second's 100 names run out, 3 digits follow (the spec example has 3).
   */
  private newFolderName(startedAtMs: number): string {
    for (let attempt = 0; ; attempt++) {
      const digits = attempt < 200 ? String(randomInt(100)).padStart(2, "0") : String(randomInt(1000)).padStart(3, "0");
      const name = `mhsm-${this.deps.hsmName}-${folderTimestamp(startedAtMs)}${digits}`;
      if (!this.usedFolders.has(name)) {
        this.usedFolders.add(name);
        return name;
      }
    }
  }
}
