/**
 * The catalog's error paths, with the fault proxy in front of Azurite's table endpoint: a failure
 * that is not the one a branch expects must reach the caller, and the ones it expects (a lock
 * released or taken over meanwhile, an empty page with a continuation) are handled. 400 is used for
 * "anything else": the storage SDK does not retry it, so one injected fault is one failed call.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Catalog, type BackupRecord } from "../../src/lib/catalog.js";
import { parseConfig } from "../../src/lib/config.js";
import { createBackupStorage } from "../../src/lib/storage.js";
import { uniqueName } from "../support/app.js";
import { startFaultProxy, withEndpoint, type Fault, type FaultProxy } from "../support/fault-proxy.js";
import { tokenCredential } from "../support/scripted-hsm.js";

const T0 = new Date("2026-12-01T00:00:00.000Z");
const BAD_REQUEST: Fault = {
  kind: "status",
  status: 400,
  contentType: "application/json",
  body: JSON.stringify({ "odata.error": { code: "InvalidInput", message: { value: "injected" } } }),
};

let proxy: FaultProxy;

beforeAll(async () => {
  const connection = inject("azuriteConnectionString");
  const tableEndpoint = /TableEndpoint=([^;]+)/.exec(connection)![1]!;
  proxy = await startFaultProxy(tableEndpoint);
});
afterAll(() => proxy.stop());

/** One table (created unless `create` is false), reached directly and through the proxy. */
async function tables({ create = true } = {}) {
  const connection = inject("azuriteConnectionString");
  const name = uniqueName("flt");
  const table = (cs: string) =>
    createBackupStorage(
      parseConfig({ MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net", BackupStorage: cs }).storage,
      tokenCredential,
    ).table(name);
  const directTable = table(connection);
  const direct = new Catalog(directTable);
  if (create) await direct.ensureTable();
  return { direct, directTable, faulty: new Catalog(table(withEndpoint(connection, "TableEndpoint", proxy.url))) };
}

function backup(extra: Partial<BackupRecord> = {}): BackupRecord {
  return {
    id: Catalog.newId(T0),
    hsmName: "contoso",
    hsmUrl: "https://contoso.managedhsm.azure.net",
    status: "Running",
    startedAt: T0.toISOString(),
    trigger: "timer",
    ...extra,
  };
}

async function rejection(promise: Promise<unknown>) {
  return promise.then(
    () => expect.unreachable("resolved"),
    (e: unknown) => e as { statusCode?: number; request?: { method: string } },
  );
}

describe("a failure the catalog does not expect reaches the caller", () => {
  it("insert: only a conflict is read back as a possible earlier attempt", async () => {
    const { direct, faulty } = await tables();
    const record = backup();
    await direct.insert("backup", record);
    proxy.inject(BAD_REQUEST, { method: "POST" });
    const error = await rejection(faulty.insert("backup", record));
    expect(error).toMatchObject({ statusCode: 400, request: { method: "POST" } });
  });

  it("get: only a missing record is undefined", async () => {
    const { direct, faulty } = await tables();
    const record = backup();
    await direct.insert("backup", record);
    proxy.inject(BAD_REQUEST, { method: "GET" });
    expect(await rejection(faulty.get("backup", record.id))).toMatchObject({ statusCode: 400 });
  });

  it("tryLock: only a held lock is looked at; renew and release fail loudly on anything but lost or gone", async () => {
    const { direct, faulty } = await tables();
    const clock = () => T0;
    expect(await direct.tryLock("contoso", clock, 60_000)).toBeDefined();
    proxy.inject(BAD_REQUEST, { method: "POST" });
    expect(await rejection(faulty.tryLock("contoso", clock, 60_000))).toMatchObject({
      statusCode: 400,
      request: { method: "POST" },
    });

    const lock = await faulty.tryLock("other", clock, 60_000);
    expect(lock).toBeDefined();
    proxy.inject(BAD_REQUEST, { method: "PUT" });
    expect(await rejection(lock!.renew())).toMatchObject({ statusCode: 400 });
    proxy.inject(BAD_REQUEST, { method: "DELETE" });
    expect(await rejection(lock!.release())).toMatchObject({ statusCode: 400 });
  });

  it("tryLock: a stale lock released (404) or taken by another (412) meanwhile is not ours; any other failure is thrown", async () => {
    const { direct, faulty } = await tables();
    let now = T0.getTime();
    const clock = () => new Date(now);
    await direct.tryLock("contoso", clock, 60_000);
    now += 120_000;
    proxy.inject(
      {
        kind: "status",
        status: 404,
        contentType: "application/json",
        body: JSON.stringify({ "odata.error": { code: "ResourceNotFound", message: { value: "gone" } } }),
      },
      { method: "GET" },
    );
    expect(await faulty.tryLock("contoso", clock, 60_000)).toBeUndefined();
    proxy.inject(
      {
        kind: "status",
        status: 412,
        contentType: "application/json",
        body: JSON.stringify({ "odata.error": { code: "UpdateConditionNotSatisfied", message: { value: "raced" } } }),
      },
      { method: "PUT" },
    );
    expect(await faulty.tryLock("contoso", clock, 60_000)).toBeUndefined();
    proxy.inject(BAD_REQUEST, { method: "GET" });
    expect(await rejection(faulty.tryLock("contoso", clock, 60_000))).toMatchObject({ statusCode: 400 });
    expect(await faulty.tryLock("contoso", clock, 60_000)).toBeDefined();
  });

  it("a lock taken over twice belongs to the last taker only", async () => {
    const { direct } = await tables();
    let now = T0.getTime();
    const clock = () => new Date(now);
    await direct.tryLock("contoso", clock, 60_000);
    now += 60_000;
    const second = await direct.tryLock("contoso", clock, 60_000);
    now += 60_000;
    const third = await direct.tryLock("contoso", clock, 60_000);
    expect(third).toBeDefined();
    expect(await second!.renew()).toBe(false);
    expect(await third!.renew()).toBe(true);
  });
});

describe("what the table service answers is checked", () => {
  it("ensureTable creates the table only when the probe says it is missing, not on any other failure", async () => {
    const { directTable: direct, faulty } = await tables({ create: false });
    proxy.inject(BAD_REQUEST, { method: "GET" });
    expect(await rejection(faulty.ensureTable())).toMatchObject({ statusCode: 400 });
    const missing = await rejection(direct.listEntities().byPage({ maxPageSize: 1 }).next());
    expect(missing).toMatchObject({ statusCode: 404 });
    await faulty.ensureTable();
    expect(await direct.listEntities().byPage({ maxPageSize: 1 }).next()).toMatchObject({ done: false });
  });

  it("a write answered without an ETag is reported as failed, naming what was written", async () => {
    const { direct, faulty } = await tables();
    const noEtag: Fault = {
      kind: "rewrite",
      transform: (answer) => ({
        ...answer,
        headers: Object.fromEntries(Object.entries(answer.headers).filter(([name]) => name !== "etag")),
      }),
    };
    const record = backup();
    proxy.inject(noEtag, { method: "POST" });
    await expect(faulty.insert("backup", record)).rejects.toThrow(
      `Catalog: storage answered the insert of backup record ${record.id} without an ETag`,
    );
    const stored = (await faulty.get("backup", record.id))!;
    proxy.inject(noEtag);
    await expect(faulty.merge("backup", stored, { jobId: "j" })).rejects.toThrow(
      `Catalog: storage answered the update of backup record ${record.id} without an ETag`,
    );
    proxy.inject(noEtag, { method: "POST" });
    await expect(faulty.tryLock("contoso", () => T0, 60_000)).rejects.toThrow(
      "Catalog: storage answered the start lock of HSM contoso without an ETag",
    );
    // Taking over a stale lock, and renewing one, are writes the next one is conditional on too.
    await direct.tryLock("stale", () => T0, 60_000);
    const later = () => new Date(T0.getTime() + 60_000);
    proxy.inject(noEtag, { method: "PUT" });
    await expect(faulty.tryLock("stale", later, 60_000)).rejects.toThrow(
      "Catalog: storage answered the start lock of HSM stale without an ETag",
    );
    const held = (await faulty.tryLock("held", () => T0, 60_000))!;
    proxy.inject(noEtag, { method: "PUT" });
    await expect(held.renew()).rejects.toThrow("Catalog: storage answered the start lock of HSM held without an ETag");
  });

  it("claimSlot: the claim's row names the HSM and the slot; only a taken slot is read back, and that read must succeed", async () => {
    const { direct, directTable, faulty } = await tables();
    const slot = new Date("2026-12-01T02:00:00.000Z");
    expect(await direct.claimSlot("contoso", slot, "r1")).toBe(true);
    const rows = directTable.listEntities({ queryOptions: { filter: "PartitionKey eq 'slot'" } });
    const keys: string[] = [];
    for await (const row of rows) keys.push(row.rowKey!);
    expect(keys).toEqual(["contoso-20261201T020000000Z"]);

    proxy.inject(BAD_REQUEST, { method: "POST" });
    expect(await rejection(faulty.claimSlot("contoso", new Date("2026-12-02T02:00:00.000Z"), "r2"))).toMatchObject({
      statusCode: 400,
      request: { method: "POST" },
    });
    proxy.inject(BAD_REQUEST, { method: "GET" });
    expect(await rejection(faulty.claimSlot("contoso", slot, "r1"))).toMatchObject({
      statusCode: 400,
      request: { method: "GET" },
    });
    expect(await faulty.claimSlot("contoso", slot, "r1")).toBe(true);
    expect(await faulty.claimSlot("contoso", slot, "r3")).toBe(false);
  });
});

describe("listing past empty pages", () => {
  /** Rewrites the next query answers into empty pages that continue at the partition's start (Azurite's tokens are base64). */
  const next = {
    nextPartitionKey: Buffer.from("backup").toString("base64"),
    nextRowKey: Buffer.from("0").toString("base64"),
  };
  function emptyPages(times: number) {
    proxy.inject(
      {
        kind: "rewrite",
        transform: (answer) => ({
          ...answer,
          headers: {
            ...answer.headers,
            "x-ms-continuation-nextpartitionkey": next.nextPartitionKey,
            "x-ms-continuation-nextrowkey": next.nextRowKey,
          },
          bodyText: JSON.stringify({ value: [] }),
        }),
      },
      { method: "GET", times },
    );
  }

  it("reads on through empty pages that continue, up to five", async () => {
    const { direct, faulty } = await tables();
    const record = backup();
    await direct.insert("backup", record);
    emptyPages(4);
    const page = await faulty.list("backup", { top: 10 });
    expect(page).toStrictEqual({ items: [expect.objectContaining({ id: record.id })] });
  });

  it("after five empty pages, answers an empty page with the token to go on", async () => {
    const { direct, faulty } = await tables();
    await direct.insert("backup", backup());
    emptyPages(5);
    const page = await faulty.list("backup", { top: 10 });
    expect(page.items).toEqual([]);
    expect(JSON.parse(Buffer.from(page.continuationToken!, "base64").toString("utf8"))).toEqual(next);
    proxy.clear();
  });
});
