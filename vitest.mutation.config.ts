import { relative } from "node:path";
import { BaseSequencer, type TestSpecification } from "vitest/node";
import { defineConfig } from "vitest/config";

/**
 * Stryker runs one test file after another for each mutant and stops at the first failure, so the
 * fast files (pure functions, which kill most mutants) go first: a killed mutant then costs
 * milliseconds, not a walk through the slow integration files. Files without a timing yet count as fast.
 */
class FastestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const cost = (spec: TestSpecification) =>
      this.ctx.cache.getFileTestResults(`${spec.project.name}:${relative(this.ctx.config.root, spec.moduleId)}`)
        ?.duration ?? 0;
    return [...files].sort((a, b) => cost(a) - cost(b));
  }
}

/**
 * The test set `npm run mutation` runs against each mutant: the lib and function tests, with the same
 * global setup (Azurite + identity endpoint) as `npm test`. CLI, infra and tools tests are left out:
 * they are slow and reach the mutated modules through the same paths.
 */
export default defineConfig({
  test: {
    include: ["test/lib/**/*.test.ts", "test/functions/**/*.test.ts"],
    globalSetup: ["test/setup/global.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    sequence: { sequencer: FastestFirst },
  },
});
