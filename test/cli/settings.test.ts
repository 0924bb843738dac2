/**
 * Where the CLI finds its settings besides the environment: the local app's local.settings.json, or a
 * deployment's .env as `azd env get-values > .env` writes it (README, "Run the CLI against the
 * deployment"); never both. Real files in a scratch folder; the last test runs main() against Azurite.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { EXIT, main } from "../../src/cli/hsm-backup.js";
import { parseDotenv, SettingsFileError, withLocalSettings } from "../../src/cli/settings.js";
import { parseConfig } from "../../src/lib/config.js";
import { createDeps } from "../../src/lib/deps.js";
import { startTestApp, type TestApp } from "../support/app.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()));
});

async function folder(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "hsm-backup-settings-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return dir;
}

/** What `azd env get-values` prints for a deployment of infra/main.bicep (its outputs and inputs). */
const AZD_VALUES = [
  'AZURE_ENV_NAME="prod"',
  'AZURE_LOCATION="westeurope"',
  'BACKUP_CONTAINER="mhsm-backups"',
  'BACKUP_SCHEDULE="0 0 2 * * *"',
  'BackupStorage__blobServiceUri="https://stbakabc.blob.core.windows.net/"',
  'BackupStorage__tableServiceUri="https://stbakabc.table.core.windows.net/"',
  'CATALOG_TABLE="hsmbackups"',
  'HSM_API_VERSION="7.6"',
  'HSM_STORAGE_AUTH="sas"',
  'MANAGED_HSM_URLS="https://contoso.managedhsm.azure.net,https://fabrikam.managedhsm.azure.net"',
  'RECONCILE_SCHEDULE="0 */15 * * * *"',
  'RESTORE_ENABLED="false"',
  'SAS_TTL_MINUTES="45"',
  "",
].join("\n");

describe("parseDotenv", () => {
  it('reads azd\'s NAME="value" lines, unescaping what azd escapes', () => {
    expect(
      parseDotenv(
        ".env",
        [
          "# a comment",
          "",
          'PLAIN="a value with spaces"',
          'ESCAPED="say \\"hi\\" \\\\ \\$HOME\\nnext"',
          "SINGLE='kept \\n as is'",
          "export BARE=bare value # comment",
          "EMPTY=",
          'CRLF="yes"\r',
        ].join("\n"),
      ),
    ).toEqual({
      PLAIN: "a value with spaces",
      ESCAPED: 'say "hi" \\ $HOME\nnext',
      SINGLE: "kept \\n as is",
      BARE: "bare value",
      EMPTY: "",
      CRLF: "yes",
    });
  });

  it("names the malformed line by its number, never its content (a value may be a secret)", () => {
    for (const line of ['TOKEN="sig=abc', "sig abc", "TOKEN='sig=abc", 'TOKEN="sig=abc" trailing']) {
      const parse = () => parseDotenv("/x/.env", `OK=1\n${line}\n`);
      expect(parse).toThrow(SettingsFileError);
      expect(parse).toThrow(
        /^\/x\/\.env line 2 is not NAME=value, NAME="value" or NAME='value'; fix it or run from another folder$/,
      );
    }
  });
});

describe("withLocalSettings", () => {
  it("gives the CLI a deployment's settings from azd's .env, the environment winning", async () => {
    const dir = await folder({ ".env": AZD_VALUES });
    const { env, file } = withLocalSettings({ SAS_TTL_MINUTES: "30", UNSET: undefined }, dir);
    expect(file).toBe(join(dir, ".env"));
    const config = parseConfig(env);
    expect(config).toMatchObject({
      hsms: [
        { name: "contoso", url: "https://contoso.managedhsm.azure.net" },
        { name: "fabrikam", url: "https://fabrikam.managedhsm.azure.net" },
      ],
      // An operator's own sign-in: no client id of the app's identity.
      storage: {
        kind: "identity",
        blobServiceUri: "https://stbakabc.blob.core.windows.net",
        tableServiceUri: "https://stbakabc.table.core.windows.net",
      },
      restoreEnabled: false,
      sasTtlMinutes: 30,
    });
    expect(config.storage).not.toHaveProperty("clientId");
  });

  it("refuses a folder with both local.settings.json and .env, naming both", async () => {
    const dir = await folder({ ".env": AZD_VALUES, "local.settings.json": '{"Values":{}}' });
    expect(() => withLocalSettings({}, dir)).toThrow(
      `${join(dir, "local.settings.json")} and ${join(dir, ".env")} both exist: the CLI reads one settings file, the local app's or a deployment's (azd env get-values); move one of them away or run from another folder`,
    );
  });

  it("reads local.settings.json as before, and nothing when neither file is there", async () => {
    const dir = await folder({ "local.settings.json": '{"Values":{"CATALOG_TABLE":"fromfile","N":1}}' });
    expect(withLocalSettings({ BACKUP_CONTAINER: "c" }, dir)).toEqual({
      env: { CATALOG_TABLE: "fromfile", BACKUP_CONTAINER: "c" },
      file: join(dir, "local.settings.json"),
    });
    const empty = await folder({});
    expect(withLocalSettings({ A: "1" }, empty)).toEqual({ env: { A: "1" } });
  });
});

describe("hsm-backup with a .env in the folder", () => {
  let app: TestApp | undefined;
  afterEach(async () => {
    await app?.stop();
    app = undefined;
  });

  it("runs against the settings in .env (as azd env get-values writes them) and says so with --verbose", async () => {
    app = await startTestApp();
    const dotenv = Object.entries(app.env)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}="${v!.replace(/(["\\$])/g, "\\$1")}"`)
      .join("\n");
    const dir = await folder({ ".env": `${dotenv}\n` });
    let stdout = "";
    let stderr = "";
    const run = (argv: string[]) =>
      main(
        argv,
        {
          env: {},
          stdout: { write: (text: string) => (stdout += text) },
          stderr: { write: (text: string) => (stderr += text) },
          isTTY: false,
          columns: 200,
        },
        { settingsDir: dir, createDeps: (config) => createDeps(config, app!.depsOptions), pollIntervalMs: 25 },
      );

    expect(await run(["backup", "--json"]), stderr).toBe(EXIT.ok);
    stdout = "";
    expect(await run(["--verbose", "list", "--json"]), stderr).toBe(EXIT.ok);
    expect((JSON.parse(stdout) as { items: { hsmName: string }[] }).items.map((r) => r.hsmName)).toEqual(
      app.deps.config.hsms.map((h) => h.name),
    );
    expect(stderr).toContain(`Settings: the environment, then ${join(dir, ".env")}`);
  });
});
