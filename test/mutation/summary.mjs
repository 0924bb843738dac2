/**
 * The per-file table after a Stryker run, from a report in mutation-testing-report-schema (the
 * incremental file is one).
 * Raw score: (killed + timeout) / (killed + timeout + survived + no coverage), as Stryker counts it.
 * Adjusted: the same without the survivors listed in equivalent.json (mutants the code cannot tell
 * apart from the original; each is explained in the README). Usable alone: `node test/mutation/summary.mjs`.
 */
import { existsSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

/**
 * A mutant named as an equivalent.json entry names it (less its `why`): file, the text of its line
 * (trimmed), its column in that text, mutator and replacement. Line numbers are not part of it, so an
 * equivalent listed once stays listed when code above it moves; it goes stale only when its own line
 * changes. `lines` is the file's source split into lines.
 */
export function entryOf(file, mutant, lines) {
  const line = lines[mutant.location.start.line - 1] ?? "";
  const indent = line.length - line.trimStart().length;
  return {
    file,
    code: line.trim(),
    column: mutant.location.start.column - 1 - indent,
    mutator: mutant.mutatorName,
    replacement: mutant.replacement ?? "",
  };
}

/** The key of an equivalent.json entry (or of entryOf's answer): { file, code, column, mutator, replacement }. */
export function equivalentKey(entry) {
  return `${entry.file}:${entry.mutator}:${entry.replacement}@${entry.column}:${entry.code}`;
}

function load(reportPath, equivalentPath) {
  return {
    report: JSON.parse(readFileSync(reportPath, "utf8")),
    equivalent: existsSync(equivalentPath) ? JSON.parse(readFileSync(equivalentPath, "utf8")) : [],
  };
}

export function printSummary(reportPath, equivalentPath) {
  const { report, equivalent } = load(reportPath, equivalentPath);
  const equivalentKeys = new Set(equivalent.map(equivalentKey));
  const rows = [];
  const unusedEquivalents = new Set(equivalentKeys);
  for (const [file, { mutants, source }] of Object.entries(report.files).sort(([a], [b]) => a.localeCompare(b))) {
    const count = (status) => mutants.filter((m) => m.status === status).length;
    const killed = count("Killed");
    const timeout = count("Timeout");
    const survived = count("Survived");
    const noCoverage = count("NoCoverage");
    const lines = source.split("\n");
    const equivalentSurvivors = mutants.filter((m) => {
      const key = equivalentKey(entryOf(file, m, lines));
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
    const stale = equivalent.filter((e) => mutatedFiles.has(e.file) && unusedEquivalents.has(equivalentKey(e)));
    if (stale.length > 0) {
      const lines = stale.map((e) => `${e.file}: ${e.code}`).join("\n  ");
      console.log(`\nequivalent.json entries matching no mutant (their line changed; update them):\n  ${lines}`);
    }
  }
  return rows;
}

/**
 * The survivors (and mutants without coverage) not listed in equivalent.json, each as an entry for
 * it with an empty `why`: what is left to kill with a test, or to explain and list.
 */
export function unexplainedSurvivors(reportPath, equivalentPath) {
  const { report, equivalent } = load(reportPath, equivalentPath);
  const known = new Set(equivalent.map(equivalentKey));
  const found = [];
  for (const [file, { mutants, source }] of Object.entries(report.files)) {
    const lines = source.split("\n");
    for (const m of mutants) {
      if (!(m.status === "Survived" || m.status === "NoCoverage")) continue;
      const entry = entryOf(file, m, lines);
      if (!known.has(equivalentKey(entry))) found.push({ line: m.location.start.line, status: m.status, ...entry, why: "" });
    }
  }
  return found.sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const [report = "test/mutation/stryker-incremental.json", equivalents = "test/mutation/equivalent.json"] =
    process.argv.slice(2).filter((a) => a !== "--survivors");
  if (process.argv.includes("--survivors")) console.log(JSON.stringify(unexplainedSurvivors(report, equivalents), null, 2));
  else printSummary(report, equivalents);
}
