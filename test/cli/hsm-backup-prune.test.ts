/**
 * hsm-backup prune: the plan with --dry-run (JSON and a table), then the real run doing what the plan
 * said, against Azurite and the HSM emulator's real backup folders.
 */
import { afterEach, describe, expect, it } from "vitest";
import { EXIT } from "../../src/cli/args.js";
import { backupAll } from "../../src/lib/backup.js";
import type { AppDeps } from "../../src/lib/deps.js";
import { safeLogger } from "../../src/lib/logger.js";
import type { PruneReport } from "../../src/lib/prune.js";
import { startTestApp, type TestApp } from "../support/app.js";
import { cli } from "../support/cli.js";

const DAY = 86_400_000;
let started: TestApp | undefined;
afterEach(async () => {
  await started?.stop();
  started = undefined;
});

async function blobNames(deps: AppDeps): Promise<string[]> {
  const names: string[] = [];
  const container = deps.storage.blobService.getContainerClient(deps.config.backupContainer);
  for await (const blob of container.listBlobsFlat()) names.push(blob.name);
  return names;
}

describe("hsm-backup prune", () => {
  it("--dry-run prints the plan (JSON and table), changes nothing, and the real run does what it said", async () => {
    const app = (started = await startTestApp({ env: { RETENTION_DAYS: "1", RETENTION_MIN_KEEP: "1" } }));
    app.emulators[0]!.keys.create("k1");
    for (let day = 0; day < 3; day++) {
      await backupAll(app.deps, safeLogger(app.context()), { trigger: "cli" });
      app.clock.advance(DAY);
    }
    const before = await blobNames(app.deps);
    const json = await cli(app, ["prune", "--dry-run", "--json"]);
    expect(json.code).toBe(EXIT.ok);
    const plan = JSON.parse(json.stdout) as PruneReport;
    expect(plan).toMatchObject({ dryRun: true, retentionDays: 1, minKeep: 1, pruned: 0, left: 0, errors: [] });
    expect(plan.hsms[0]!.entries.map((e) => `${e.action} ${e.reason}`)).toEqual([
      "keep floor",
      "delete pastRetention",
      "delete pastRetention",
    ]);
    const human = await cli(app, ["prune", "--dry-run"]);
    expect(human.code).toBe(EXIT.ok);
    expect(human.stdout).toMatch(/^Prune \(dry run: nothing changed\): retention 1 days/);
    expect(human.stdout).toMatch(/HSM testhsm0: 2 folder\(s\) to delete, 1 kept, 0 pruned before/);
    expect(human.stdout).toMatch(/ {2}delete +\d{13}-[0-9a-f]{8} +Succeeded .* past the retention/);
    expect(human.stdout).toMatch(/ {2}keep +\d{13}-[0-9a-f]{8} +Succeeded .* floor \(newest usable\)/);
    expect(human.stdout).toMatch(/2 folder\(s\) would be deleted\. Run without --dry-run to delete them\.\n$/);
    expect(await blobNames(app.deps)).toEqual(before);

    const real = await cli(app, ["prune"]);
    expect(real.code).toBe(EXIT.ok);
    expect(real.stdout).toMatch(/HSM testhsm0: 2 folder\(s\) deleted, 0 left, 1 kept/);
    expect(real.stdout).toMatch(/ {2}pruned +\d{13}-[0-9a-f]{8} .* past the retention, 2 blob\(s\)/);
    expect(real.stdout).toMatch(/2 folder\(s\) deleted, 0 left\.\n$/);
    const list = await cli(app, ["list", "--status", "Pruned", "--json"]);
    const pruned = JSON.parse(list.stdout).items;
    expect(pruned).toHaveLength(2);
    // A pruned backup's status says when, and is no failure (exit 0).
    const status = await cli(app, ["status", pruned[0].id]);
    expect(status.code).toBe(EXIT.ok);
    expect(status.stdout).toMatch(new RegExp(`^Backup ${pruned[0].id} {2}Pruned\n`));
    expect(status.stdout).toMatch(/^ {2}Pruned +\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z$/m);
    expect((await cli(app, ["prune", "--dry-run"])).stdout).toMatch(/1 kept, 2 pruned before/);
  }, 120_000);

  it("exits 2 on a usage error and names the option", async () => {
    const run = await cli(undefined, ["prune", "--dryrun"]);
    expect(run.code).toBe(EXIT.refused);
    expect(run.stderr).toMatch(/prune: Unknown option '--dryrun'/);
  });
});
