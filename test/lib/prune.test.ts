/**
 * Prune: retention with a floor, against real Azurite (and the HSM emulator for real backup folders).
 * The property test builds many random catalogs from a seeded PRNG, writes their folders (and folders
 * no record names) into a real container, prunes, and checks the outcome against rules computed here,
 * independently of the planner.
 */
import { afterEach, describe, expect, inject, it } from "vitest";
import { pruneTimer } from "../../src/handlers/prune.js";
import { postRestore } from "../../src/handlers/restores.js";
import { backupAll } from "../../src/lib/backup.js";
import { Catalog, type BackupRecord, type RecordStatus, type RestoreRecord } from "../../src/lib/catalog.js";
import { parseConfig, type Env } from "../../src/lib/config.js";
import { createDeps, type AppDeps } from "../../src/lib/deps.js";
import { checkHealth } from "../../src/lib/health.js";
import { safeLogger } from "../../src/lib/logger.js";
import { planPrune, PRUNE_REASONS, type PruneEntry } from "../../src/lib/prune-plan.js";
import { prune, type PruneReport } from "../../src/lib/prune.js";
import { bodyOf, events, onTime, postJson, startTestApp, uniqueName, type TestApp } from "../support/app.js";
import { cli } from "../support/cli.js";
import { prng, startFaultProxy, withEndpoint, type FaultProxy } from "../support/fault-proxy.js";

const DAY = 86_400_000;
const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(stops.splice(0).map((stop) => stop()));
});

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)]!;
}

const log = safeLogger({ log: () => {}, warn: () => {}, error: () => {} });

/** `mhsm-<hsm>-yyyyMMddHHmmss` plus three digits, as the HSM names its folders. */
function folderName(hsm: string, at: Date, extra: number): string {
  return `mhsm-${hsm}-${at.toISOString().replace(/\D/g, "").slice(0, 14)}${String(extra).padStart(3, "0")}`;
}

interface RandomCatalog {
  readonly backups: BackupRecord[];
  readonly restores: RestoreRecord[];
  /** Folders written into the container with no record naming them. */
  readonly uncatalogued: string[];
  readonly minKeep: number;
  readonly retentionDays: number;
}

const STATUSES: readonly RecordStatus[] = [
  "Succeeded",
  "Succeeded",
  "Succeeded",
  "Succeeded",
  "Succeeded",
  "Failed",
  "Skipped",
  "Canceled",
  "TimedOut",
  "Pruned",
  "Running",
];

/** A catalog of a few HSMs with every kind of record, folder and restore a long history can leave. */
function randomCatalog(
  random: () => number,
  hsms: readonly { name: string; url: string }[],
  containerUrl: string,
  now: Date,
): RandomCatalog {
  const backups: BackupRecord[] = [];
  const restores: RestoreRecord[] = [];
  const uncatalogued: string[] = [];
  const retentionDays = 1 + Math.floor(random() * 20);
  const minKeep = 1 + Math.floor(random() * 6);
  let n = 0;
  for (const hsm of hsms) {
    const count = Math.floor(random() * 14);
    for (let i = 0; i < count; i++) {
      const started = new Date(now.getTime() - random() * 40 * DAY);
      const ended = new Date(started.getTime() + 60_000);
      let status = pick(random, STATUSES);
      // Rarely a running backup: the HSM is then busy, and nothing of it may be touched.
      if (status === "Running" && random() < 0.6) status = "Succeeded";
      const folder = `${containerUrl}/${folderName(hsm.name, started, n++)}`;
      const hasFolder =
        status === "Succeeded" || status === "Pruned" || (status === "Failed" && random() < 0.3) || random() < 0.05;
      const folderUri = !hasFolder
        ? undefined
        : random() < 0.05
          ? `https://elsewhere.blob.core.windows.net/other/${folderName(hsm.name, started, n)}`
          : random() < 0.05 && backups.some((b) => b.hsmName === hsm.name && b.folderUri?.startsWith(containerUrl))
            ? backups.find((b) => b.hsmName === hsm.name && b.folderUri?.startsWith(containerUrl))!.folderUri
            : folder;
      backups.push({
        id: Catalog.newId(started),
        hsmName: hsm.name,
        hsmUrl: hsm.url,
        status,
        trigger: "timer",
        startedAt: started.toISOString(),
        ...(status !== "Running" ? { endedAt: ended.toISOString() } : {}),
        ...(folderUri !== undefined ? { folderUri } : {}),
        ...(status === "Succeeded" && random() < 0.8
          ? { verification: pick(random, ["Passed", "Passed", "Passed", "Failed", "Skipped"] as const) }
          : {}),
        ...(status === "Pruned" ? { prunedAt: now.toISOString() } : {}),
      });
    }
    // A folder of this HSM that no record names, and one whose name a recorded folder's is a prefix of.
    uncatalogued.push(folderName(hsm.name, new Date(now.getTime() - 35 * DAY), n++));
    const recorded = backups.find((b) => b.hsmName === hsm.name && b.folderUri?.startsWith(`${containerUrl}/`));
    if (recorded) uncatalogued.push(`${recorded.folderUri!.slice(containerUrl.length + 1)}9`);
    // Restores, some still running (or unsettled), reading one of this HSM's folders.
    const withFolder = backups.filter(
      (b) => b.hsmName === hsm.name && b.folderUri?.startsWith(containerUrl) && b.status === "Succeeded",
    );
    if (withFolder.length > 0 && random() < 0.6) {
      // Often the oldest folder: the one prune would otherwise take.
      const from =
        random() < 0.5 ? withFolder.reduce((a, b) => (a.startedAt < b.startedAt ? a : b)) : pick(random, withFolder);
      const status = pick(random, ["Running", "Starting", "TimedOut", "TimedOut", "Succeeded", "Failed"] as const);
      const at = new Date(now.getTime() - random() * DAY);
      restores.push({
        id: Catalog.newId(at),
        hsmName: hsm.name,
        hsmUrl: hsm.url,
        backupId: from.id,
        folderUri: from.folderUri!,
        keyName: "k1",
        status,
        startedAt: at.toISOString(),
      });
    }
  }
  return { backups, restores, uncatalogued, minKeep, retentionDays };
}

/** What a rule computed here says must survive: the floor, busy HSMs, folders restores read, young folders. */
function mustSurvive(catalog: RandomCatalog, now: Date, containerUrl: string): Set<string> {
  const keep = new Set<string>();
  const cutoff = now.getTime() - catalog.retentionDays * DAY;
  const time = (b: BackupRecord) => Date.parse(b.endedAt ?? b.startedAt);
  for (const hsm of new Set(catalog.backups.map((b) => b.hsmName))) {
    const own = catalog.backups.filter((b) => b.hsmName === hsm);
    const busy =
      own.some((b) => b.status === "Running" || b.status === "Starting") ||
      catalog.restores.some((r) => r.hsmName === hsm && (r.status === "Running" || r.status === "Starting"));
    const floor = own
      .filter((b) => b.status === "Succeeded" && b.verification !== "Failed" && b.folderUri !== undefined)
      .sort((a, b) => time(b) - time(a))
      .slice(0, catalog.minKeep);
    for (const b of own) {
      if (b.folderUri === undefined || b.status === "Pruned") continue;
      if (busy || floor.includes(b) || time(b) >= cutoff || ["Running", "Starting", "TimedOut"].includes(b.status))
        keep.add(b.folderUri);
    }
  }
  for (const r of catalog.restores) if (["Running", "Starting", "TimedOut"].includes(r.status)) keep.add(r.folderUri);
  return new Set([...keep].filter((uri) => uri.startsWith(`${containerUrl}/`)));
}

async function blobNames(deps: AppDeps): Promise<Set<string>> {
  const names = new Set<string>();
  const container = deps.storage.blobService.getContainerClient(deps.config.backupContainer);
  for await (const blob of container.listBlobsFlat()) names.add(blob.name);
  return names;
}

async function writeFolder(deps: AppDeps, folder: string, blobs = 2): Promise<void> {
  const container = deps.storage.blobService.getContainerClient(deps.config.backupContainer);
  for (let i = 0; i < blobs; i++) {
    const text = `part ${i} of ${folder}`;
    await container.getBlockBlobClient(`${folder}/part${i}.json`).upload(text, text.length);
  }
}

/** The plan alone: what a dry run and a real run must agree on. */
function planOf(report: PruneReport) {
  return report.hsms.map((h) => ({
    ...h,
    entries: h.entries.map(({ outcome: _o, blobsDeleted: _b, detail: _d, ...plan }: PruneEntry) => plan),
  }));
}

function depsFor(env: Env, extra: Env): AppDeps {
  return createDeps(parseConfig({ ...env, ...extra }));
}

describe("planPrune", () => {
  it("over 3000 random catalogs keeps the floor, the young, what restores read and everything of a busy HSM", () => {
    const containerUrl = "http://127.0.0.1:10000/devstoreaccount1/bk";
    const hsms = [0, 1, 2].map((i) => ({ name: `h${i}`, url: `https://h${i}.managedhsm.azure.net` }));
    const now = new Date("2026-12-01T03:00:00Z");
    const seen = new Map<string, number>();
    for (let seed = 1; seed <= 3000; seed++) {
      const catalog = randomCatalog(prng(seed), hsms, containerUrl, now);
      const plans = planPrune({
        hsms: hsms.map((h) => h.name),
        backups: catalog.backups,
        restores: catalog.restores,
        containerUrl,
        now,
        settings: { retentionDays: catalog.retentionDays, minKeep: catalog.minKeep },
      });
      const survive = mustSurvive(catalog, now, containerUrl);
      for (const e of plans.flatMap((p) => p.entries)) seen.set(e.reason, (seen.get(e.reason) ?? 0) + 1);
      const deleted = plans.flatMap((p) => p.entries.filter((e) => e.action === "delete"));
      for (const entry of deleted) {
        expect(survive.has(entry.folderUri!), `seed ${seed}: ${entry.recordId} ${entry.folderUri}`).toBe(false);
        expect(entry.folderUri!.startsWith(`${containerUrl}/`), `seed ${seed}`).toBe(true);
      }
      // Nothing more is kept than the rules ask: every folder past the retention and unprotected goes.
      const planned = new Set(deleted.map((e) => e.folderUri));
      for (const b of catalog.backups) {
        if (b.status === "Pruned" || b.folderUri === undefined || !b.folderUri.startsWith(`${containerUrl}/`)) continue;
        if (["Failed", "Skipped", "Canceled", "Succeeded"].includes(b.status) && !survive.has(b.folderUri))
          expect(planned.has(b.folderUri), `seed ${seed}: ${b.id} should go`).toBe(true);
      }
    }
    // The catalogs did meet every rule, many times over (so the checks above were not vacuous).
    for (const reason of PRUNE_REASONS) expect(seen.get(reason) ?? 0, reason).toBeGreaterThan(20);
  });
});

describe("prune over random catalogs in real storage", () => {
  it("leaves the floor of every HSM, every uncatalogued folder, what a restore reads and a busy HSM; dry run = real run", async () => {
    const app = await startTestApp({
      hsmCount: 0,
      env: { MANAGED_HSM_URLS: "https://pa.managedhsm.azure.net,https://pb.managedhsm.azure.net" },
    });
    stops.push(() => app.stop());
    let deletedTotal = 0;
    let busyTotal = 0;
    for (let seed = 1; seed <= 20; seed++) {
      const random = prng(seed * 7919);
      const base = { ...app.env, BACKUP_CONTAINER: uniqueName("pr"), CATALOG_TABLE: uniqueName("pr") };
      const probe = depsFor(base, {});
      await probe.prepare();
      const containerUrl = probe.storage.containerUrl(base.BACKUP_CONTAINER);
      const now = new Date();
      const catalog = randomCatalog(random, probe.config.hsms, containerUrl, now);
      const deps = depsFor(base, {
        RETENTION_DAYS: String(catalog.retentionDays),
        RETENTION_MIN_KEEP: String(catalog.minKeep),
      });
      await deps.prepare();
      for (const b of catalog.backups) await deps.catalog.insert("backup", b);
      for (const r of catalog.restores) await deps.catalog.insert("restore", r);
      const folders = new Set(
        catalog.backups
          .filter((b) => b.status !== "Pruned" && b.folderUri?.startsWith(`${containerUrl}/`))
          .map((b) => b.folderUri!.slice(containerUrl.length + 1)),
      );
      await Promise.all([...folders, ...catalog.uncatalogued].map((f) => writeFolder(deps, f)));
      const before = await blobNames(deps);

      const dry = await prune(deps, log, { dryRun: true });
      expect(await blobNames(deps), `seed ${seed}: a dry run deletes nothing`).toEqual(before);
      const real = await prune(deps, log);
      expect(real.errors).toEqual([]);
      expect(planOf(real), `seed ${seed}: dry run = real run`).toEqual(planOf(dry));

      const after = await blobNames(deps);
      const survive = mustSurvive(catalog, now, containerUrl);
      for (const uri of survive) {
        const folder = uri.slice(containerUrl.length + 1);
        expect(
          [...after].filter((n) => n.startsWith(`${folder}/`)),
          `seed ${seed}: ${folder} survives`,
        ).toHaveLength(2);
      }
      for (const folder of catalog.uncatalogued)
        expect(after.has(`${folder}/part0.json`) && after.has(`${folder}/part1.json`), `seed ${seed}: ${folder}`).toBe(
          true,
        );
      // Every blob that went was in a folder whose records are now all Pruned.
      const records = (await deps.catalog.list("backup", { top: 1000 })).items;
      for (const name of before) {
        if (after.has(name)) continue;
        const folder = `${containerUrl}/${name.split("/")[0]}`;
        const naming = records.filter((r) => r.folderUri === folder);
        expect(naming.length, `seed ${seed}: ${name} was named by a record`).toBeGreaterThan(0);
        expect(naming.every((r) => r.status === "Pruned" && r.prunedAt !== undefined)).toBe(true);
      }
      // And every record marked Pruned by this run lost its whole folder.
      const deletes = real.hsms.flatMap((h) => h.entries.filter((e) => e.action === "delete"));
      expect(deletes.every((e) => e.outcome === "pruned")).toBe(true);
      for (const e of deletes)
        expect([...after].some((n) => n.startsWith(`${e.folderUri!.split("/").pop()}/`))).toBe(false);
      // A second run finds nothing more to delete.
      deletedTotal += deletes.length;
      busyTotal += real.hsms.filter((h) => h.busy !== undefined).length;
      const again = await prune(deps, log);
      expect(again.hsms.flatMap((h) => h.entries.filter((e) => e.action === "delete"))).toEqual([]);
    }
    expect(deletedTotal).toBeGreaterThan(10);
    expect(busyTotal).toBeGreaterThan(0);
  }, 240_000);
});

describe("prune of real backup folders", () => {
  it("deletes the folders past the retention above the floor; the records stay Pruned and refuse a restore", async () => {
    // The emulator's clock moves with the app's: the end times it reports are a day apart too.
    let offset = 0;
    const app = await startTestApp({
      env: { RETENTION_DAYS: "3", RETENTION_MIN_KEEP: "1" },
      emulator: { now: () => Date.now() + offset },
    });
    stops.push(() => app.stop());
    app.emulators[0]!.keys.create("k1");
    for (let day = 0; day < 5; day++) {
      const [result] = await backupAll(app.deps, safeLogger(app.context()), { trigger: "cli" });
      expect(result!.outcome).toBe("Succeeded");
      app.clock.advance(DAY);
      offset += DAY;
    }
    const backups = (await app.deps.catalog.list("backup", { top: 10 })).items;
    expect(backups.map((b) => b.verification)).toEqual(["Passed", "Passed", "Passed", "Passed", "Passed"]);
    const before = await blobNames(app.deps);
    for (const b of backups) expect([...before].some((n) => n.startsWith(`${folderOf(b)}/`))).toBe(true);

    const dry = await prune(app.deps, safeLogger(app.context()), { dryRun: true });
    // While a restore of the HSM is being started (it holds the HSM's start lock) nothing is deleted.
    const hsmName = app.deps.config.hsms[0]!.name;
    const lock = (await app.deps.catalog.tryLock(hsmName, app.clock.now, 5 * 60_000))!;
    const held = await prune(app.deps, safeLogger(app.context("prune")));
    // And while prune holds it, a restore of that HSM is answered busy, saying why.
    const busy = await postRestore(
      postJson("/api/restores", { backupId: backups[0]!.id, keyName: "k1" }),
      app.context(),
      app.deps,
    );
    expect(busy.status).toBe(409);
    expect(bodyOf(busy).detail).toMatch(/being started, or its old backups are being pruned, right now/);
    await lock.release();
    expect(planOf(held)).toEqual(planOf(dry));
    expect(held).toMatchObject({ pruned: 0, left: 3 });
    expect(held.hsms[0]!.entries.filter((e) => e.action === "delete").map((e) => e.detail)).toEqual(
      Array(3).fill("a restore of this HSM is being started: nothing deleted this run"),
    );
    expect(await blobNames(app.deps)).toEqual(before);

    const real = await prune(app.deps, safeLogger(app.context("prune")));
    expect(planOf(real)).toEqual(planOf(dry));
    // Newest first, a day old: the floor; two days old: within the three days; days 2, 1 and 0 go.
    expect(real.hsms[0]!.entries.map((e) => `${e.action} ${e.reason}`)).toEqual([
      "keep floor",
      "keep withinRetention",
      "delete pastRetention",
      "delete pastRetention",
      "delete pastRetention",
    ]);
    expect(real.pruned).toBe(3);
    const after = await blobNames(app.deps);
    for (const [i, b] of backups.entries()) {
      const left = [...after].filter((n) => n.startsWith(`${folderOf(b)}/`));
      if (i < 2) expect(left).toEqual([...before].filter((n) => n.startsWith(`${folderOf(b)}/`)));
      else expect(left).toEqual([]);
    }
    const records = (await app.deps.catalog.list("backup", { top: 10 })).items;
    expect(records.map((r) => r.status)).toEqual(["Succeeded", "Succeeded", "Pruned", "Pruned", "Pruned"]);
    expect(Date.parse(records[2]!.prunedAt!)).toBeGreaterThanOrEqual(Date.parse(real.at));
    expect(app.logs.some((l) => l.includes(`deleted folder ${folderOf(backups[2]!)}`))).toBe(true);
    // One outcome event per folder meant to go: Left while the lock was held, then Pruned.
    expect(events(app.logs, "MhsmPruneOutcome")).toEqual([
      ...backups.slice(2).map((b) => ({
        hsm: hsmName,
        recordId: b.id,
        status: "Left",
        folderUri: b.folderUri,
        errorMessage: "a restore of this HSM is being started: nothing deleted this run",
      })),
      ...backups.slice(2).map((b) => ({ hsm: hsmName, recordId: b.id, status: "Pruned", folderUri: b.folderUri })),
    ]);
    // The timer runs the same prune: nothing is left to do, and the run succeeds saying so.
    await pruneTimer(onTime, app.context("prune"), app.deps);
    expect(app.logs.at(-1)).toMatch(
      /^information: Prune: 0 folder\(s\) deleted, 0 left, 0 error\(s\); retention 3 days, floor 1 per HSM$/,
    );

    // Health reads only what can be restored: the newest Succeeded backup, which the floor kept.
    const health = await checkHealth(app.deps);
    expect(health.hsms[0]).toMatchObject({ lastSuccessAt: backups[0]!.endedAt, verification: "Passed", stale: false });
    const listed = await app.deps.catalog.list("backup", { status: "Succeeded", top: 10 });
    expect(listed.items.map((b) => b.id)).toEqual([backups[0]!.id, backups[1]!.id]);
    // A pruned backup is no restore source: 409, saying so, nothing started.
    const refused = await postRestore(
      postJson("/api/restores", { backupId: backups[3]!.id, keyName: "k1" }),
      app.context(),
      app.deps,
    );
    expect(refused.status).toBe(409);
    expect(bodyOf(refused)).toMatchObject({ title: "Backup was pruned" });
    expect(bodyOf(refused).detail).toMatch(/was pruned at .*RETENTION_DAYS/);
    // A restore whose backup is pruned between its first read and its start lock is refused too: the
    // real catalog, with the prune's write made at that moment.
    const catalog: Catalog = Object.create(app.deps.catalog);
    catalog.tryLock = async (...args) => {
      const stored = (await app.deps.catalog.get("backup", backups[0]!.id))!;
      await app.deps.catalog.pruneUpdate(stored, { status: "Pruned", prunedAt: app.clock.now().toISOString() });
      return app.deps.catalog.tryLock(...args);
    };
    const raced = await postRestore(
      postJson("/api/restores", { backupId: backups[0]!.id, keyName: "k1" }),
      app.context(),
      { ...app.deps, catalog },
    );
    expect(raced.status).toBe(409);
    expect(bodyOf(raced)).toMatchObject({ title: "Backup was pruned" });
    expect(await app.deps.catalog.list("restore", { top: 5 })).toEqual({ items: [] });
    // The floor is whole: a restore from it runs.
    const started = await postRestore(
      postJson("/api/restores", { backupId: backups[1]!.id, keyName: "k1" }),
      app.context(),
      app.deps,
    );
    expect(started.status).toBe(202);
  }, 120_000);
});

/** Five daily backups of one HSM whose blob storage the app (and the HSM) reach through a fault proxy. */
async function backupsBehindBlobProxy(): Promise<{ app: TestApp; proxy: FaultProxy; backups: BackupRecord[] }> {
  const connectionString = inject("azuriteConnectionString");
  const endpoint = /(?:^|;)BlobEndpoint=([^;]+)/.exec(connectionString)![1]!;
  const proxy = await startFaultProxy(endpoint);
  stops.push(() => proxy.stop());
  const app = await startTestApp({
    env: {
      BackupStorage: withEndpoint(connectionString, "BlobEndpoint", proxy.url),
      RETENTION_DAYS: "1",
      RETENTION_MIN_KEEP: "1",
    },
  });
  stops.push(() => app.stop());
  app.emulators[0]!.keys.create("k1");
  for (let day = 0; day < 5; day++) {
    await backupAll(app.deps, safeLogger(app.context()), { trigger: "cli" });
    app.clock.advance(DAY);
  }
  return { app, proxy, backups: (await app.deps.catalog.list("backup", { top: 10 })).items };
}

/** Storage's error answer, as the blob service sends it. */
function storageError(status: number, code: string) {
  return {
    kind: "status" as const,
    status,
    contentType: "application/xml",
    headers: { "x-ms-error-code": code },
    body: `<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>refused by the test</Message></Error>`,
  };
}

const folderOf = (b: BackupRecord) => b.folderUri!.split("/").pop()!;

describe("a folder storage refuses to delete", () => {
  it("is reported and left, its record noted; the other folders go and the run succeeds", async () => {
    const { app, proxy, backups } = await backupsBehindBlobProxy();
    const [, immutable, forbidden, leased, plain] = backups;
    // An immutability policy answers 409 BlobImmutableDueToPolicy; a missing role answers 403.
    const refusal = storageError;
    proxy.inject(refusal(409, "BlobImmutableDueToPolicy"), {
      method: "DELETE",
      path: new RegExp(`/${folderOf(immutable!)}/`),
      times: 50,
    });
    proxy.inject(refusal(403, "AuthorizationPermissionMismatch"), {
      method: "DELETE",
      path: new RegExp(`/${folderOf(forbidden!)}/`),
      times: 50,
    });
    // A real lease on one blob of another folder.
    const container = app.deps.storage.blobService.getContainerClient(app.container);
    let leasedBlob = "";
    for await (const blob of container.listBlobsFlat({ prefix: `${folderOf(leased!)}/` })) leasedBlob = blob.name;
    await container.getBlobClient(leasedBlob).getBlobLeaseClient().acquireLease(-1);
    const before = await blobNames(app.deps);

    const run = await cli(app, ["prune", "--json"]);
    expect(run.code).toBe(0);
    const report = JSON.parse(run.stdout) as PruneReport;
    expect(report.errors).toEqual([]);
    const byId = new Map(report.hsms[0]!.entries.map((e) => [e.recordId, e]));
    expect(byId.get(immutable!.id)).toMatchObject({ action: "delete", outcome: "left", blobsDeleted: 0 });
    expect(byId.get(immutable!.id)!.detail).toMatch(/409 BlobImmutableDueToPolicy/);
    expect(byId.get(forbidden!.id)).toMatchObject({ action: "delete", outcome: "left" });
    expect(byId.get(forbidden!.id)!.detail).toMatch(/403 AuthorizationPermissionMismatch/);
    expect(byId.get(leased!.id)).toMatchObject({ action: "delete", outcome: "left", blobsDeleted: 0 });
    expect(byId.get(leased!.id)!.detail).toMatch(/is leased/);
    expect(byId.get(plain!.id)).toMatchObject({ action: "delete", outcome: "pruned" });
    expect(report).toMatchObject({ pruned: 1, left: 3 });

    const after = await blobNames(app.deps);
    for (const b of [immutable!, forbidden!, leased!]) {
      const folder = `${folderOf(b)}/`;
      expect([...after].filter((n) => n.startsWith(folder))).toEqual([...before].filter((n) => n.startsWith(folder)));
      const record = (await app.deps.catalog.get("backup", b.id))!.record;
      expect(record.status).toBe("Succeeded");
      expect(record.pruneNote).toMatch(/nothing deleted/);
    }
    expect([...after].some((n) => n.startsWith(`${folderOf(plain!)}/`))).toBe(false);
    expect((await app.deps.catalog.get("backup", plain!.id))!.record.status).toBe("Pruned");
    // The warnings name each folder left, and no SAS or key.
    expect(run.stderr).toMatch(new RegExp(`folder ${folderOf(immutable!)}: nothing deleted`));
    expect(run.stderr).not.toMatch(/sig=|AccountKey/);
    const outcomes = run.stderr
      .split("\n")
      .filter((l) => l.startsWith("MhsmPruneOutcome "))
      .map((l) => JSON.parse(l.slice(l.indexOf(" ") + 1)));
    expect(outcomes.map((e) => `${e.recordId} ${e.status}`).sort()).toEqual(
      [immutable!, forbidden!, leased!].map((b) => `${b.id} Left`).sort(),
    );
    expect(outcomes.every((e) => e.errorMessage.startsWith("nothing deleted"))).toBe(true);
  }, 120_000);
});

describe("storage failing while prune deletes", () => {
  it("fails that HSM's run, naming it, keeps the plan in the report and marks only what was done", async () => {
    const { app, proxy, backups } = await backupsBehindBlobProxy();
    const [, first, broken, ...rest] = backups;
    proxy.inject(storageError(500, "InternalError"), {
      method: "DELETE",
      path: new RegExp(`/${folderOf(broken!)}/`),
      times: 50,
    });
    const run = await cli(app, ["prune", "--json"]);
    expect(run.code).toBe(4);
    const report = JSON.parse(run.stdout) as PruneReport;
    expect(report.errors).toEqual([expect.stringMatching(new RegExp(`^HSM ${app.deps.config.hsms[0]!.name}: `))]);
    expect(run.stderr).toMatch(/Could not prune: HSM testhsm0: /);
    const byId = new Map(report.hsms[0]!.entries.map((e) => [e.recordId, e]));
    expect(byId.get(first!.id)).toMatchObject({ action: "delete", outcome: "pruned" });
    expect(byId.get(broken!.id)).toMatchObject({ action: "delete", outcome: "notReached" });
    for (const b of [broken!, ...rest]) {
      expect(byId.get(b.id)).toMatchObject({ action: "delete", outcome: "notReached" });
      expect((await app.deps.catalog.get("backup", b.id))!.record.status).toBe("Succeeded");
    }
    expect((await app.deps.catalog.get("backup", first!.id))!.record.status).toBe("Pruned");
    // The lock was released: a later run, with storage well again, finishes the job.
    proxy.clear();
    const again = await prune(app.deps, log);
    expect(again).toMatchObject({ pruned: 1 + rest.length, left: 0, errors: [] });
  }, 120_000);
});
