/**
 * The backup catalog: one Azure Table, partition "backup" for backups and "restore" for restores.
 * Row keys start with an inverted timestamp, so the service's natural key order is newest first
 * and a listing reads only the page it returns, never the whole history.
 */
import { randomBytes } from "node:crypto";
import { odata, RestError, type TableClient, type TableEntityResult } from "@azure/data-tables";
import { ProblemError } from "./problem.js";
import { redactSecrets } from "./redact.js";

export const RECORD_STATUSES = ["Starting", "Running", "Succeeded", "Failed", "Canceled"] as const;
export type RecordStatus = (typeof RECORD_STATUSES)[number];
export const ACTIVE_STATUSES: readonly RecordStatus[] = ["Starting", "Running"];

/** Ids are 13 digits of inverted epoch milliseconds, a hyphen and 8 random hex digits. */
export const RECORD_ID = /^\d{13}-[0-9a-f]{8}$/;
const MAX_EPOCH_MS = 9_999_999_999_999;
/** Start locks live beside the records; every listing filters by its own partition, so they never show. */
const LOCK_PARTITION = "lock";

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
}

export interface BackupRecord extends CommonRecord {
  /** The folder the HSM wrote, once Succeeded. A plain URL: never a SAS. */
  readonly folderUri?: string;
  /** What started it: "timer", "cli". */
  readonly trigger: string;
}

export interface RestoreRecord extends CommonRecord {
  readonly backupId: string;
  readonly folderUri: string;
  /** Set for a selective key restore; absent for a full restore. */
  readonly keyName?: string;
}

export type Kind = "backup" | "restore";
type RecordOf<K extends Kind> = K extends "backup" ? BackupRecord : RestoreRecord;
export type RecordPatch<K extends Kind> = Partial<Omit<RecordOf<K>, "id">>;

export interface Stored<T> {
  readonly record: T;
  readonly etag: string;
}

export interface ListQuery {
  readonly hsmName?: string;
  readonly status?: RecordStatus;
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
      await this.table.listEntities({ queryOptions: { select: ["PartitionKey"] } }).byPage({ maxPageSize: 1 }).next();
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 404)) throw error;
      await this.table.createTable();
    }
  }

  static newId(now: Date): string {
    return `${String(MAX_EPOCH_MS - now.getTime()).padStart(13, "0")}-${randomBytes(4).toString("hex")}`;
  }

  async insert<K extends Kind>(kind: K, record: RecordOf<K>): Promise<Stored<RecordOf<K>>> {
    const clean = redacted(record);
    const response = await this.table.createEntity({ partitionKey: kind, rowKey: record.id, ...toEntity(clean) });
    return { record: clean, etag: response.etag ?? "*" };
  }

  /**
   * Merges a change into a record. Writes are conditional on the etag: when another worker changed
   * the record meanwhile, it is re-read; if that worker already recorded an outcome, its record
   * stands and is returned unchanged (two status reads racing must not flip an outcome).
   */
  async merge<K extends Kind>(kind: K, stored: Stored<RecordOf<K>>, patch: RecordPatch<K>): Promise<Stored<RecordOf<K>> & { applied: boolean }> {
    let current = stored;
    for (let attempt = 0; attempt < 5; attempt++) {
      const updated = await this.tryUpdate(kind, current, patch);
      if (updated) return { ...updated, applied: true };
      const reread = await this.get(kind, current.record.id);
      if (!reread) throw new Error(`Catalog ${kind} record ${current.record.id} vanished while it was being updated`);
      if (!ACTIVE_STATUSES.includes(reread.record.status)) return { ...reread, applied: false };
      current = reread;
    }
    throw new Error(`Catalog ${kind} record ${stored.record.id}: too many concurrent updates`);
  }

  private async tryUpdate<K extends Kind>(kind: K, stored: Stored<RecordOf<K>>, patch: RecordPatch<K>): Promise<Stored<RecordOf<K>> | undefined> {
    const clean = redacted(patch);
    try {
      const response = await this.table.updateEntity(
        { partitionKey: kind, rowKey: stored.record.id, ...toEntity(clean) }, "Merge", { etag: stored.etag });
      return { record: { ...stored.record, ...clean }, etag: response.etag ?? "*" };
    } catch (error) {
      if (error instanceof RestError && error.statusCode === 412) return undefined;
      throw error;
    }
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
        return { items: page.map((e) => fromEntity(e) as unknown as RecordOf<K>), ...(token !== undefined ? { continuationToken: token } : {}) };
      }
    }
    return { items: [], ...(token !== undefined ? { continuationToken: token } : {}) };
  }

  /**
   * Takes the start lock of an HSM: a row in partition "lock" that only one writer can create. It
   * closes the window between "is the HSM idle?" and "record the new job" that two requests at once
   * would otherwise both pass. A lock older than staleAfterMs was left by a worker that died and is
   * taken over (etag-conditional, so only one taker wins).
   */
  async tryLock(name: string, now: Date, staleAfterMs: number): Promise<boolean> {
    const rowKey = `hsm-${name}`;
    try {
      await this.table.createEntity({ partitionKey: LOCK_PARTITION, rowKey, takenAt: now.toISOString() });
      return true;
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 409)) throw error;
    }
    try {
      const held = await this.table.getEntity<{ takenAt?: string }>(LOCK_PARTITION, rowKey);
      if (now.getTime() - Date.parse(held.takenAt ?? "") < staleAfterMs) return false;
      await this.table.updateEntity({ partitionKey: LOCK_PARTITION, rowKey, takenAt: now.toISOString() }, "Replace", { etag: held.etag });
      return true;
    } catch (error) {
      // Released (404) or taken over by someone else (412) meanwhile: not ours this time.
      if (error instanceof RestError && (error.statusCode === 404 || error.statusCode === 412)) return false;
      throw error;
    }
  }

  async unlock(name: string): Promise<void> {
    try {
      await this.table.deleteEntity(LOCK_PARTITION, `hsm-${name}`);
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 404)) throw error;
    }
  }

  /** Records of one HSM still Starting or Running (few: at most one job runs per HSM). */
  async active<K extends Kind>(kind: K, hsmName?: string): Promise<Stored<RecordOf<K>>[]> {
    let filter = odata`PartitionKey eq ${kind} and (status eq ${"Starting"} or status eq ${"Running"})`;
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
  const valid = typeof value === "object" && value !== null
    && typeof value.nextPartitionKey === "string" && value.nextPartitionKey !== ""
    && (value.nextRowKey === undefined || typeof value.nextRowKey === "string");
  if (!valid) throw new ProblemError(400, "Invalid continuation token", "continuationToken is not a token returned by this listing.");
}

/**
 * Error texts come from storage and the HSM: every string passes the redactor before it is stored,
 * and callers get back exactly what was stored.
 */
function redacted<T extends object>(record: T): T {
  return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, typeof v === "string" ? redactSecrets(v) : v])) as T;
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
