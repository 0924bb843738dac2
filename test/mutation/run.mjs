/**
 * `npm run mutation [-- stryker options]`: runs Stryker on the Node 22 the project already fetches for
 * `test:node22` (Stryker 10 refuses Node 20), times it, and prints the per-file summary.
 * Extra arguments go to `stryker run`, e.g. `npm run mutation -- --mutate src/lib/redact.ts`.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { printSummary } from "./summary.mjs";

const INCREMENTAL = "test/mutation/stryker-incremental.json";
const before = existsSync(INCREMENTAL) ? readFileSync(INCREMENTAL, "utf8") : undefined;

const started = Date.now();
const node22 = process.versions.node.split(".")[0] === "22"
  ? [process.execPath]
  : ["npm", "exec", "--yes", "--package=node@22.23.3", "--", "node"];
const [command, ...prefix] = node22;
const result = spawnSync(command, [...prefix, "node_modules/@stryker-mutator/core/bin/stryker.js", "run", ...process.argv.slice(2)], { stdio: "inherit" });
const seconds = Math.round((Date.now() - started) / 1000);
if (result.status !== 0) {
  console.error(`Stryker failed (exit ${result.status ?? result.signal}) after ${seconds} s`);
  process.exit(result.status ?? 1);
}
keepOtherFiles();
if (existsSync("reports/mutation/mutation.json")) printSummary("reports/mutation/mutation.json", "test/mutation/equivalent.json");
console.log(`\nMutation run: ${Math.floor(seconds / 60)} min ${seconds % 60} s`);

/**
 * Stryker writes the incremental file from this run's report alone, so a run narrowed with --mutate
 * would drop every other file's results; they are carried over (this run's files and tests win).
 */
function keepOtherFiles() {
  if (before === undefined || !existsSync(INCREMENTAL)) return;
  const old = JSON.parse(before);
  const now = JSON.parse(readFileSync(INCREMENTAL, "utf8"));
  now.files = { ...old.files, ...now.files };
  now.testFiles = { ...old.testFiles, ...now.testFiles };
  writeFileSync(INCREMENTAL, `${JSON.stringify(now, null, 2)}\n`);
}
