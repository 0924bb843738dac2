/**
 * The backup catalog: one Azure Table, partition "backup" for backups and "restore" for restores.
 * Row keys start with an inverted timestamp, so the service's natural key order is newest first
 * and a listing reads only the page it returns, never the whole history.
 */
import { randomBytes } from "node:crypto";
import { odata, RestError, type TableClient, type TableEntityResult } from "@azure/data-tables";
import { ProblemError } from "./problem.js";
import type { CopyStatus } from "./copy.js";
import type { Verification } from "./verify.js";
import { redactSecrets } from "./redact.js";

export const RECORD_STATUSES = [
  "Starting",
  "Running",
  "Succeeded",
  "Failed",
  "Canceled",
  "TimedOut",
  "Skipped",
  /** Terminal: prune deleted the backup's folder after the retention; the record stays as history. */
  "Pruned",
] as const;
export type RecordStatus = (typeof RECORD_STATUSES)[number];
/** A job may be running: the HSM is busy, and whoever reads a final status records it. */
export const ACTIVE_STATUSES: readonly RecordStatus[] = ["Starting", "Running"];
/**
 * Records a later status read may still change: the active ones, and TimedOut (the wait ended, the
 * job may not have). Reconcile reads these.
 */
export const UNSETTLED_STATUSES: readonly RecordStatus[] = ["Starting", "Running", "TimedOut"];

/** Ids are 13 digits of inverted epoch milliseconds, a hyphen and 8 random hex digits. */
export const RECORD_ID = /^\d{13}-[0-9a-f]{8}$/;
const MAX_EPOCH_MS = 9_999_999_999_999;
/** Start locks live beside the records; every listing filters by its own partition, so they never show. */
const LOCK_PARTITION = "lock";
/** Claimed schedule slots (one row per HSM and slot), beside the records too. */
const SLOT_PARTITION = "slot";

interface CommonRecord {
  readonly id: string;
  readonly hsmName: string;
  readonly hsmUrl: string;
  readonly status: RecordStatus;
  readonly jobId?: string;
  readonly startedAt: string;
  readonly endedAt?: string;
  readonly durationSeconds?: number;
  readonly statusDetails?: string;
  readonly errorCode?: string;
  readonly errorMessage?: string;
  /** When the app stops waiting for the job and records TimedOut. */
  readonly deadlineAt?: string;
  /** Set when a later truth replaced an outcome recorded without it (TimedOut, StartOutcomeUnknown). */
  readonly correctedAt?: string;
  /** What the corrected outcome said, e.g. "TimedOut JobTimeout". */
  readonly correctedFrom?: string;
  /** x-ms-request-id of the service answer behind a failure: what a support case with Microsoft needs. */
  readonly requestId?: string;
  /** x-ms-client-request-id the app sent with that call (known even when no answer came). */
  readonly clientRequestId?: string;
}

export interface BackupRecord extends CommonRecord {
  /** The folder the HSM wrote, once Succeeded. A plain URL: never a SAS. */
  readonly folderUri?: string;
  /** What started it: "timer", "cli", "http", "reconcile". */
  readonly trigger: string;
  /** An on-demand backup (trigger "http"): who asked, as for a restore. */
  readonly requestedBy?: string;
  /** "discovered": reconcile found the folder in the container without a record and the HSM's pre-restore check accepted it. */
  readonly origin?: "discovered";
  /** Skipped: the record of the job that was still running on the HSM. */
  readonly activeRecordId?: string;
  readonly activeJobId?: string;
  /** The schedule slot (ISO time) of the timer run that took it: one backup per HSM and slot. */
  readonly slot?: string;
  /** A Succeeded backup checked by the HSM's own pre-restore check right after it ended. */
  readonly verification?: Verification;
  readonly verifiedAt?: string;
  /** Why verification Failed (the HSM's message) or was Skipped. */
  readonly verificationMessage?: string;
  /** Immutable copy (BACKUP_COPY_CONTAINER): Copied, Failed or Skipped; absent when copies are off. */
  readonly copyStatus?: CopyStatus;
  /** The copy's folder in the copy container, a plain URL. */
  readonly copyFolderUri?: string;
  readonly copiedAt?: string;
  /** Why the copy Failed or was Skipped. */
  readonly copyMessage?: string;
  /** When prune deleted the folder (status Pruned). */
  readonly prunedAt?: string;
  /** What prune could not do to this record's folder (a refused delete), kept until a later run can. */
  readonly pruneNote?: string;
}

export interface RestoreRecord extends CommonRecord {
  readonly backupId: string;
  readonly folderUri: string;
  /** Set for a selective key restore; absent for a full restore. */
  readonly keyName?: string;
  /** Who asked: the App Service Authentication principal, "function key", or the CLI's signed-in identity / OS user. */
  readonly requestedBy?: string;
}

export type Kind = "backup" | "restore";
type RecordOf<K extends Kind> = K extends "backup" ? BackupRecord : RestoreRecord;
export type RecordPatch<K extends Kind> = Partial<Omit<RecordOf<K>, "id">>;

export interface Stored<T> {
  readonly record: T;
  readonly etag: string;
}

/** The start lock of one HSM, held by this worker until released or lost. */
export interface StartLock {
  /** Renews the lock; false when it was lost (taken over as stale): the holder must not go on. */
  renew(): Promise<boolean>;
  release(): Promise<void>;
}

export const VERIFICATIONS = ["Passed", "Failed", "Skipped"] as const satisfies readonly Verification[];

export interface ListQuery {
  readonly hsmName?: string;
  readonly status?: RecordStatus;
  readonly verification?: Verification;
  readonly top: number;
  readonly continuationToken?: string;
}

export interface Page<T> {
  readonly items: T[];
  readonly continuationToken?: string;
}

/** How many service pages one listing may read to find a non-empty page for a filtered query. */
const MAX_PAGES_PER_LIST = 5;

export class Catalog {
  constructor(private readonly table: TableClient) {}

  /**
   * Creates the table only when it is missing (locally Azurite starts empty). In Azure Bicep created
   * it, and the app's role is scoped to the table itself: reading is all this costs there.
   */
  async ensureTable(): Promise<void> {
    try {
      await this.table
        .listEntities({ queryOptions: { select: ["PartitionKey"] } })
        .byPage({ maxPageSize: 1 })
        .next();
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 404)) throw error;
      await this.table.createTable();
    }
  }

  static newId(now: Date): string {
    return `${String(MAX_EPOCH_MS - now.getTime()).padStart(13, "0")}-${randomBytes(4).toString("hex")}`;
  }

  /**
   * Inserts a new record. Idempotent: when a retried insert finds a row with this id (the SDK retried
   * after a lost answer, so the first attempt did land) and it holds what we wrote, it is ours.
   */
  async insert<K extends Kind>(kind: K, record: RecordOf<K>): Promise<Stored<RecordOf<K>>> {
    const clean = redacted(record);
    try {
      const response = await this.table.createEntity({ partitionKey: kind, rowKey: record.id, ...toEntity(clean) });
      return { record: clean, etag: etagOf(response, `the insert of ${kind} record ${record.id}`) };
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 409)) throw error;
      const existing = await this.get(kind, record.id);
      if (existing && sameFields(existing.record, clean)) return existing;
      throw error;
    }
  }

  /**
   * Merges a change into a record. Writes are conditional on the etag: when another worker changed
   * the record meanwhile, it is re-read; if that worker already recorded an outcome, its record
   * stands and is returned unchanged (two status reads racing must not flip an outcome).
   */
  async merge<K extends Kind>(
    kind: K,
    stored: Stored<RecordOf<K>>,
    patch: RecordPatch<K>,
    options: { correction?: boolean } = {},
  ): Promise<Stored<RecordOf<K>> & { applied: boolean }> {
    let current = stored;
    for (let attempt = 0; attempt < 5; attempt++) {
      // An outcome is written once. Only a correction (a later truth replacing an outcome recorded
      // without it) may change a record that is no longer active.
      if (!ACTIVE_STATUSES.includes(current.record.status) && !options.correction)
        return { ...current, applied: false };
      const updated = await this.tryUpdate(kind, current, patch, options.correction === true);
      if (updated) return { ...updated, applied: true };
      const reread = await this.get(kind, current.record.id);
      if (!reread) throw new Error(`Catalog ${kind} record ${current.record.id} vanished while it was being updated`);
      // A correction is decided on what the record said: when it changed meanwhile, the caller decides again.
      if (options.correction) return { ...reread, applied: false };
      current = reread;
    }
    throw new Error(`Catalog ${kind} record ${stored.record.id}: too many concurrent updates`);
  }

  /**
   * Merge for ordinary changes. A correction replaces the whole entity, so that a field the patch sets
   * to undefined (an error code that no longer holds) is removed rather than left behind.
   */
  private async tryUpdate<K extends Kind>(
    kind: K,
    stored: Stored<RecordOf<K>>,
    patch: RecordPatch<K>,
    replace: boolean,
  ): Promise<Stored<RecordOf<K>> | undefined> {
    const clean = redacted(patch);
    const next = { ...stored.record, ...clean } as RecordOf<K>;
    const written = replace ? next : clean;
    try {
      const response = await this.table.updateEntity(
        { partitionKey: kind, rowKey: stored.record.id, ...toEntity(written) },
        replace ? "Replace" : "Merge",
        { etag: stored.etag },
      );
      const record = Object.fromEntries(Object.entries(next).filter(([, v]) => v !== undefined)) as RecordOf<K>;
      return { record, etag: etagOf(response, `the update of ${kind} record ${stored.record.id}`) };
    } catch (error) {
      if (error instanceof RestError && error.statusCode === 412) return undefined;
      throw error;
    }
  }

  /**
   * Writes prune's change (status Pruned, or a note) over a settled backup: apart from a correction,
   * the only change a settled record takes. Conditional on the etag; when the record changed
   * meanwhile it is re-read and the change is made only if it is still the same settled backup.
   * @returns the stored record and whether the change was written.
   */
  async pruneUpdate(
    stored: Stored<BackupRecord>,
    patch: Pick<RecordPatch<"backup">, "status" | "prunedAt" | "pruneNote">,
  ): Promise<Stored<BackupRecord> & { applied: boolean }> {
    let current = stored;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (current.record.status !== stored.record.status || current.record.folderUri !== stored.record.folderUri)
        return { ...current, applied: false };
      const updated = await this.tryUpdate("backup", current, patch, false);
      if (updated) return { ...updated, applied: true };
      const reread = await this.get("backup", current.record.id);
      if (!reread) throw new Error(`Catalog backup record ${current.record.id} vanished while it was being updated`);
      current = reread;
    }
    throw new Error(`Catalog backup record ${stored.record.id}: too many concurrent updates`);
  }

  async get<K extends Kind>(kind: K, id: string): Promise<Stored<RecordOf<K>> | undefined> {
    if (!RECORD_ID.test(id)) return undefined;
    try {
      const entity = await this.table.getEntity<Record<string, unknown>>(kind, id);
      return { record: fromEntity(entity) as unknown as RecordOf<K>, etag: entity.etag };
    } catch (error) {
      if (error instanceof RestError && error.statusCode === 404) return undefined;
      throw error;
    }
  }

  /** Newest first; filters are built with the odata template, so values cannot change the query. */
  async list<K extends Kind>(kind: K, query: ListQuery): Promise<Page<RecordOf<K>>> {
    let filter = odata`PartitionKey eq ${kind}`;
    if (query.hsmName !== undefined) filter += ` and ${odata`hsmName eq ${query.hsmName}`}`;
    if (query.status !== undefined) filter += ` and ${odata`status eq ${query.status}`}`;
    if (query.verification !== undefined) filter += ` and ${odata`verification eq ${query.verification}`}`;
    let token = query.continuationToken;
    if (token !== undefined) assertContinuationToken(token);
    const pages = this.table
      .listEntities<Record<string, unknown>>({ queryOptions: { filter } })
      .byPage({ maxPageSize: query.top, ...(token !== undefined ? { continuationToken: token } : {}) });
    // A filtered query can return empty pages with a continuation; read on a little so callers
    // rarely see an empty page that is not the end.
    for (let read = 0; read < MAX_PAGES_PER_LIST; read++) {
      const next = await pages.next();
      if (next.done) return { items: [] };
      const page = next.value as TableEntityResult<Record<string, unknown>>[] & { continuationToken?: string };
      token = page.continuationToken;
      if (page.length > 0 || token === undefined) {
        return {
          items: page.map((e) => fromEntity(e) as unknown as RecordOf<K>),
          ...(token !== undefined ? { continuationToken: token } : {}),
        };
      }
    }
    return { items: [], ...(token !== undefined ? { continuationToken: token } : {}) };
  }

  /**
   * Takes the start lock of an HSM: a row in partition "lock" that only one writer can create. It
   * closes the window between "is the HSM idle?" and "record the new job" that two requests at once
   * would otherwise both pass. The holder renews it (etag-conditional) right before it records the
   * job, so a live holder never loses it; a lock not renewed for staleAfterMs was left by a worker
   * that died and is taken over (also etag-conditional, so only one taker wins).
   */
  async tryLock(name: string, now: () => Date, staleAfterMs: number): Promise<StartLock | undefined> {
    const rowKey = `hsm-${name}`;
    let etag: string;
    try {
      etag = etagOf(
        await this.table.createEntity({ partitionKey: LOCK_PARTITION, rowKey, takenAt: now().toISOString() }),
        `the start lock of HSM ${name}`,
      );
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 409)) throw error;
      try {
        const held = await this.table.getEntity<{ takenAt?: string }>(LOCK_PARTITION, rowKey);
        const age = now().getTime() - Date.parse(held.takenAt ?? "");
        if (age < staleAfterMs) return undefined;
        etag = etagOf(
          await this.table.updateEntity(
            { partitionKey: LOCK_PARTITION, rowKey, takenAt: now().toISOString() },
            "Replace",
            { etag: held.etag },
          ),
          `the start lock of HSM ${name}`,
        );
      } catch (inner) {
        // Released (404) or taken over by someone else (412) meanwhile: not ours this time.
        if (inner instanceof RestError && (inner.statusCode === 404 || inner.statusCode === 412)) return undefined;
        throw inner;
      }
    }
    const table = this.table;
    return {
      async renew() {
        try {
          etag = etagOf(
            await table.updateEntity(
              { partitionKey: LOCK_PARTITION, rowKey, takenAt: now().toISOString() },
              "Replace",
              { etag },
            ),
            `the start lock of HSM ${name}`,
          );
          return true;
        } catch (error) {
          if (error instanceof RestError && (error.statusCode === 404 || error.statusCode === 412)) return false;
          throw error;
        }
      },
      async release() {
        try {
          await table.deleteEntity(LOCK_PARTITION, rowKey, { etag });
        } catch (error) {
          // Gone, or taken over after it went stale: either way no longer ours to delete.
          if (!(error instanceof RestError && (error.statusCode === 404 || error.statusCode === 412))) throw error;
        }
      },
    };
  }

  /**
   * Claims an HSM's backup in one schedule slot. Only one writer can create the row, so a duplicate
   * timer invocation for the same slot learns it lost and starts nothing.
   */
  async claimSlot(hsmName: string, slot: Date, recordId: string): Promise<boolean> {
    const rowKey = `${hsmName}-${slot.toISOString().replace(/[-:.]/g, "")}`;
    try {
      await this.table.createEntity({ partitionKey: SLOT_PARTITION, rowKey, recordId });
      return true;
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 409)) throw error;
      // Our own first try may have landed with its answer lost: the row then names our record.
      const held = await this.table.getEntity<{ recordId?: string }>(SLOT_PARTITION, rowKey);
      return held.recordId === recordId;
    }
  }

  /**
   * Whether a backup record names this folder. Only records started within a day of `around` (the
   * folder's own time) are read: a row-key range, so the cost does not grow with the history.
   */
  async hasFolder(folderUri: string, around: Date): Promise<boolean> {
    const day = 86_400_000;
    const from = Catalog.newId(new Date(around.getTime() + day)).slice(0, 13);
    const to = Catalog.newId(new Date(around.getTime() - day)).slice(0, 13);
    const filter = odata`PartitionKey eq ${"backup"} and RowKey ge ${from} and RowKey lt ${`${to}~`} and folderUri eq ${folderUri}`;
    for await (const _found of this.table.listEntities({ queryOptions: { filter, select: ["RowKey"] } })) return true;
    return false;
  }

  /** Records of one HSM still Starting or Running (few: at most one job runs per HSM). */
  async active<K extends Kind>(kind: K, hsmName?: string): Promise<Stored<RecordOf<K>>[]> {
    return this.withStatus(kind, ACTIVE_STATUSES, hsmName);
  }

  /** Records a status read may still change (active, TimedOut): what reconcile settles. */
  async unsettled<K extends Kind>(kind: K, hsmName?: string): Promise<Stored<RecordOf<K>>[]> {
    return this.withStatus(kind, UNSETTLED_STATUSES, hsmName);
  }

  private async withStatus<K extends Kind>(
    kind: K,
    statuses: readonly RecordStatus[],
    hsmName?: string,
  ): Promise<Stored<RecordOf<K>>[]> {
    let filter = `${odata`PartitionKey eq ${kind}`} and (${statuses.map((status) => odata`status eq ${status}`).join(" or ")})`;
    if (hsmName !== undefined) filter += ` and ${odata`hsmName eq ${hsmName}`}`;
    const found: Stored<RecordOf<K>>[] = [];
    for await (const entity of this.table.listEntities<Record<string, unknown>>({ queryOptions: { filter } })) {
      found.push({ record: fromEntity(entity) as unknown as RecordOf<K>, etag: entity.etag });
    }
    return found;
  }
}

/**
 * A continuation token comes back from a client: it must have the shape this listing hands out. Its
 * keys are the service's opaque ones; the query's filter still pins the partition, so a crafted
 * token can only skip rows, never reach other records.
 */
function assertContinuationToken(token: string): void {
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(token, "base64").toString("utf8"));
  } catch {
    decoded = undefined;
  }
  const value = decoded as { nextPartitionKey?: unknown; nextRowKey?: unknown } | undefined;
  const valid =
    typeof value === "object" &&
    value !== null &&
    typeof value.nextPartitionKey === "string" &&
    value.nextPartitionKey !== "" &&
    (value.nextRowKey === undefined || typeof value.nextRowKey === "string");
  if (!valid)
    throw new ProblemError(
      400,
      "Invalid continuation token",
      "continuationToken is not a token returned by this listing.",
    );
}

/**
 * Error texts come from storage and the HSM: every string passes the redactor before it is stored,
 * and callers get back exactly what was stored.
 */
function redacted<T extends object>(record: T): T {
  return Object.fromEntries(
    Object.entries(record).map(([k, v]) => [k, typeof v === "string" ? redactSecrets(v) : v]),
  ) as T;
}

/**
 * The ETag of a write's answer, which the next conditional write is made on. Storage always sends one;
 * an answer without it is a strange answer, and the write that made it is reported as failed rather
 * than followed by unconditional ("*") writes that would let a racing worker's change be overwritten.
 */
function etagOf(answer: { etag?: string }, what: string): string {
  if (!answer.etag) throw new Error(`Catalog: storage answered ${what} without an ETag`);
  return answer.etag;
}

function sameFields(stored: object, written: object): boolean {
  const have = stored as Record<string, unknown>;
  return Object.entries(written).every(([key, value]) => value === undefined || have[key] === value);
}

function toEntity(record: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(record).filter(([key, value]) => key !== "id" && value !== undefined));
}

const SYSTEM_PROPERTIES = new Set(["partitionKey", "rowKey", "etag", "timestamp", "odata.metadata"]);

function fromEntity(entity: TableEntityResult<Record<string, unknown>>): Record<string, unknown> {
  const record: Record<string, unknown> = { id: entity.rowKey };
  for (const [key, value] of Object.entries(entity)) {
    if (!SYSTEM_PROPERTIES.has(key) && value !== null && value !== undefined) record[key] = value;
  }
  return record;
}
