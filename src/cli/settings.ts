/**
 * The function app's local.settings.json, read so that the local quick start needs no hand
 * conversion: its "Values" are the same settings under the same names. The environment wins.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Env } from "../lib/config.js";

export const LOCAL_SETTINGS_FILE = "local.settings.json";

export class SettingsFileError extends Error {
  constructor(file: string, problem: string) {
    super(`${file} ${problem}; fix it or run from another folder`);
    this.name = "SettingsFileError";
  }
}

/**
 * The environment over the file's Values, and the file's path when one was read.
 * @throws SettingsFileError when the file exists but is not a local.settings.json (not JSON, Values not an object).
 */
export function withLocalSettings(env: Env, dir: string): { env: Env; file?: string } {
  const file = join(dir, LOCAL_SETTINGS_FILE);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    if ((error as { code?: unknown }).code === "ENOENT") return { env };
    throw error;
  }
  let values: unknown;
  try {
    values = (JSON.parse(text) as { Values?: unknown }).Values;
  } catch (error) {
    throw new SettingsFileError(file, `is not JSON (${error instanceof Error ? error.message : String(error)})`);
  }
  if (values === undefined) return { env, file };
  if (typeof values !== "object" || values === null || Array.isArray(values))
    throw new SettingsFileError(file, "has a Values that is not an object");
  const fromFile = Object.fromEntries(
    Object.entries(values).filter((entry): entry is [string, string] => typeof entry[1] === "string"),
  );
  const fromEnv = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined));
  return { env: { ...fromFile, ...fromEnv }, file };
}
