/**
 * The per-file table after a Stryker run, from its JSON report (mutation-testing-report-schema).
 * Raw score: (killed + timeout) / (killed + timeout + survived + no coverage), as Stryker counts it.
 * Adjusted: the same without the survivors listed in equivalent.json (mutants the code cannot tell
 * apart from the original; each is explained in the README). Usable alone: `node test/mutation/summary.mjs`.
 */
import { existsSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

/** A mutant's identity that survives reruns: file, line, column, mutator and replacement. */
export function mutantKey(file, mutant) {
  return `${file}:${mutant.location.start.line}:${mutant.location.start.column}:${mutant.mutatorName}:${mutant.replacement ?? ""}`;
}

export function printSummary(reportPath, equivalentPath) {
  const report = JSON.parse(readFileSync(reportPath, "utf8"));
  const equivalent = existsSync(equivalentPath) ? JSON.parse(readFileSync(equivalentPath, "utf8")) : [];
  const equivalentKeys = new Set(equivalent.map((e) => e.key));
  const rows = [];
  const unusedEquivalents = new Set(equivalentKeys);
  for (const [file, { mutants }] of Object.entries(report.files).sort(([a], [b]) => a.localeCompare(b))) {
    const count = (status) => mutants.filter((m) => m.status === status).length;
    const killed = count("Killed");
    const timeout = count("Timeout");
    const survived = count("Survived");
    const noCoverage = count("NoCoverage");
    const equivalentSurvivors = mutants.filter((m) => {
      const key = mutantKey(file, m);
      unusedEquivalents.delete(key);
      return (m.status === "Survived" || m.status === "NoCoverage") && equivalentKeys.has(key);
    }).length;
    const detected = killed + timeout;
    const valid = detected + survived + noCoverage;
    rows.push({
      file, mutants: mutants.length, killed, timeout, survived, noCoverage, equivalent: equivalentSurvivors,
      raw: valid ? (100 * detected) / valid : NaN,
      adjusted: valid - equivalentSurvivors ? (100 * detected) / (valid - equivalentSurvivors) : NaN,
    });
  }
  const header = ["file", "mutants", "killed", "timeout", "survived", "no cov", "equiv", "score", "adjusted"];
  const table = rows.map((r) => [r.file, r.mutants, r.killed, r.timeout, r.survived, r.noCoverage, r.equivalent, `${r.raw.toFixed(1)}%`, `${r.adjusted.toFixed(1)}%`].map(String));
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  console.log(`\n${line(header)}\n${widths.map((w) => "-".repeat(w)).join("  ")}`);
  for (const row of table) console.log(line(row));
  if (unusedEquivalents.size > 0 && rows.length > 0) {
    const mutatedFiles = new Set(rows.map((r) => r.file));
    const stale = [...unusedEquivalents].filter((k) => mutatedFiles.has(k.split(":")[0]));
    if (stale.length > 0) console.log(`\nequivalent.json entries matching no mutant (the code moved; update them):\n  ${stale.join("\n  ")}`);
  }
  return rows;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  printSummary(process.argv[2] ?? "reports/mutation/mutation.json", process.argv[3] ?? "test/mutation/equivalent.json");
}
