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
// Also after a failed or interrupted run: Stryker saves what it had tested, and a narrowed run's
// file must not lose the other files' results.
keepOtherResults();
if (result.status !== 0) {
  console.error(`Stryker failed (exit ${result.status ?? result.signal}) after ${seconds} s`);
  process.exit(result.status ?? 1);
}
// The incremental file is a whole report (the same schema as reports/mutation/mutation.json), and
// after keepOtherResults it covers every file, also after a run narrowed with --mutate.
if (existsSync(INCREMENTAL)) printSummary(INCREMENTAL, "test/mutation/equivalent.json");
console.log(`\nMutation run: ${Math.floor(seconds / 60)} min ${seconds % 60} s`);

/**
 * Stryker writes the incremental file from this run's report alone, so a run narrowed with --mutate
 * (to files, or to lines as in `src/lib/catalog.ts:240-260`) would drop every other result. They are
 * carried over: other files whole, and in a file whose source did not change, the mutants this run
 * did not test. This run's results and tests win.
 */
function keepOtherResults() {
  if (before === undefined || !existsSync(INCREMENTAL)) return;
  const old = JSON.parse(before);
  const now = JSON.parse(readFileSync(INCREMENTAL, "utf8"));
  const identity = (m) => `${m.location.start.line}:${m.location.start.column}:${m.mutatorName}:${m.replacement ?? ""}`;
  for (const [file, result] of Object.entries(old.files)) {
    const current = now.files[file];
    if (current === undefined) now.files[file] = result;
    else if (current.source === result.source) {
      const tested = new Set(current.mutants.map(identity));
      current.mutants.push(...result.mutants.filter((m) => !tested.has(identity(m))));
    }
  }
  now.testFiles = { ...old.testFiles, ...now.testFiles };
  writeFileSync(INCREMENTAL, `${JSON.stringify(now, null, 2)}\n`);
}
