// @ts-check
/**
 * `npm run mutation`: Stryker on Node 22 (Stryker 10 refuses Node 20), see README "Mutation testing".
 * Stryker copies the project into a sandbox under .stryker-tmp/, so the recorded HSM sessions (which
 * live beside the repository, in ../shared/recordings) are passed by absolute path.
 */
import { resolve } from "node:path";

process.env.MHSM_RECORDINGS_DIR ??= resolve("..", "shared", "recordings");

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: "vitest",
  plugins: ["@stryker-mutator/vitest-runner"],
  vitest: { configFile: "vitest.mutation.config.ts", related: false },
  coverageAnalysis: "perTest",
  mutate: [
    "src/lib/redact.ts",
    "src/lib/validation.ts",
    "src/lib/hsm/poller.ts",
    "src/lib/outcome.ts",
    "src/lib/catalog.ts",
    "src/lib/hsm/client.ts",
    "src/lib/config.ts",
  ],
  // Committed: a fresh clone (and CI, which has no cache) reruns only mutants whose code or tests changed.
  incremental: true,
  incrementalFile: "test/mutation/stryker-incremental.json",
  reporters: ["html", "json", "clear-text", "progress"],
  htmlReporter: { fileName: "reports/mutation/index.html" },
  jsonReporter: { fileName: "reports/mutation/mutation.json" },
  clearTextReporter: { allowColor: false, logTests: false, reportScoreTable: true },
  // Two cores: one test runner each. Every runner starts its own Azurite and identity endpoint.
  concurrency: 2,
  timeoutMS: 15_000,
  timeoutFactor: 2,
  thresholds: { high: 90, low: 85, break: null },
  tempDirName: ".stryker-tmp",
  cleanTempDir: "always",
};
