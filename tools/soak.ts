/**
 * `npm run soak`: hundreds of bad nights in a few minutes, then a count of everything that must
 * never happen. The app's real handlers (nightlyBackup, reconcile) run in-process with the real
 * InvocationContext against Azurite and three Managed HSM emulators; a fault proxy sits in front of
 * the catalog table and of each HSM, and a seeded plan decides every night's faults. One HSM has no
 * faults at all, so "a healthy HSM was not backed up" can be counted. Time between runs is simulated
 * (the app's and the emulators' clock); every wait the app asks for advances that clock and costs a
 * few real milliseconds. Exits 1 when any count in the verdict is not 0, listing each violation.
 *
 *   npm run soak -- [--runs 500] [--seed N] [--reconcile-every 1]
 */
import { randomInt } from "node:crypto";
import { createServer } from "node:net";
import functions, { type Timer } from "@azure/functions";
import { createDefaultHttpClient, type HttpClient, type PipelineRequest } from "@azure/core-rest-pipeline";
import { TableClient } from "@azure/data-tables";
import { BlobServiceClient } from "@azure/storage-blob";
import { nightlyBackup } from "../src/handlers/nightlyBackup.js";
import { reconcileTimer } from "../src/handlers/reconcile.js";
import { backupAll } from "../src/lib/backup.js";
import type { BackupRecord } from "../src/lib/catalog.js";
import { FUNCTION_TIMEOUT_MS, parseConfig, RUN_MARGIN_MS } from "../src/lib/config.js";
import { createDeps } from "../src/lib/deps.js";
import { safeLogger } from "../src/lib/logger.js";
import { reconcile } from "../src/lib/reconcile.js";
import { AZURITE_KEY, startAzurite } from "./azurite.js";
import { prng, startFaultProxy, withEndpoint, type FaultProxy } from "./fault-proxy.js";
import { HSM_RESOURCE, startHsmEmulator } from "./hsm-emulator/index.js";
import { applyIdentityEnv, startIdentityEndpoint, unsignedJwt } from "./identity-endpoint.js";
import { between, drawHsmFaults, TABLE_CHAOS, type HsmUnderTest } from "./soak/faults.js";
import {
  checkHealthy,
  checkRecords,
  checkSecrets,
  RULES,
  type EmulatorJob,
  type RunWindow,
  type Violation,
} from "./soak/verify.js";

const { InvocationContext } = functions;
const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;
const JOB_TIMEOUT_MINUTES = 30;
const CONTAINER = "soakbackups";
const TABLE = "soakcatalog";
/** One invocation that takes longer than this (real time) is reported stuck. */
const INVOCATION_LIMIT_MS = 120_000;
const FINAL_RECONCILE_PASSES = 30;
const TIMER: Timer = {
  isPastDue: false,
  schedule: { adjustForDST: false },
  scheduleStatus: { last: "", next: "", lastUpdated: "" },
};

interface Options {
  readonly runs: number;
  readonly seed: number;
  readonly reconcileEvery: number;
}

function parseArgs(argv: readonly string[]): Options {
  const value = (name: string, fallback: number): number => {
    const at = argv.indexOf(`--${name}`);
    if (at < 0) return fallback;
    const raw = argv[at + 1] ?? "";
    if (!/^\d+$/.test(raw)) throw new Error(`--${name} needs a whole number, got "${raw}"`);
    return Number(raw);
  };
  return {
    runs: value("runs", 500),
    seed: value("seed", randomInt(1, 2 ** 31)),
    reconcileEvery: Math.max(1, value("reconcile-every", 1)),
  };
}

/** The app's and the emulators' clock: real time plus however far the soak moved it. */
class SimulatedClock {
  private offset = 0;
  nowMs = (): number => Date.now() + this.offset;
  now = (): Date => new Date(this.nowMs());
  advance(ms: number): void {
    this.offset += ms;
  }
  /** Moves the clock to `at` unless it is already past it: waits that overlap pass the time once. */
  advanceTo(at: number): void {
    this.offset = Math.max(this.offset, at - Date.now());
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  const startedAt = performance.now();
  const output: string[] = [];
  const print = (line = "") => {
    output.push(line);
    console.log(line);
  };
  const elapsed = () => `${((performance.now() - startedAt) / 1000).toFixed(1)} s`;
  print(
    `Soak: ${options.runs} runs, seed ${options.seed}, reconcile every ${options.reconcileEvery} run(s) (replay: npm run soak -- --seed ${options.seed} --runs ${options.runs})`,
  );

  const clock = new SimulatedClock();
  const stops: (() => Promise<void>)[] = [];
  const violations: Violation[] = [];
  try {
    const azurite = await startAzurite();
    stops.push(() => azurite.stop());
    const identity = await startIdentityEndpoint();
    stops.push(() => identity.stop());
    applyIdentityEnv(identity.env);
    const tableProxy = await startFaultProxy(azurite.tableEndpoint, { seed: options.seed ^ 0x5eed });
    stops.push(() => tableProxy.stop());

    // app -> fault proxy -> tap -> emulator. The tap notes the job id of every start the emulator
    // accepted (lost answers included): the emulators' own job log. The emulator is named after the
    // proxy's port, because that is the URL the app knows it by (loopback-<port>) and names folders by.
    const accepted = new Map<string, string>();
    const hsms: (HsmUnderTest & { label: string; tap: FaultProxy })[] = [];
    for (const label of ["steady", "flaky", "hostile"]) {
      const port = await freePort();
      const tap = await startFaultProxy(`http://127.0.0.1:${port}`);
      stops.push(() => tap.stop());
      const proxy = await startFaultProxy(tap.origin, { seed: options.seed + hsms.length + 1 });
      stops.push(() => proxy.stop());
      const name = `loopback-${new URL(proxy.origin).port}`;
      const emulator = await startHsmEmulator({
        name,
        port,
        retryAfterSeconds: 1,
        jobDurationMs: 50,
        now: clock.nowMs,
      });
      stops.unshift(() => emulator.stop());
      tap.inject(
        {
          kind: "rewrite",
          transform: (answer) => {
            const jobId = answer.status === 202 ? /"jobId":"([0-9a-f]+)"/.exec(answer.bodyText)?.[1] : undefined;
            if (jobId) accepted.set(jobId, name);
            return answer;
          },
        },
        { method: "POST", path: /^\/backup\/?$/, times: 1e9 },
      );
      hsms.push({ label, proxy, tap, emulator, tampered: new Set() });
    }

    // Every token and SAS signature the app sends, so the verdict can look for the exact values.
    const sent = new Set<string>([AZURITE_KEY, encodeURIComponent(AZURITE_KEY)]);
    const noteSecrets = (request: PipelineRequest) => {
      const authorization = request.headers.get("authorization");
      if (authorization) sent.add(authorization.replace(/^Bearer\s+/i, ""));
      if (typeof request.body === "string") {
        for (const match of request.body.matchAll(/sig=([^&"\s]+)/g)) {
          sent.add(match[1]!);
          sent.add(decodeURIComponent(match[1]!));
        }
      }
    };
    const transport = createDefaultHttpClient();
    const httpClient: HttpClient = { sendRequest: (request) => (noteSecrets(request), transport.sendRequest(request)) };
    // The HSMs wait side by side, as they would for real: a wait ends at its own end time on the
    // simulated clock, so two overlapping 60 s waits pass 60 s, not 120 s.
    const delay = (ms: number, signal?: AbortSignal) =>
      new Promise<void>((resolve, reject) => {
        if (signal?.aborted) return reject(signal.reason);
        const until = clock.nowMs() + ms;
        const onAbort = () => {
          clearTimeout(timer);
          reject(signal!.reason);
        };
        const timer = setTimeout(
          () => {
            signal?.removeEventListener("abort", onAbort);
            clock.advanceTo(until);
            resolve();
          },
          Math.min(15, Math.max(1, Math.round(ms / 100))),
        );
        signal?.addEventListener("abort", onAbort, { once: true });
      });

    const config = parseConfig({
      MANAGED_HSM_URLS: hsms.map((h) => h.proxy.origin).join(","),
      BackupStorage: withEndpoint(azurite.connectionString, "TableEndpoint", tableProxy.url),
      BACKUP_CONTAINER: CONTAINER,
      CATALOG_TABLE: TABLE,
      JOB_TIMEOUT_MINUTES: String(JOB_TIMEOUT_MINUTES),
      // Each night runs at the soak's own time of day; the schedule's slot is kept twelve hours away so
      // that reconcile (20 minutes after each night) is never held back by its guard around a slot.
      BACKUP_SCHEDULE: `0 0 ${(new Date().getUTCHours() + 12) % 24} * * *`,
    });
    const deps = createDeps(config, {
      now: clock.now,
      storageOptions: { requestTimeoutMs: 1000 },
      hsmClientOptions: {
        httpClient,
        delay,
        defaultPollIntervalMs: 2000,
        requestTimeoutMs: 1000,
        maxPollIntervalMs: 60_000,
      },
    });
    const healthy = config.hsms[0]!.name;
    const labelOf = new Map(hsms.map((h, i) => [config.hsms[i]!.name, h.label]));
    print(
      `HSMs: ${config.hsms.map((h) => `${labelOf.get(h.name)}=${h.name}`).join(", ")}; ${healthy} (steady) gets no HSM faults`,
    );

    const logs: string[] = [];
    const context = (functionName: string, run: number) =>
      new InvocationContext({
        invocationId: `soak-${functionName}-${run}`,
        functionName,
        logHandler: (level, ...args) =>
          logs.push(`[run ${run} ${functionName} ${level}] ${args.map(String).join(" ")}`),
      });
    const bounded = async (what: string, work: Promise<unknown>): Promise<"ok" | "threw" | "stuck"> => {
      let timer: NodeJS.Timeout | undefined;
      const limit = new Promise<"stuck">(
        (resolve) => (timer = setTimeout(() => resolve("stuck"), INVOCATION_LIMIT_MS)),
      );
      const result = await Promise.race([
        work.then(
          () => "ok" as const,
          () => "threw" as const,
        ),
        limit,
      ]);
      clearTimeout(timer);
      if (result === "stuck")
        violations.push({ check: "stuck", detail: `${what} still running after ${INVOCATION_LIMIT_MS / 1000} s` });
      return result;
    };

    await deps.prepare();
    const rng = prng(options.seed);
    const windows: RunWindow[] = [];
    const tally = {
      threw: 0,
      killed: 0,
      reconciles: 0,
      reconcileThrew: 0,
      badTableNights: 0,
      backupMs: 0,
      reconcileMs: 0,
    };
    const slowest: { ms: number; what: string }[] = [];
    const faultCounts = new Map<string, number>();
    for (let run = 1; run <= options.runs; run++) {
      clock.advance(DAY);
      const faults: string[] = [];
      for (const h of hsms.slice(1)) {
        h.emulator.faults.setJobDurationMs(between(rng, 20, 200));
        for (const fault of drawHsmFaults(rng)) {
          fault.apply(h, rng);
          faults.push(`${h.label}:${fault.name}`);
          faultCounts.set(fault.name, (faultCounts.get(fault.name) ?? 0) + 1);
        }
      }
      if (rng() < 0.3) {
        tableProxy.chaos(TABLE_CHAOS, { status: 503 });
        faults.push("table:chaos");
        tally.badTableNights++;
      }
      const killed = rng() < 0.1;
      const from = clock.nowMs();
      const ctx = context("nightlyBackup", run);
      let work: Promise<unknown>;
      if (killed) {
        // A recycled worker: the wait ends once the healthy HSM's job was read once; what the others were doing is cut off too.
        tally.killed++;
        const recycle = new AbortController();
        work = backupAll(deps, safeLogger(ctx), {
          trigger: "timer",
          runDeadline: new Date(from + FUNCTION_TIMEOUT_MS - RUN_MARGIN_MS),
          abortSignal: recycle.signal,
          onProgress: (hsm) => {
            if (hsm.name === healthy) recycle.abort(new Error("the worker was recycled (soak)"));
          },
        });
      } else {
        work = nightlyBackup(TIMER, ctx, deps);
      }
      const runStarted = performance.now();
      if ((await bounded(`run ${run} nightlyBackup`, work)) === "threw") tally.threw++;
      const runMs = performance.now() - runStarted;
      tally.backupMs += runMs;
      slowest.push({ ms: runMs, what: `run ${run} (${faults.join(",") || "none"})` });
      windows.push({ run, from, to: Infinity, killed, faults: faults.join(",") || "none" });
      if (windows.length > 1) (windows[windows.length - 2] as { to: number }).to = from;
      // A killed wait leaves jobs running: let them end (they are real-time short) before the next night.
      if (killed) await sleep(250);
      clock.advance(20 * MINUTE);
      if (run % options.reconcileEvery === 0) {
        tally.reconciles++;
        const reconcileStarted = performance.now();
        if ((await bounded(`run ${run} reconcile`, reconcileTimer(TIMER, context("reconcile", run), deps))) === "threw")
          tally.reconcileThrew++;
        tally.reconcileMs += performance.now() - reconcileStarted;
      }
      for (const h of hsms) {
        h.proxy.clear();
        h.emulator.faults.throttleNext(0, 429, 0);
      }
      tableProxy.clear();
      if (run % 25 === 0)
        print(
          `  run ${run}/${options.runs}  ${elapsed()}  jobs accepted ${accepted.size}  failed invocations ${tally.threw}`,
        );
    }

    // Every fault healed, every job ended, the clock past every deadline: reconcile until it changes nothing.
    await sleep(500);
    clock.advance((JOB_TIMEOUT_MINUTES + 30) * MINUTE);
    let passes = 0;
    for (; passes < FINAL_RECONCILE_PASSES; passes++) {
      const report = await reconcile(deps, safeLogger(context("finalReconcile", passes + 1)), {});
      if (report.changed.length === 0 && report.discovered.length === 0 && report.errors.length === 0) break;
    }
    print(
      `Final reconcile: ${passes + 1} pass(es)${passes === FINAL_RECONCILE_PASSES ? " (limit reached: still changing)" : ""}  ${elapsed()}`,
    );

    // What the emulators did, asked directly (no proxy), and what the container holds.
    const token = unsignedJwt({ aud: HSM_RESOURCE, exp: Math.floor(Date.now() / 1000) + 3600, oid: "soak-verifier" });
    const emulatorOf = new Map(hsms.map((h) => [h.emulator.name, h.emulator]));
    const jobs = new Map<string, EmulatorJob>();
    const ids = [...accepted];
    for (let i = 0; i < ids.length; i += 16) {
      await Promise.all(
        ids.slice(i, i + 16).map(async ([jobId, hsm]) => {
          const response = await fetch(`${emulatorOf.get(hsm)!.url}/backup/${jobId}/pending?api-version=7.6`, {
            headers: { authorization: `Bearer ${token}` },
          });
          const body = (await response.json()) as {
            status?: string;
            azureStorageBlobContainerUri?: string | null;
            startTime?: number;
          };
          jobs.set(jobId, {
            hsm,
            jobId,
            status: response.status === 200 ? (body.status ?? "?") : `HTTP ${response.status}`,
            ...(body.azureStorageBlobContainerUri ? { folderUri: body.azureStorageBlobContainerUri } : {}),
            ...(typeof body.startTime === "number" ? { startTime: body.startTime * 1000 } : {}),
          });
        }),
      );
    }
    const containerUrl = deps.storage.containerUrl(CONTAINER);
    const folders = new Set<string>();
    const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER);
    for await (const item of container.listBlobsByHierarchy("/", { prefix: "mhsm-" })) {
      if (item.kind === "prefix") folders.add(`${containerUrl}/${item.name.replace(/\/$/, "")}`);
    }
    const entities: Record<string, unknown>[] = [];
    const table = TableClient.fromConnectionString(azurite.connectionString, TABLE, { allowInsecureConnection: true });
    for await (const entity of table.listEntities<Record<string, unknown>>()) entities.push({ ...entity });
    const records = entities
      .filter((e) => e.partitionKey === "backup")
      .map((e) => {
        const { partitionKey: _p, rowKey, etag: _e, timestamp: _t, "odata.metadata": _m, ...fields } = e;
        return { id: rowKey, ...fields } as unknown as BackupRecord;
      });
    const startsAnswered = hsms.reduce(
      (n, h) =>
        n +
        h.emulator.requests.filter((r) => r.method === "POST" && /^\/backup\/?$/.test(r.path) && r.status === 202)
          .length,
      0,
    );
    if (startsAnswered !== accepted.size) {
      violations.push({
        check: "lostJob",
        detail: `the emulators answered ${startsAnswered} backup starts with 202, but the tap saw ${accepted.size}: the job log is incomplete`,
      });
    }

    const truth = { jobs, folders, tampered: new Set(hsms.flatMap((h) => [...h.tampered])) };
    violations.push(...checkRecords(records, truth, windows), ...checkHealthy(records, truth, healthy, windows, logs));
    violations.push(
      ...checkSecrets(
        [
          ...logs.map((text, i) => ({ where: `log line ${i + 1}`, text })),
          ...entities.map((e) => ({
            where: `catalog entity ${String(e.partitionKey)}/${String(e.rowKey)}`,
            text: JSON.stringify(e),
          })),
          ...output.map((text, i) => ({ where: `output line ${i + 1}`, text })),
        ],
        sent,
      ),
    );

    const count = (check: Violation["check"]) => violations.filter((v) => v.check === check).length;
    const by = <T>(items: readonly T[], key: (item: T) => string) =>
      [...items.reduce((m, item) => m.set(key(item), (m.get(key(item)) ?? 0) + 1), new Map<string, number>())]
        .map(([k, n]) => `${k} ${n}`)
        .join(", ");
    const jobList = [...jobs.values()];

    if (violations.length > 0) {
      print();
      print("Violations (at most 25 per check):");
      for (const check of new Set(violations.map((v) => v.check))) {
        const of = violations.filter((v) => v.check === check);
        print(`  ${check} (${of.length}):`);
        for (const v of of.slice(0, 25)) print(`    ${v.detail}`);
      }
    }
    print();
    print(RULES);
    print();
    const row = (label: string, value: string | number) => print(`  ${label.padEnd(46)} ${value}`);
    print(`Summary (seed ${options.seed}, elapsed ${elapsed()}):`);
    row(
      "scheduled runs (nightlyBackup)",
      `${options.runs} (killed waits ${tally.killed}, invocations failed as designed ${tally.threw}, bad table nights ${tally.badTableNights})`,
    );
    row(
      "real time in backup runs / reconcile runs",
      `${(tally.backupMs / 1000).toFixed(1)} s / ${(tally.reconcileMs / 1000).toFixed(1)} s; slowest: ${slowest
        .sort((a, b) => b.ms - a.ms)
        .slice(0, 3)
        .map((s) => `${s.what} ${Math.round(s.ms)} ms`)
        .join("; ")}`,
    );
    row(
      "reconcile invocations",
      `${tally.reconciles} (failed as designed ${tally.reconcileThrew}) + ${passes + 1} final pass(es)`,
    );
    row(
      "jobs the emulators started (backups)",
      `${jobs.size} (${by(jobList, (j) => `${labelOf.get(j.hsm)}`)}; ${by(jobList, (j) => j.status)})`,
    );
    row(
      "catalog records",
      `${records.length} (${by(records, (r) => r.status)}; discovered ${records.filter((r) => r.origin === "discovered").length}; corrected ${
        by(
          records.filter((r) => r.correctedFrom),
          (r) => `from ${r.correctedFrom}`,
        ) || "none"
      })`,
    );
    row("HSM faults drawn", [...faultCounts].map(([k, n]) => `${k} ${n}`).join(", "));
    row(
      "table proxy",
      by(
        tableProxy.log.filter((e) => e.fault),
        (e) => e.fault!,
      ) || "no faults",
    );
    print("  ---- each must be 0 ----");
    row("duplicates", count("duplicate"));
    row("records still Starting/Running", count("unsettled"));
    row("records that disagree with the emulator", count("disagrees"));
    row("jobs started that no record holds (lost)", count("lostJob"));
    row("backups the catalog does not offer", count("unofferedBackup"));
    row("healthy-HSM runs that did not back up", count("healthy"));
    row("secrets in logs/records/output", count("secret"));
    row("stuck invocations", count("stuck"));
    print(violations.length === 0 ? "SOAK PASSED" : `SOAK FAILED: ${violations.length} violation(s)`);
    return violations.length === 0 ? 0 : 1;
  } finally {
    for (const stop of stops) await stop().catch((error: unknown) => console.error(`stopping: ${String(error)}`));
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(`Soak failed to run: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(2);
  },
);
