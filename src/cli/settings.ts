/**
 * The settings file the CLI reads besides the environment, from the folder it runs in: the function
 * app's local.settings.json (its "Values" are the same settings under the same names), so that the
 * local quick start needs no hand conversion; or a .env file as `azd env get-values > .env` writes it,
 * so that an operator runs against a deployment with the settings azd recorded for it. Never both: a
 * catalog from one and storage from the other would be a different deployment than either. The
 * environment wins over the file.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Env } from "../lib/config.js";

export const LOCAL_SETTINGS_FILE = "local.settings.json";
export const DOTENV_FILE = ".env";

export class SettingsFileError extends Error {
  constructor(file: string, problem: string, remedy = "fix it or run from another folder") {
    super(`${file} ${problem}; ${remedy}`);
    this.name = "SettingsFileError";
  }
}

/**
 * The environment over the values of dir's settings file, and the file's path when one was read.
 * @throws SettingsFileError when both files exist, or the one there is malformed (a line of a .env
 * file is named by its number only: its value may be a secret).
 */
export function withLocalSettings(env: Env, dir: string): { env: Env; file?: string } {
  const localSettings = join(dir, LOCAL_SETTINGS_FILE);
  const dotenv = join(dir, DOTENV_FILE);
  const text = (file: string) => {
    try {
      return readFileSync(file, "utf8");
    } catch (error) {
      if ((error as { code?: unknown }).code === "ENOENT") return undefined;
      throw error;
    }
  };
  const settingsText = text(localSettings);
  const dotenvText = text(dotenv);
  if (settingsText !== undefined && dotenvText !== undefined) {
    throw new SettingsFileError(
      localSettings,
      `and ${dotenv} both exist: the CLI reads one settings file, the local app's or a deployment's (azd env get-values)`,
      "move one of them away or run from another folder",
    );
  }
  const fromEnv = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined));
  if (dotenvText !== undefined) return { env: { ...parseDotenv(dotenv, dotenvText), ...fromEnv }, file: dotenv };
  if (settingsText === undefined) return { env };
  let values: unknown;
  try {
    values = (JSON.parse(settingsText) as { Values?: unknown }).Values;
  } catch (error) {
    throw new SettingsFileError(
      localSettings,
      `is not JSON (${error instanceof Error ? error.message : String(error)})`,
    );
  }
  if (values === undefined) return { env, file: localSettings };
  if (typeof values !== "object" || values === null || Array.isArray(values))
    throw new SettingsFileError(localSettings, "has a Values that is not an object");
  const fromFile = Object.fromEntries(
    Object.entries(values).filter((entry): entry is [string, string] => typeof entry[1] === "string"),
  );
  return { env: { ...fromFile, ...fromEnv }, file: localSettings };
}

const DOTENV_LINE = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$/;

/**
 * NAME=value lines as `azd env get-values` prints them (NAME="value", with \", \\, \n, \$ escapes),
 * also 'single-quoted' and bare values; blank lines and # comments are skipped.
 */
export function parseDotenv(file: string, text: string): Record<string, string> {
  const values: Record<string, string> = {};
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const match = DOTENV_LINE.exec(line);
    const value = match ? unquote(match[2]!) : undefined;
    if (!match || value === undefined)
      throw new SettingsFileError(file, `line ${index + 1} is not NAME=value, NAME="value" or NAME='value'`);
    values[match[1]!] = value;
  });
  return values;
}

function unquote(value: string): string | undefined {
  if (value.startsWith('"')) {
    const quoted = /^"((?:[^"\\]|\\.)*)"\s*(?:#.*)?$/.exec(value);
    return quoted?.[1]!.replace(/\\(.)/g, (_m, c: string) => (c === "n" ? "\n" : c === "r" ? "\r" : c));
  }
  if (value.startsWith("'")) return /^'([^']*)'\s*(?:#.*)?$/.exec(value)?.[1];
  // Bare: up to an inline comment.
  return value.replace(/\s+#.*$/, "");
}
