/** Runs the operator CLI in-process through main(), with captured streams. */
import { expect } from "vitest";
import { main } from "../../src/cli/hsm-backup.js";
import { createDeps } from "../../src/lib/deps.js";
import type { TestApp } from "./app.js";

export interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs main() with the test app's settings and clock; polls fast so nothing waits long. */
export async function cli(
  app: TestApp | undefined,
  argv: string[],
  io: { isTTY?: boolean; env?: Record<string, string>; typed?: string } = {},
): Promise<Run & { prompts?: string[] }> {
  const prompts: string[] = [];
  let stdout = "";
  let stderr = "";
  const code = await main(
    argv,
    {
      env: io.env ?? app?.env ?? {},
      stdout: { write: (text: string) => (stdout += text) },
      stderr: { write: (text: string) => (stderr += text) },
      isTTY: io.isTTY ?? false,
      columns: 200,
      // A person at a terminal: what they type answers any question the CLI asks.
      ...(io.typed !== undefined ? { readLine: async (prompt: string) => (prompts.push(prompt), io.typed!) } : {}),
    },
    app && {
      // The app's own dependency options: its clock, fast polls and the transport to the HTTPS emulators.
      createDeps: (config) => createDeps(config, app.depsOptions),
      pollIntervalMs: 25,
    },
  );
  // Whatever the command, no SAS signature leaves the CLI.
  expect(stdout + stderr).not.toMatch(/sig=(?!<redacted>)/i);
  return { code, stdout, stderr, ...(io.typed !== undefined ? { prompts } : {}) };
}
