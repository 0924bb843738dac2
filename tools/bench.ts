/**
 * `npm run bench`: figures that matter to operators, measured against the same local stand-ins the
 * tests use. Not a test: it prints numbers and exits 0 unless something broke.
 *
 * - cold start: importing every function file (what a new worker pays before its first invocation)
 * - SAS signing (shared key), per signature
 * - catalog: newest-first page of 25 with 2,000 records in the table, unfiltered and filtered by HSM
 * - one full backup through the app against the emulator (job time 0), app overhead per backup
 */
import { spawnSync } from "node:child_process";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Catalog } from "../src/lib/catalog.js";
import { parseConfig } from "../src/lib/config.js";
import { createDeps } from "../src/lib/deps.js";
import { backupHsm } from "../src/lib/backup.js";
import { safeLogger } from "../src/lib/logger.js";
import { startAzurite } from "./azurite.js";
import { startHsmEmulator } from "./hsm-emulator/index.js";
import { applyIdentityEnv, startIdentityEndpoint } from "./identity-endpoint.js";
import { HSM_DOMAIN, hsmRealNames } from "./loopback-transport.js";
import { createTestCa } from "./tls.js";

function stats(samples: number[]): string {
  const sorted = [...samples].sort((a, b) => a - b);
  const pick = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return `median ${pick(0.5).toFixed(2)} ms, p95 ${pick(0.95).toFixed(2)} ms (n=${samples.length})`;
}

async function time(runs: number, fn: () => Promise<unknown>): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await fn();
    samples.push(performance.now() - start);
  }
  return samples;
}

const quiet = safeLogger({ log: () => {}, warn: () => {}, error: () => {} });

async function main(): Promise<void> {
  const functionsDir = fileURLToPath(new URL("../src/functions/", import.meta.url));
  const cold: number[] = [];
  for (let i = 0; i < 5; i++) {
    const run = spawnSync(process.execPath, ["--input-type=module", "-e",
      `const t=performance.now(); for (const f of ["backups","restores","nightlyBackup","health"]) await import(${JSON.stringify(functionsDir)}+f+".js"); console.log(performance.now()-t);`],
      { encoding: "utf8", env: { ...process.env, MANAGED_HSM_URLS: "https://x.managedhsm.azure.net", BackupStorage: "UseDevelopmentStorage=true" } });
    cold.push(Number(run.stdout.trim().split("\n").at(-1)));
  }
  console.log(`cold import of all function files: ${stats(cold)}`);

  const azurite = await startAzurite();
  const identity = await startIdentityEndpoint();
  applyIdentityEnv(identity.env);
  // The production path: https under the HSM's real-looking name, TLS and the challenge check included.
  const benchCa = createTestCa([`*.${HSM_DOMAIN}`]);
  const hsm = await startHsmEmulator({ name: "benchhsm", tls: { cert: benchCa.cert, key: benchCa.key }, retryAfterSeconds: 0, jobDurationMs: 0 });
  const { urls: [hsmUrl = ""], transport } = hsmRealNames([hsm], benchCa.ca);
  try {
    const deps = createDeps(parseConfig({
      MANAGED_HSM_URLS: hsmUrl, BackupStorage: azurite.connectionString, BACKUP_CONTAINER: "bench", CATALOG_TABLE: "bench",
    }), { hsmClientOptions: { defaultPollIntervalMs: 10, httpClient: transport } });
    await deps.prepare();

    console.log(`SAS signing (shared key): ${stats(await time(200, () => deps.storage.containerSas("bench", "backup", 60)))}`);

    const target = deps.config.hsms[0]!;
    for (const name of ["k1", "k2", "k3"]) hsm.keys.create(name);
    const backups = await time(20, async () => {
      const result = await backupHsm(deps, target, quiet, { trigger: "bench" });
      if (result.outcome !== "Succeeded") throw new Error(`bench backup ${result.outcome}: ${result.record?.errorMessage ?? result.detail}`);
    });
    console.log(`full backup through the app (emulator over https, 3 keys, job time 0, poll 10 ms): ${stats(backups)}`);

    const start = Date.now() - 2_000 * 86_400_000;
    const inserts: Promise<unknown>[] = [];
    for (let i = 0; i < 2_000; i++) {
      const at = new Date(start + i * 86_400_000);
      inserts.push(deps.catalog.insert("backup", {
        id: Catalog.newId(at), hsmName: i % 4 === 0 ? "other" : target.name, hsmUrl: target.url, status: i % 10 === 0 ? "Failed" : "Succeeded",
        startedAt: at.toISOString(), endedAt: at.toISOString(), trigger: "bench",
      }));
      if (inserts.length === 50) await Promise.all(inserts.splice(0));
    }
    await Promise.all(inserts);
    console.log(`catalog page of 25, newest first, 2,020 records: ${stats(await time(50, () => deps.catalog.list("backup", { top: 25 })))}`);
    console.log(`catalog page of 25 filtered by HSM and status: ${stats(await time(50, () => deps.catalog.list("backup", { top: 25, hsmName: "other", status: "Succeeded" })))}`);
  } finally {
    transport.close();
    await hsm.stop();
    await identity.stop();
    await azurite.stop();
  }
}

main().then(() => process.exit(0), (error: unknown) => {
  console.error(error);
  process.exit(1);
});
