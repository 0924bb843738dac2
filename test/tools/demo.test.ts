/**
 * `npm run demo`, in-process: the whole product against its own Azurite, identity endpoint and an
 * HTTPS HSM emulator at https://demohsm.managedhsm.azure.net. What .ci/run checks by exit code, this
 * checks by what the demo printed, and that it left the environment as it found it.
 */
import { describe, expect, it } from "vitest";
import { runDemo } from "../../tools/demo.js";

describe("the demo", () => {
  it("backs up and verifies the backup restorable, is refused an unconfirmed and then a too-early full restore, restores the lost key over HTTPS, and puts the environment back", async () => {
    const before = { ...process.env };
    const lines: string[] = [];
    await runDemo((line) => lines.push(line));
    const text = lines.join("\n");

    expect(text).toMatch(
      /Managed HSM emulator https:\/\/demohsm\.managedhsm\.azure\.net \(listening at https:\/\/127\.0\.0\.1:\d+/,
    );
    expect(text).toMatch(/^ {3}https:\/\/demohsm\.managedhsm\.azure\.net\/keys\/payments-signing\/[0-9a-f]{32}$/m);
    expect(text).toMatch(/^ {3}\d{13}-[0-9a-f]{8} {2}demohsm {2}Succeeded .*\/mhsm-demohsm-\d{16}$/m);
    expect(text).toMatch(/^ {3}verification: Passed at \d{4}-\d\d-\d\dT[\d:.]+Z/m);
    expect(text).toMatch(
      /Passed: only backups .*\n {3}HTTP 200\n {3}\d{13}-[0-9a-f]{8} {2}demohsm {2}verification Passed$/m,
    );
    expect(text).toMatch(/HTTP 400\n {3}Full restore not confirmed: .*"confirm": "demohsm"/);
    expect(text).toMatch(/HTTP 409\n {3}Backup too recent for a full restore/);
    expect(text).toMatch(
      /Succeeded: Number of successful key versions restored: 1, Number of key versions could not overwrite: 0/,
    );
    expect(text).toMatch(
      /key present: true {2}\(https:\/\/demohsm\.managedhsm\.azure\.net\/keys\/customer-data-wrap\/[0-9a-f]{32}\)/,
    );
    expect(lines.at(-1)).toBe("\nDemo complete.");
    expect(text).not.toMatch(/sig=(?!<redacted>)/);
    expect(process.env).toEqual(before);
  }, 60_000);
});
