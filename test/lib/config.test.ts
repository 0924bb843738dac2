import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  ConfigError,
  DEFAULT_BACKUP_SCHEDULE,
  DEFAULT_PRUNE_SCHEDULE,
  DEFAULT_RECONCILE_SCHEDULE,
  FUNCTION_TIMEOUT_MS,
  parseConfig,
  RUN_MARGIN_MS,
  SETTINGS,
  PRE_BACKUP_MAX_WAIT_MS,
  staleStartMs,
  type Env,
} from "../../src/lib/config.js";

const minimal: Env = {
  MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
  BackupStorage: "UseDevelopmentStorage=true",
};

function failure(env: Env): ConfigError {
  try {
    parseConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`parseConfig accepted ${JSON.stringify(env)}`);
}

const identity: Env = {
  MANAGED_HSM_URLS: "https://a.managedhsm.azure.net",
  BackupStorage__blobServiceUri: "https://a.blob.core.windows.net",
  BackupStorage__tableServiceUri: "https://a.table.core.windows.net",
};

describe("parseConfig", () => {
  it("reads immutable copies: off by default, the same account with a connection string, the vault account with an identity", () => {
    expect(parseConfig(minimal).backupCopy).toBeUndefined();
    expect(
      parseConfig({ ...minimal, BACKUP_COPY_CONTAINER: " ", BackupCopyStorage__blobServiceUri: "" }).backupCopy,
    ).toBeUndefined();
    expect(parseConfig({ ...minimal, BACKUP_COPY_CONTAINER: "copies" }).backupCopy).toEqual({ container: "copies" });
    expect(
      parseConfig({
        ...identity,
        BACKUP_COPY_CONTAINER: "mhsm-backups",
        BackupCopyStorage__blobServiceUri: "https://vault.blob.core.windows.net/",
      }).backupCopy,
    ).toEqual({ container: "mhsm-backups", blobServiceUri: "https://vault.blob.core.windows.net" });
  });

  it("applies the documented defaults", () => {
    expect(parseConfig(minimal)).toEqual({
      hsms: [{ url: "https://contoso.managedhsm.azure.net", name: "contoso" }],
      storage: { kind: "connectionString", connectionString: "UseDevelopmentStorage=true" },
      backupContainer: "mhsm-backups",
      catalogTable: "hsmbackups",
      backupSchedule: DEFAULT_BACKUP_SCHEDULE,
      sasTtlMinutes: 120,
      hsmApiVersion: "7.6",
      hsmStorageAuth: "sas",
      restoreEnabled: true,
      healthMaxAgeHours: 26,
      healthGraceHours: 26,
      requestTimeoutMs: 30_000,
      maxPollIntervalMs: 60_000,
      jobTimeoutMs: 120 * 60_000,
      reconcileSchedule: DEFAULT_RECONCILE_SCHEDULE,
      backupConcurrency: 8,
      retentionDays: 30,
      retentionMinKeep: 7,
      pruneSchedule: DEFAULT_PRUNE_SCHEDULE,
      preflight: true,
    });
  });

  it("reads the deployment time as Bicep's utcNow('u') and ISO 8601 write it", () => {
    const at = new Date("2026-12-01T03:00:00Z");
    expect(parseConfig({ ...minimal, DEPLOYED_AT: "2026-12-01 03:00:00Z" }).deployedAt).toEqual(at);
    expect(parseConfig({ ...minimal, DEPLOYED_AT: "2026-12-01T03:00:00.0000000Z" }).deployedAt).toEqual(at);
    expect(parseConfig({ ...minimal, DEPLOYED_AT: "", HEALTH_GRACE_HOURS: "0" })).toMatchObject({
      deployedAt: undefined,
      healthGraceHours: 0,
    });
  });

  it("reads an identity-based connection and several HSMs", () => {
    const config = parseConfig({
      MANAGED_HSM_URLS: " https://a.managedhsm.azure.net, https://b.managedhsm.azure.net/ ",
      BackupStorage__blobServiceUri: "https://acct.blob.core.windows.net",
      BackupStorage__tableServiceUri: "https://acct.table.core.windows.net/",
      BackupStorage__clientId: "00000000-1111-2222-3333-444444444444",
    });
    expect(config.hsms.map((h) => h.name)).toEqual(["a", "b"]);
    expect(config.storage).toEqual({
      kind: "identity",
      blobServiceUri: "https://acct.blob.core.windows.net",
      tableServiceUri: "https://acct.table.core.windows.net",
      clientId: "00000000-1111-2222-3333-444444444444",
    });
  });

  it.each<[string, Env, string, RegExp]>([
    ["no HSMs", { BackupStorage: "UseDevelopmentStorage=true" }, "MANAGED_HSM_URLS", /is required/],
    ["an empty HSM list", { ...minimal, MANAGED_HSM_URLS: " , " }, "MANAGED_HSM_URLS", /lists no HSM/],
    [
      "plain http to a real host",
      { ...minimal, MANAGED_HSM_URLS: "http://contoso.managedhsm.azure.net" },
      "MANAGED_HSM_URLS",
      /must use https/,
    ],
    [
      "an HSM URL with a path",
      { ...minimal, MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net/keys" },
      "MANAGED_HSM_URLS",
      /no path/,
    ],
    [
      "a duplicate HSM",
      { ...minimal, MANAGED_HSM_URLS: "https://a.managedhsm.azure.net,https://a.managedhsm.azure.net" },
      "MANAGED_HSM_URLS",
      /twice/,
    ],
    ["not a URL", { ...minimal, MANAGED_HSM_URLS: "contoso" }, "MANAGED_HSM_URLS", /not a URL/],
    ["no storage", { MANAGED_HSM_URLS: "https://a.managedhsm.azure.net" }, "BackupStorage", /is required/],
    [
      "both storage forms",
      { ...minimal, BackupStorage__blobServiceUri: "https://a.blob.core.windows.net" },
      "BackupStorage",
      /not both/,
    ],
    [
      "half an identity connection",
      {
        MANAGED_HSM_URLS: "https://a.managedhsm.azure.net",
        BackupStorage__blobServiceUri: "https://a.blob.core.windows.net",
      },
      "BackupStorage__tableServiceUri",
      /is required/,
    ],
    [
      "a non-GUID client id",
      {
        MANAGED_HSM_URLS: "https://a.managedhsm.azure.net",
        BackupStorage__blobServiceUri: "https://a.blob.core.windows.net",
        BackupStorage__tableServiceUri: "https://a.table.core.windows.net",
        BackupStorage__clientId: "me",
      },
      "BackupStorage__clientId",
      /GUID/,
    ],
    [
      "a junk connection string",
      { ...minimal, BackupStorage: "hello" },
      "BackupStorage",
      /not a storage connection string/,
    ],
    ["a bad container", { ...minimal, BACKUP_CONTAINER: "Backups_2" }, "BACKUP_CONTAINER", /container name/],
    ["a bad table", { ...minimal, CATALOG_TABLE: "1table" }, "CATALOG_TABLE", /table name/],
    ["a five-field schedule", { ...minimal, BACKUP_SCHEDULE: "0 2 * * *" }, "BACKUP_SCHEDULE", /six-field/],
    ["a TTL too short", { ...minimal, SAS_TTL_MINUTES: "1" }, "SAS_TTL_MINUTES", /from 5 to 1440/],
    ["a TTL not a number", { ...minimal, SAS_TTL_MINUTES: "2h" }, "SAS_TTL_MINUTES", /whole number/],
    ["an unknown api-version", { ...minimal, HSM_API_VERSION: "7.1" }, "HSM_API_VERSION", /not one of/],
    [
      "managed identity on 7.4",
      { ...minimal, HSM_STORAGE_AUTH: "managedIdentity", HSM_API_VERSION: "7.4" },
      "HSM_STORAGE_AUTH",
      /7\.5 or later/,
    ],
    ["a bad storage auth", { ...minimal, HSM_STORAGE_AUTH: "key" }, "HSM_STORAGE_AUTH", /not one of/],
    ["a bad boolean", { ...minimal, RESTORE_ENABLED: "yes" }, "RESTORE_ENABLED", /true or false/],
    ["a bad PREFLIGHT", { ...minimal, PREFLIGHT: "no" }, "PREFLIGHT", /true or false/],
    ["a bad health age", { ...minimal, HEALTH_MAX_AGE_HOURS: "0" }, "HEALTH_MAX_AGE_HOURS", /whole number/],
    [
      "a bad copy container",
      { ...minimal, BACKUP_COPY_CONTAINER: "Vault!" },
      "BACKUP_COPY_CONTAINER",
      /container name/,
    ],
    [
      "copying into the backup container itself",
      { ...minimal, BACKUP_COPY_CONTAINER: "mhsm-backups" },
      "BACKUP_COPY_CONTAINER",
      /the backup container itself/,
    ],
    [
      "a copy account without a copy container",
      { ...minimal, BackupCopyStorage__blobServiceUri: "https://v.blob.core.windows.net" },
      "BACKUP_COPY_CONTAINER",
      /is required/,
    ],
    [
      "a copy account with a connection string",
      {
        ...minimal,
        BACKUP_COPY_CONTAINER: "copies",
        BackupCopyStorage__blobServiceUri: "https://v.blob.core.windows.net",
      },
      "BackupCopyStorage__blobServiceUri",
      /copy container is in that account/,
    ],
    [
      "a copy container without its account (identity)",
      { ...identity, BACKUP_COPY_CONTAINER: "copies" },
      "BackupCopyStorage__blobServiceUri",
      /is required with BACKUP_COPY_CONTAINER/,
    ],
    [
      "a plain-http copy account",
      {
        ...identity,
        BACKUP_COPY_CONTAINER: "copies",
        BackupCopyStorage__blobServiceUri: "http://v.blob.core.windows.net",
      },
      "BackupCopyStorage__blobServiceUri",
      /must use https/,
    ],
    [
      "the backup container as copy target in the same account (identity)",
      {
        ...identity,
        BACKUP_COPY_CONTAINER: "mhsm-backups",
        BackupCopyStorage__blobServiceUri: "https://a.blob.core.windows.net/",
      },
      "BACKUP_COPY_CONTAINER",
      /the backup container itself/,
    ],
    ["a negative grace", { ...minimal, HEALTH_GRACE_HOURS: "-1" }, "HEALTH_GRACE_HOURS", /from 0 to 744/],
    ["a deployment time without a zone", { ...minimal, DEPLOYED_AT: "2026-12-01T03:00:00" }, "DEPLOYED_AT", /UTC time/],
    [
      "a deployment time that is no date",
      { ...minimal, DEPLOYED_AT: "2026-13-45T03:00:00Z" },
      "DEPLOYED_AT",
      /UTC time/,
    ],
    [
      "a deployment time in Bicep's default format",
      { ...minimal, DEPLOYED_AT: "20261201T030000Z" },
      "DEPLOYED_AT",
      /UTC time/,
    ],
  ])("names the setting for %s", (_case, env, setting, message) => {
    const error = failure(env);
    expect(error.setting).toBe(setting);
    expect(error.message).toContain(`Setting ${setting}`);
    expect(error.message).toMatch(message);
  });
});

describe("local.settings.sample.json", () => {
  // Read by the Functions host or @azure/identity, not by the config module; the README says why each is there.
  const PLATFORM = ["FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"];
  const sample = JSON.parse(readFileSync(new URL("../../local.settings.sample.json", import.meta.url), "utf8")) as {
    Values: Record<string, string>;
  };

  it("lists exactly the settings the config module reads, plus the platform's", () => {
    expect(Object.keys(sample.Values).sort()).toEqual([...SETTINGS, ...PLATFORM].sort());
  });

  it("is a valid configuration as it stands", () => {
    expect(() => parseConfig(sample.Values)).not.toThrow();
  });

  it("is what the README's settings table documents", () => {
    const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
    // Only the Settings section: the record statuses table further down has the same row shape.
    const start = readme.indexOf("## Settings");
    const table = readme.slice(start, readme.indexOf("\n## ", start + 1));
    const documented = [...table.matchAll(/^\| `([A-Za-z_]+)` \|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual([...SETTINGS].sort());
  });
});

describe("host.json", () => {
  const host = JSON.parse(readFileSync(new URL("../../host.json", import.meta.url), "utf8")) as {
    functionTimeout: string;
  };

  it("has the function timeout the timer runs plan their deadline by, and the margin leaves them time to record", () => {
    const [h, m, s] = host.functionTimeout.split(":").map(Number) as [number, number, number];
    expect(((h * 60 + m) * 60 + s) * 1000).toBe(FUNCTION_TIMEOUT_MS);
    expect(RUN_MARGIN_MS).toBeGreaterThanOrEqual(60_000);
    expect(RUN_MARGIN_MS).toBeLessThan(FUNCTION_TIMEOUT_MS / 2);
  });
});

describe("staleStartMs", () => {
  it("outlasts the longest start a live worker can still be making (every attempt timing out, every capped wait)", () => {
    const config = parseConfig({ ...minimal, HSM_REQUEST_TIMEOUT_SECONDS: "120", MAX_POLL_INTERVAL_SECONDS: "300" });
    expect(staleStartMs(config)).toBeGreaterThan(4 * 120_000 + 3 * 300_000);
    expect(staleStartMs(parseConfig(minimal), undefined, "restore")).toBe(15 * 60_000);
  });

  it("gives a backup's record the time of its pre-flight too: storage checks, the pre-backup start and its wait", () => {
    const defaults = parseConfig(minimal);
    const start = 4 * 30_000 + 3 * 60_000;
    expect(staleStartMs(defaults)).toBe(6 * 30_000 + start + PRE_BACKUP_MAX_WAIT_MS + start + 5 * 60_000);
    expect(staleStartMs(parseConfig({ ...minimal, PREFLIGHT: "false" }))).toBe(15 * 60_000);
  });
});
