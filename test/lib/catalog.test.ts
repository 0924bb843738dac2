/**
 * The catalog on a real table in Azurite: ids, idempotent inserts, conditional merges and
 * corrections, listing with filters and continuation tokens, start locks, the folder lookup and the
 * active/unsettled queries. Each test uses its own table.
 */
import { RestError, type TableClient } from "@azure/data-tables";
import { describe, expect, inject, it } from "vitest";
import { Catalog, type BackupRecord, type RestoreRecord } from "../../src/lib/catalog.js";
import { parseConfig } from "../../src/lib/config.js";
import { ProblemError } from "../../src/lib/problem.js";
import { createBackupStorage } from "../../src/lib/storage.js";
import { uniqueName } from "../support/app.js";
import { tokenCredential } from "../support/scripted-hsm.js";

const T0 = new Date("2026-12-01T00:00:00.000Z");

async function freshTable(create = true): Promise<{ table: TableClient; catalog: Catalog }> {
  const config = parseConfig({
    MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
    BackupStorage: inject("azuriteConnectionString"),
  });
  const table = createBackupStorage(config.storage, tokenCredential).table(uniqueName("cat"));
  const catalog = new Catalog(table);
  if (create) await catalog.ensureTable();
  return { table, catalog };
}

function backup(at: Date, extra: Partial<BackupRecord> = {}): BackupRecord {
  return {
    id: Catalog.newId(at),
    hsmName: "contoso",
    hsmUrl: "https://contoso.managedhsm.azure.net",
    status: "Running",
    startedAt: at.toISOString(),
    trigger: "timer",
    ...extra,
  };
}

const minutes = (n: number) => new Date(T0.getTime() + n * 60_000);

describe("Catalog ids", () => {
  it("start with the inverted time, so newer sorts first, and end with 8 random hex digits", () => {
    expect(Catalog.newId(new Date(0))).toMatch(/^9999999999999-[0-9a-f]{8}$/);
    expect(Catalog.newId(new Date(1_000))).toMatch(/^9999999998999-[0-9a-f]{8}$/);
    expect(Catalog.newId(new Date(9_999_999_999_998))).toMatch(/^0000000000001-/);
    expect(Catalog.newId(T0) > Catalog.newId(minutes(1))).toBe(true);
    expect(Catalog.newId(T0)).not.toBe(Catalog.newId(T0));
  });
});

describe("Catalog.ensureTable", () => {
  it("creates a missing table and leaves an existing one alone", async () => {
    const { table, catalog } = await freshTable(false);
    await catalog.ensureTable();
    await table.createEntity({ partitionKey: "backup", rowKey: "x" });
    await catalog.ensureTable();
    expect((await table.getEntity("backup", "x")).rowKey).toBe("x");
  });

  it("passes on any failure other than a missing table", async () => {
    const config = parseConfig({
      MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
      BackupStorage: inject("azuriteConnectionString"),
    });
    const table = createBackupStorage(config.storage, tokenCredential).table("no_such-table!");
    await expect(new Catalog(table).ensureTable()).rejects.toBeInstanceOf(RestError);
  });
});

describe("Catalog.insert and get", () => {
  it("stores every field but the id as a property, redacted, and reads back exactly what was stored", async () => {
    const { table, catalog } = await freshTable();
    const record = backup(T0, { errorMessage: "GET https://a/c?sv=1&sig=abc failed", statusDetails: undefined });
    const saved = await catalog.insert("backup", record);
    expect(saved.record.errorMessage).toBe("GET https://a/c?<redacted-sas> failed");
    expect(saved.etag).not.toBe("*");
    const raw = await table.getEntity<Record<string, unknown>>("backup", record.id);
    expect(raw).not.toHaveProperty("id");
    expect(raw).not.toHaveProperty("statusDetails");
    expect(raw.errorMessage).toBe("GET https://a/c?<redacted-sas> failed");
    const read = await catalog.get("backup", record.id);
    expect(read?.record).toStrictEqual({
      id: record.id,
      hsmName: "contoso",
      hsmUrl: record.hsmUrl,
      status: "Running",
      startedAt: record.startedAt,
      trigger: "timer",
      errorMessage: "GET https://a/c?<redacted-sas> failed",
    });
    expect(read?.etag).toBe(saved.etag);
  });

  it("treats a retried insert of the same record as its own, and refuses a different record under the same id", async () => {
    const { catalog } = await freshTable();
    const record = backup(T0);
    const first = await catalog.insert("backup", record);
    const again = await catalog.insert("backup", record);
    expect(again.record).toStrictEqual(first.record);
    expect(again.etag).toBe(first.etag);
    await expect(catalog.insert("backup", { ...record, status: "Failed" })).rejects.toMatchObject({ statusCode: 409 });
    await expect(
      catalog.insert("restore", { ...record, backupId: "x", folderUri: "y" } as RestoreRecord),
    ).resolves.toBeDefined();
  });

  it("finds nothing under an id that is not a record id, nor under a missing one", async () => {
    const { table, catalog } = await freshTable();
    await table.createEntity({ partitionKey: "backup", rowKey: "not-an-id", status: "Running" });
    expect(await catalog.get("backup", "not-an-id")).toBeUndefined();
    expect(await catalog.get("backup", Catalog.newId(T0))).toBeUndefined();
  });
});

describe("Catalog.merge", () => {
  it("merges a change, redacted, into an active record, keeping the other fields", async () => {
    const { catalog } = await freshTable();
    const stored = await catalog.insert("backup", backup(T0, { statusDetails: "started" }));
    const merged = await catalog.merge("backup", stored, { status: "Failed", errorMessage: "Bearer abc123 refused" });
    expect(merged.applied).toBe(true);
    expect(merged.record).toStrictEqual({
      ...stored.record,
      status: "Failed",
      errorMessage: "Bearer <redacted> refused",
    });
    expect((await catalog.get("backup", stored.record.id))?.record).toStrictEqual(merged.record);
  });

  it("never changes a recorded outcome, except by a correction", async () => {
    const { catalog } = await freshTable();
    const stored = await catalog.insert("backup", backup(T0, { status: "TimedOut", errorCode: "JobTimeout" }));
    const refused = await catalog.merge("backup", stored, { status: "Succeeded" });
    expect(refused).toStrictEqual({ ...stored, applied: false });
    const corrected = await catalog.merge(
      "backup",
      stored,
      { status: "Succeeded", errorCode: undefined },
      { correction: true },
    );
    expect(corrected.applied).toBe(true);
    expect(corrected.record).not.toHaveProperty("errorCode");
    expect((await catalog.get("backup", stored.record.id))?.record).not.toHaveProperty("errorCode");
  });

  it("when another worker changed the record meanwhile, re-reads it: applies over an active change, keeps another's outcome", async () => {
    const { catalog } = await freshTable();
    const stored = await catalog.insert("backup", backup(T0));
    const other = await catalog.merge("backup", stored, { statusDetails: "progress" });
    const applied = await catalog.merge("backup", stored, { jobId: "abc" });
    expect(applied.applied).toBe(true);
    expect(applied.record).toMatchObject({ statusDetails: "progress", jobId: "abc" });

    const outcome = await catalog.merge("backup", applied, { status: "Failed", errorCode: "X" });
    const late = await catalog.merge("backup", other, { status: "Succeeded" });
    expect(late.applied).toBe(false);
    expect(late.record).toStrictEqual(outcome.record);
    expect(late.etag).toBe(outcome.etag);
  });

  it("gives a correction that lost a race back undecided, with the record as it now is", async () => {
    const { catalog } = await freshTable();
    const stored = await catalog.insert("backup", backup(T0, { status: "TimedOut" }));
    const first = await catalog.merge("backup", stored, { status: "Failed" }, { correction: true });
    const second = await catalog.merge("backup", stored, { status: "Succeeded" }, { correction: true });
    expect(second).toStrictEqual({ ...first, applied: false });
  });
});

/**
 * The catalog of a worker that another worker beats to every write: right before each of its
 * conditional updates, the other changes the same row (so the etag it holds is always stale). With
 * `vanish`, the row is deleted before the worker re-reads it.
 */
function beatenToEveryWrite(table: TableClient, options: { vanish?: boolean } = {}) {
  let updates = 0;
  const client: TableClient = Object.create(table);
  client.updateEntity = async (entity, mode, updateOptions) => {
    updates++;
    await table.updateEntity({ partitionKey: entity.partitionKey, rowKey: entity.rowKey, other: updates }, "Merge");
    return table.updateEntity(entity, mode, updateOptions);
  };
  client.getEntity = async (partitionKey, rowKey, getOptions) => {
    if (options.vanish) await table.deleteEntity(partitionKey, rowKey);
    return table.getEntity(partitionKey, rowKey, getOptions);
  };
  return { catalog: new Catalog(client), updates: () => updates };
}

describe("Catalog.merge under contention", () => {
  it("tries five times when another worker changes the record before each write, then fails naming the record", async () => {
    const { table, catalog } = await freshTable();
    const stored = await catalog.insert("backup", backup(T0));
    const beaten = beatenToEveryWrite(table);
    await expect(beaten.catalog.merge("backup", stored, { jobId: "abc" })).rejects.toThrow(
      `Catalog backup record ${stored.record.id}: too many concurrent updates`,
    );
    expect(beaten.updates()).toBe(5);
    expect((await catalog.get("backup", stored.record.id))?.record).not.toHaveProperty("jobId");
  });

  it("fails naming the record when it was deleted while being updated", async () => {
    const { table, catalog } = await freshTable();
    const stored = await catalog.insert("restore", { ...backup(T0), backupId: "b", folderUri: "f" } as RestoreRecord);
    const beaten = beatenToEveryWrite(table, { vanish: true });
    await expect(beaten.catalog.merge("restore", stored, { jobId: "abc" })).rejects.toThrow(
      `Catalog restore record ${stored.record.id} vanished while it was being updated`,
    );
  });
});

describe("Catalog.pruneUpdate", () => {
  const folderUri = "https://acct.blob.core.windows.net/c/mhsm-contoso-1";
  const settled = (extra: Partial<BackupRecord> = {}) => backup(T0, { status: "Succeeded", folderUri, ...extra });

  it("writes the change, redacted, over a settled backup and keeps its other fields", async () => {
    const { catalog } = await freshTable();
    const stored = await catalog.insert("backup", settled({ verification: "Passed" }));
    const pruned = await catalog.pruneUpdate(stored, {
      status: "Pruned",
      prunedAt: minutes(5).toISOString(),
      pruneNote: "stopped: ?sv=2024-01-01&sig=abcdef0123 refused",
    });
    expect(pruned.applied).toBe(true);
    expect(pruned.record).toStrictEqual({
      ...stored.record,
      status: "Pruned",
      prunedAt: minutes(5).toISOString(),
      pruneNote: "stopped: ?<redacted-sas> refused",
    });
    expect(await catalog.get("backup", stored.record.id)).toStrictEqual({ record: pruned.record, etag: pruned.etag });
  });

  it("re-reads a record changed meanwhile and writes over it while it is the same settled backup", async () => {
    const { table, catalog } = await freshTable();
    const stored = await catalog.insert("backup", settled());
    await table.updateEntity({ partitionKey: "backup", rowKey: stored.record.id, copyStatus: "Copied" }, "Merge");
    const noted = await catalog.pruneUpdate(stored, { pruneNote: "left" });
    expect(noted.applied).toBe(true);
    expect(noted.record).toStrictEqual({ ...stored.record, copyStatus: "Copied", pruneNote: "left" });
    expect((await catalog.get("backup", stored.record.id))?.record).toStrictEqual(noted.record);
  });

  it("changes nothing once the record's status or folder changed meanwhile, and returns it as it now is", async () => {
    const { table, catalog } = await freshTable();
    const stored = await catalog.insert("backup", settled());
    const first = await catalog.pruneUpdate(stored, { status: "Pruned", prunedAt: minutes(5).toISOString() });
    const late = await catalog.pruneUpdate(stored, { pruneNote: "late" });
    expect(late).toStrictEqual({ ...first, applied: false });

    const other = await catalog.insert("backup", settled());
    await table.updateEntity({ partitionKey: "backup", rowKey: other.record.id, folderUri: `${folderUri}-b` }, "Merge");
    const moved = await catalog.pruneUpdate(other, { status: "Pruned", prunedAt: minutes(5).toISOString() });
    expect(moved.applied).toBe(false);
    expect(moved.record).toStrictEqual({ ...other.record, folderUri: `${folderUri}-b` });
    expect((await catalog.get("backup", other.record.id))?.record).toStrictEqual(moved.record);
  });

  it("tries five times against a worker that changes the record before each write, then fails naming it", async () => {
    const { table, catalog } = await freshTable();
    const stored = await catalog.insert("backup", settled());
    const beaten = beatenToEveryWrite(table);
    await expect(beaten.catalog.pruneUpdate(stored, { pruneNote: "x" })).rejects.toThrow(
      `Catalog backup record ${stored.record.id}: too many concurrent updates`,
    );
    expect(beaten.updates()).toBe(5);
    const vanishing = await catalog.insert("backup", settled());
    await expect(
      beatenToEveryWrite(table, { vanish: true }).catalog.pruneUpdate(vanishing, { pruneNote: "x" }),
    ).rejects.toThrow(`Catalog backup record ${vanishing.record.id} vanished while it was being updated`);
  });
});

describe("Catalog.list", () => {
  it("lists one partition newest first, a page at a time, with filters", async () => {
    const { catalog } = await freshTable();
    const records = [
      backup(minutes(1), { hsmName: "a", status: "Succeeded" }),
      backup(minutes(2), { hsmName: "b", status: "Failed" }),
      backup(minutes(3), { hsmName: "a", status: "Failed" }),
      backup(minutes(4), { hsmName: "a", status: "Succeeded" }),
    ];
    for (const record of records) await catalog.insert("backup", record);
    await catalog.insert("restore", {
      ...backup(minutes(5)),
      backupId: records[0]!.id,
      folderUri: "f",
    } as RestoreRecord);

    const first = await catalog.list("backup", { top: 3 });
    expect(first.items.map((r) => r.id)).toEqual([records[3]!.id, records[2]!.id, records[1]!.id]);
    expect(first.continuationToken).toEqual(expect.any(String));
    const second = await catalog.list("backup", { top: 3, continuationToken: first.continuationToken! });
    expect(second).toStrictEqual({ items: [expect.objectContaining({ id: records[0]!.id })] });

    expect((await catalog.list("backup", { top: 10, hsmName: "a" })).items.map((r) => r.id)).toEqual([
      records[3]!.id,
      records[2]!.id,
      records[0]!.id,
    ]);
    expect((await catalog.list("backup", { top: 10, status: "Failed" })).items.map((r) => r.id)).toEqual([
      records[2]!.id,
      records[1]!.id,
    ]);
    expect((await catalog.list("backup", { top: 10, hsmName: "a", status: "Failed" })).items.map((r) => r.id)).toEqual([
      records[2]!.id,
    ]);
    expect(await catalog.list("backup", { top: 10, hsmName: "a' or PartitionKey eq 'restore" })).toStrictEqual({
      items: [],
    });
    const restores = await catalog.list("restore", { top: 10 });
    expect(restores.items).toHaveLength(1);
    expect(restores.items[0]).not.toHaveProperty("partitionKey");
    expect(restores.items[0]).not.toHaveProperty("etag");
    expect(restores.items[0]).not.toHaveProperty("timestamp");
  });

  it.each([
    ["not base64 JSON", "%%%"],
    ["JSON that is not an object", Buffer.from("5").toString("base64")],
    ["null", Buffer.from("null").toString("base64")],
    ["no partition key", Buffer.from(JSON.stringify({ nextRowKey: "r" })).toString("base64")],
    ["an empty partition key", Buffer.from(JSON.stringify({ nextPartitionKey: "" })).toString("base64")],
    ["a numeric partition key", Buffer.from(JSON.stringify({ nextPartitionKey: 1 })).toString("base64")],
    [
      "a numeric row key",
      Buffer.from(JSON.stringify({ nextPartitionKey: "backup", nextRowKey: 5 })).toString("base64"),
    ],
  ])("refuses a continuation token that is %s", async (_case, token) => {
    const { catalog } = await freshTable();
    const error = await catalog.list("backup", { top: 5, continuationToken: token }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProblemError);
    expect(error).toMatchObject({
      status: 400,
      title: "Invalid continuation token",
      detail: "continuationToken is not a token returned by this listing.",
    });
  });

  it("accepts a well-formed token with or without a row key", async () => {
    const { catalog } = await freshTable();
    await catalog.insert("backup", backup(minutes(1)));
    await catalog.insert("backup", backup(minutes(2)));
    const token = (await catalog.list("backup", { top: 1 })).continuationToken!;
    const decoded = JSON.parse(Buffer.from(token, "base64").toString("utf8"));
    expect(decoded).toEqual({ nextPartitionKey: expect.any(String), nextRowKey: expect.any(String) });
    expect((await catalog.list("backup", { top: 5, continuationToken: token })).items).toHaveLength(1);
    const partitionOnly = Buffer.from(JSON.stringify({ nextPartitionKey: decoded.nextPartitionKey })).toString(
      "base64",
    );
    await expect(catalog.list("backup", { top: 5, continuationToken: partitionOnly })).resolves.toBeDefined();
  });
});

describe("Catalog.tryLock", () => {
  it("lets one holder in, takes over a stale lock, and tells the old holder it lost it", async () => {
    const { catalog } = await freshTable();
    let now = T0.getTime();
    const clock = () => new Date(now);
    const first = await catalog.tryLock("contoso", clock, 60_000);
    expect(first).toBeDefined();
    now += 59_999;
    expect(await catalog.tryLock("contoso", clock, 60_000)).toBeUndefined();
    expect(await catalog.tryLock("other", clock, 60_000)).toBeDefined();
    expect(await first!.renew()).toBe(true);
    now += 60_000;
    const second = await catalog.tryLock("contoso", clock, 60_000);
    expect(second).toBeDefined();
    expect(await first!.renew()).toBe(false);
    await first!.release(); // not ours any more: nothing happens
    expect(await second!.renew()).toBe(true);
    expect(await catalog.tryLock("contoso", clock, 60_000)).toBeUndefined();
    await second!.release();
    expect(await second!.renew()).toBe(false);
    await second!.release();
    expect(await catalog.tryLock("contoso", clock, 60_000)).toBeDefined();
  });

  it("takes over a lock row that says nothing about when it was taken", async () => {
    const { table, catalog } = await freshTable();
    await table.createEntity({ partitionKey: "lock", rowKey: "hsm-contoso" });
    expect(await catalog.tryLock("contoso", () => T0, 60_000)).toBeDefined();
    const held = await table.getEntity<{ takenAt: string }>("lock", "hsm-contoso");
    expect(held.takenAt).toBe(T0.toISOString());
  });

  it("a lock taken over before its holder ever renewed it is no longer the holder's: renew fails, release leaves it", async () => {
    const { catalog } = await freshTable();
    let now = T0.getTime();
    const clock = () => new Date(now);
    const first = await catalog.tryLock("contoso", clock, 60_000);
    now += 60_000;
    const second = await catalog.tryLock("contoso", clock, 60_000);
    expect(second).toBeDefined();
    await first!.release();
    expect(await catalog.tryLock("contoso", clock, 60_000)).toBeUndefined();
    expect(await first!.renew()).toBe(false);
    expect(await second!.renew()).toBe(true);
  });

  it("lets only one of two workers take over the same stale lock", async () => {
    const { table, catalog } = await freshTable();
    let now = T0.getTime();
    const clock = () => new Date(now);
    await catalog.tryLock("contoso", clock, 60_000);
    now += 60_000;
    // The slower worker reads the stale lock; the faster one takes it over before the slower writes.
    let faster: Awaited<ReturnType<Catalog["tryLock"]>>;
    const slow: TableClient = Object.create(table);
    slow.getEntity = (async (...args: Parameters<TableClient["getEntity"]>) => {
      const held = await table.getEntity(...args);
      faster = await catalog.tryLock("contoso", clock, 60_000);
      return held;
    }) as TableClient["getEntity"];
    expect(await new Catalog(slow).tryLock("contoso", clock, 60_000)).toBeUndefined();
    expect(faster).toBeDefined();
    expect(await faster!.renew()).toBe(true);
  });

  it("keeps locks out of every listing", async () => {
    const { catalog } = await freshTable();
    await catalog.tryLock("contoso", () => T0, 60_000);
    expect((await catalog.list("backup", { top: 10 })).items).toEqual([]);
    expect(await catalog.active("backup")).toEqual([]);
  });
});

describe("Catalog.hasFolder", () => {
  it("finds a backup record naming the folder within a day of the folder's time", async () => {
    const { catalog } = await freshTable();
    const folder = "https://acct.blob.core.windows.net/c/mhsm-contoso-1";
    await catalog.insert("backup", backup(T0, { status: "Succeeded", folderUri: folder }));
    await catalog.insert("restore", {
      ...backup(minutes(600)),
      backupId: "x",
      folderUri: `${folder}-restored`,
    } as RestoreRecord);
    const hours = (n: number) => new Date(T0.getTime() + n * 3_600_000);
    expect(await catalog.hasFolder(folder, T0)).toBe(true);
    expect(await catalog.hasFolder(folder, hours(23))).toBe(true);
    expect(await catalog.hasFolder(folder, hours(-23))).toBe(true);
    expect(await catalog.hasFolder(folder, hours(25))).toBe(false);
    expect(await catalog.hasFolder(folder, hours(-25))).toBe(false);
    expect(await catalog.hasFolder(`${folder}-other`, T0)).toBe(false);
    expect(await catalog.hasFolder(`${folder}-restored`, hours(10))).toBe(false);
  });

  it("includes records started exactly a day either side of the folder's time, whatever their random suffix", async () => {
    const { catalog } = await freshTable();
    const day = 86_400_000;
    const prefix = Catalog.newId(T0).slice(0, 13);
    // The lowest and the highest id of that millisecond: a range cut inside it would miss one.
    const low = "https://acct.blob.core.windows.net/c/mhsm-contoso-low";
    const high = "https://acct.blob.core.windows.net/c/mhsm-contoso-high";
    await catalog.insert("backup", backup(T0, { id: `${prefix}-00000000`, status: "Succeeded", folderUri: low }));
    await catalog.insert("backup", backup(T0, { id: `${prefix}-ffffffff`, status: "Succeeded", folderUri: high }));
    for (const folder of [low, high]) {
      expect(await catalog.hasFolder(folder, new Date(T0.getTime() - day))).toBe(true);
      expect(await catalog.hasFolder(folder, new Date(T0.getTime() + day))).toBe(true);
      expect(await catalog.hasFolder(folder, new Date(T0.getTime() + day + 1))).toBe(false);
      expect(await catalog.hasFolder(folder, new Date(T0.getTime() - day - 1))).toBe(false);
    }
  });
});

describe("Catalog.active and unsettled", () => {
  it("read the records a status read may still change, per HSM or for all", async () => {
    const { catalog } = await freshTable();
    const make = (n: number, hsmName: string, status: BackupRecord["status"]) =>
      catalog.insert("backup", backup(minutes(n), { hsmName, status }));
    const starting = await make(1, "a", "Starting");
    const running = await make(2, "a", "Running");
    const timedOut = await make(3, "a", "TimedOut");
    await make(4, "a", "Succeeded");
    await make(5, "a", "Failed");
    await make(6, "a", "Skipped");
    const otherHsm = await make(7, "b", "Running");
    await catalog.insert("restore", {
      ...backup(minutes(8), { hsmName: "a" }),
      backupId: "x",
      folderUri: "f",
    } as RestoreRecord);
    const ids = (found: { record: { id: string } }[]) => found.map((f) => f.record.id).sort();

    expect(ids(await catalog.active("backup", "a"))).toEqual(ids([starting, running]));
    expect(ids(await catalog.unsettled("backup", "a"))).toEqual(ids([starting, running, timedOut]));
    expect(ids(await catalog.active("backup"))).toEqual(ids([starting, running, otherHsm]));
    const [one] = await catalog.active("backup", "b");
    expect(one).toStrictEqual({ record: otherHsm.record, etag: otherHsm.etag });
  });
});
