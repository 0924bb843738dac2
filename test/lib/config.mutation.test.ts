/**
 * parseConfig at every bound and in every message, beyond the cases config.test.ts names: each
 * number's range, each accepted word, schedules, names, URLs, loopback hosts and the stale-start rule.
 */
import { describe, expect, it } from "vitest";
import {
  backupSchedule,
  ConfigError,
  HSM_API_VERSIONS,
  isLoopback,
  parseConfig,
  pruneSchedule,
  reconcileSchedule,
  staleStartMs,
  type Env,
} from "../../src/lib/config.js";

const minimal: Env = {
  MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
  BackupStorage: "UseDevelopmentStorage=true",
};
const identity: Env = {
  MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
  BackupStorage__blobServiceUri: "https://acct.blob.core.windows.net",
  BackupStorage__tableServiceUri: "https://acct.table.core.windows.net",
};

function refused(env: Env): ConfigError {
  try {
    parseConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).name).toBe("ConfigError");
    return error as ConfigError;
  }
  throw new Error(`parseConfig accepted ${JSON.stringify(env)}`);
}

describe("whole-number settings", () => {
  it.each([
    ["SAS_TTL_MINUTES", 5, 1440, "sasTtlMinutes", 1],
    ["HEALTH_MAX_AGE_HOURS", 1, 744, "healthMaxAgeHours", 1],
    ["HSM_REQUEST_TIMEOUT_SECONDS", 5, 120, "requestTimeoutMs", 1000],
    ["MAX_POLL_INTERVAL_SECONDS", 1, 300, "maxPollIntervalMs", 1000],
    ["JOB_TIMEOUT_MINUTES", 10, 1440, "jobTimeoutMs", 60_000],
    ["BACKUP_CONCURRENCY", 1, 100, "backupConcurrency", 1],
    ["RETENTION_DAYS", 1, 3650, "retentionDays", 1],
    ["RETENTION_MIN_KEEP", 1, 1000, "retentionMinKeep", 1],
  ] as const)("%s accepts %i to %i exactly", (name, min, max, field, unit) => {
    expect(parseConfig({ ...minimal, [name]: String(min) })[field]).toBe(min * unit);
    expect(parseConfig({ ...minimal, [name]: ` ${max} ` })[field]).toBe(max * unit);
    for (const bad of [String(min - 1), String(max + 1), `${min}.0`, `-${min}`, `${min}x`]) {
      const error = refused({ ...minimal, [name]: bad });
      expect(error.setting).toBe(name);
      expect(error.message).toBe(`Setting ${name}: "${bad}" is not a whole number from ${min} to ${max}`);
    }
    expect(parseConfig({ ...minimal, [name]: "   " })[field]).toBe(parseConfig(minimal)[field]);
  });
});

describe("words", () => {
  it("reads RESTORE_ENABLED as true or false in any case", () => {
    expect(parseConfig({ ...minimal, RESTORE_ENABLED: "FALSE" }).restoreEnabled).toBe(false);
    expect(parseConfig({ ...minimal, RESTORE_ENABLED: "false" }).restoreEnabled).toBe(false);
    expect(parseConfig({ ...minimal, RESTORE_ENABLED: "True" }).restoreEnabled).toBe(true);
    expect(refused({ ...minimal, RESTORE_ENABLED: "Yes" }).message).toBe(
      'Setting RESTORE_ENABLED: "yes" is not true or false',
    );
  });

  it("accepts every api-version with full backup and restore, and managed identity from 7.5 on", () => {
    expect(HSM_API_VERSIONS).toEqual(["7.2", "7.3", "7.4", "7.5", "7.6", "2025-06-01", "2025-07-01"]);
    for (const version of HSM_API_VERSIONS) {
      expect(parseConfig({ ...minimal, HSM_API_VERSION: version }).hsmApiVersion).toBe(version);
      const mi = { ...minimal, HSM_API_VERSION: version, HSM_STORAGE_AUTH: "managedIdentity" };
      if (["7.2", "7.3", "7.4"].includes(version)) {
        expect(refused(mi).message).toBe(
          `Setting HSM_STORAGE_AUTH: "managedIdentity" needs HSM_API_VERSION 7.5 or later, but HSM_API_VERSION is "${version}"`,
        );
      } else {
        expect(parseConfig(mi).hsmStorageAuth).toBe("managedIdentity");
      }
    }
    expect(parseConfig({ ...minimal, HSM_STORAGE_AUTH: "sas", HSM_API_VERSION: "7.2" }).hsmStorageAuth).toBe("sas");
    expect(refused({ ...minimal, HSM_API_VERSION: "7.1" }).message).toBe(
      `Setting HSM_API_VERSION: "7.1" is not one of ${HSM_API_VERSIONS.join(", ")}`,
    );
    expect(refused({ ...minimal, HSM_STORAGE_AUTH: "Sas" }).message).toBe(
      'Setting HSM_STORAGE_AUTH: "Sas" is not one of sas, managedIdentity',
    );
  });
});

describe("schedules", () => {
  it("accepts six fields however spaced, and says what a bad one should look like", () => {
    expect(parseConfig({ ...minimal, BACKUP_SCHEDULE: " 0  30   1 * * 1-5 " }).backupSchedule).toBe(
      "0  30   1 * * 1-5",
    );
    expect(refused({ ...minimal, BACKUP_SCHEDULE: "0 0 2 * * * *" }).message).toBe(
      'Setting BACKUP_SCHEDULE: "0 0 2 * * * *" is not a six-field NCRONTAB expression: expected six fields (second minute hour day month day-of-week), UTC, e.g. "0 0 2 * * *"',
    );
    expect(refused({ ...minimal, RECONCILE_SCHEDULE: "*/15 * * * *" }).message).toBe(
      'Setting RECONCILE_SCHEDULE: "*/15 * * * *" is not a six-field NCRONTAB expression: expected six fields (second minute hour day month day-of-week), UTC, e.g. "0 */15 * * * *"',
    );
    expect(parseConfig({ ...minimal, RECONCILE_SCHEDULE: "0 */5 * * * *" }).reconcileSchedule).toBe("0 */5 * * * *");
    expect(refused({ ...minimal, PRUNE_SCHEDULE: "30 3 * * *" }).message).toBe(
      'Setting PRUNE_SCHEDULE: "30 3 * * *" is not a six-field NCRONTAB expression: expected six fields (second minute hour day month day-of-week), UTC, e.g. "0 30 3 * * *"',
    );
    expect(parseConfig({ ...minimal, PRUNE_SCHEDULE: "0 0 4 * * 0" }).pruneSchedule).toBe("0 0 4 * * 0");
  });

  it("reads schedules at registration time without ever throwing", () => {
    expect(backupSchedule({ BACKUP_SCHEDULE: "nonsense" })).toBe("nonsense");
    expect(backupSchedule({})).toBe("0 0 2 * * *");
    expect(() => backupSchedule({ BACKUP_SCHEDULE: "nonsense" }, { validate: true })).toThrow(ConfigError);
    expect(reconcileSchedule({ RECONCILE_SCHEDULE: "nonsense" })).toBe("nonsense");
    expect(reconcileSchedule({ RECONCILE_SCHEDULE: " " })).toBe("0 */15 * * * *");
    expect(pruneSchedule({ PRUNE_SCHEDULE: "nonsense" })).toBe("nonsense");
    expect(pruneSchedule({})).toBe("0 30 3 * * *");
  });
});

describe("names", () => {
  it("accepts container names of 3-63 lowercase letters, digits and single inner hyphens", () => {
    for (const ok of ["abc", "a-b-c", "a1b", "x".repeat(63)])
      expect(parseConfig({ ...minimal, BACKUP_CONTAINER: ok }).backupContainer).toBe(ok);
    for (const bad of ["ab", "x".repeat(64), "a--b", "-ab", "ab-", "Abc", "a_b"]) {
      expect(refused({ ...minimal, BACKUP_CONTAINER: bad }).message).toBe(
        `Setting BACKUP_CONTAINER: "${bad}" is not a blob container name: 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit`,
      );
    }
  });

  it("accepts table names of 3-63 letters and digits starting with a letter", () => {
    for (const ok of ["Abc", "a12", `T${"x".repeat(62)}`])
      expect(parseConfig({ ...minimal, CATALOG_TABLE: ok }).catalogTable).toBe(ok);
    for (const bad of ["ab", `T${"x".repeat(63)}`, "1ab", "ab-c"]) {
      expect(refused({ ...minimal, CATALOG_TABLE: bad }).message).toBe(
        `Setting CATALOG_TABLE: "${bad}" is not a table name: 3-63 letters and digits, starting with a letter`,
      );
    }
  });
});

describe("MANAGED_HSM_URLS", () => {
  it("names each HSM by its first DNS label, a loopback one by its port", () => {
    const config = parseConfig({
      ...minimal,
      MANAGED_HSM_URLS:
        "https://Contoso.managedhsm.azure.net,,http://127.0.0.1:8443, http://localhost, http://[::1]:9000",
    });
    expect(config.hsms).toStrictEqual([
      { url: "https://contoso.managedhsm.azure.net", name: "contoso" },
      { url: "http://127.0.0.1:8443", name: "loopback-8443" },
      { url: "http://localhost", name: "loopback-80" },
      { url: "http://[::1]:9000", name: "loopback-9000" },
    ]);
  });

  it.each([
    [
      "https://a.managedhsm.azure.net/?x=1",
      '"https://a.managedhsm.azure.net/?x=1" must be the HSM\'s base URL with no path or query',
    ],
    [
      "https://a.managedhsm.azure.net/#x",
      '"https://a.managedhsm.azure.net/#x" must be the HSM\'s base URL with no path or query',
    ],
    [
      "https://a.managedhsm.azure.net/keys",
      '"https://a.managedhsm.azure.net/keys" must be the HSM\'s base URL with no path or query',
    ],
    [
      "https://a.managedhsm.azure.net, https://A.managedhsm.azure.net/",
      '"https://A.managedhsm.azure.net/" is listed twice',
    ],
    ["https://a.managedhsm.azure.net,https://a.other.example", 'two HSMs share the name "a"; names must be unique'],
    ["http://localhost:8443,http://127.0.0.1:8443", 'two HSMs share the name "loopback-8443"; names must be unique'],
    [
      "ftp://a.managedhsm.azure.net",
      '"ftp://a.managedhsm.azure.net" must use https (plain http is accepted only for loopback hosts)',
    ],
    ["http://10.0.0.1", '"http://10.0.0.1" must use https (plain http is accepted only for loopback hosts)'],
    ["ftp://127.0.0.1:8443", '"ftp://127.0.0.1:8443" must use https (plain http is accepted only for loopback hosts)'],
    ["contoso", '"contoso" is not a URL'],
    [",", "lists no HSM"],
    [" ", "is required: a comma-separated list of Managed HSM URLs, e.g. https://contoso.managedhsm.azure.net"],
  ])("refuses %j: %s", (urls, message) => {
    const error = refused({ ...minimal, MANAGED_HSM_URLS: urls });
    expect(error.setting).toBe("MANAGED_HSM_URLS");
    expect(error.message).toBe(`Setting MANAGED_HSM_URLS: ${message}`);
  });
});

describe("BackupStorage", () => {
  it("accepts the development storage and any connection string naming an account", () => {
    for (const cs of [
      "usedevelopmentstorage=true",
      "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=x",
      "AccountName=acct",
      "x=1; AccountName=acct",
    ]) {
      expect(parseConfig({ ...minimal, BackupStorage: cs }).storage).toStrictEqual({
        kind: "connectionString",
        connectionString: cs,
      });
    }
    expect(refused({ ...minimal, BackupStorage: "MyAccountName=acct" }).message).toBe(
      "Setting BackupStorage: is not a storage connection string (expected UseDevelopmentStorage=true or one with AccountName=...)",
    );
  });

  it("reads an identity connection without a client id, and loopback URLs over http", () => {
    expect(parseConfig(identity).storage).toStrictEqual({
      kind: "identity",
      blobServiceUri: "https://acct.blob.core.windows.net",
      tableServiceUri: "https://acct.table.core.windows.net",
    });
    const local = parseConfig({
      ...identity,
      BackupStorage__blobServiceUri: "http://127.0.0.1:10000/devstoreaccount1/",
      BackupStorage__tableServiceUri: "http://127.0.0.1:10002/devstoreaccount1",
    });
    expect(local.storage).toMatchObject({
      blobServiceUri: "http://127.0.0.1:10000/devstoreaccount1",
      tableServiceUri: "http://127.0.0.1:10002/devstoreaccount1",
    });
    expect(
      parseConfig({ ...identity, BackupStorage__clientId: "0A1B2C3D-1111-2222-3333-444444444444" }).storage,
    ).toMatchObject({ clientId: "0A1B2C3D-1111-2222-3333-444444444444" });
  });

  it.each([
    [
      { ...minimal, BackupStorage__tableServiceUri: "https://a.table.core.windows.net" },
      "BackupStorage",
      "set either a connection string in BackupStorage or BackupStorage__blobServiceUri + BackupStorage__tableServiceUri, not both",
    ],
    [
      { MANAGED_HSM_URLS: minimal.MANAGED_HSM_URLS, BackupStorage: " " },
      "BackupStorage",
      "is required: a connection string, or BackupStorage__blobServiceUri and BackupStorage__tableServiceUri for an identity-based connection",
    ],
    [
      { ...identity, BackupStorage__blobServiceUri: undefined },
      "BackupStorage__blobServiceUri",
      "is required with BackupStorage__tableServiceUri",
    ],
    [
      { ...identity, BackupStorage__tableServiceUri: undefined },
      "BackupStorage__tableServiceUri",
      "is required with BackupStorage__blobServiceUri",
    ],
    [
      { ...identity, BackupStorage__blobServiceUri: "http://acct.blob.core.windows.net" },
      "BackupStorage__blobServiceUri",
      '"http://acct.blob.core.windows.net" must use https (plain http is accepted only for loopback hosts)',
    ],
    [
      { ...identity, BackupStorage__tableServiceUri: "table" },
      "BackupStorage__tableServiceUri",
      '"table" is not a URL',
    ],
    [
      { ...identity, BackupStorage__clientId: "0a1b2c3d-1111-2222-3333-44444444444" },
      "BackupStorage__clientId",
      '"0a1b2c3d-1111-2222-3333-44444444444" is not a client id (GUID)',
    ],
    [
      { ...identity, BackupStorage__clientId: "x0a1b2c3d-1111-2222-3333-444444444444" },
      "BackupStorage__clientId",
      '"x0a1b2c3d-1111-2222-3333-444444444444" is not a client id (GUID)',
    ],
    [
      { ...identity, BackupStorage__clientId: "0a1b2c3d-1111-2222-3333-4444444444440" },
      "BackupStorage__clientId",
      '"0a1b2c3d-1111-2222-3333-4444444444440" is not a client id (GUID)',
    ],
  ] as [Env, string, string][])("refuses a bad connection: %s", (env, setting, message) => {
    const error = refused(env);
    expect(error.setting).toBe(setting);
    expect(error.message).toBe(`Setting ${setting}: ${message}`);
  });
});

describe("immutable copies and deployment time", () => {
  it("refuses a copy into the backup container of the same account, however its URL is written", () => {
    const error = refused({
      ...identity,
      BackupStorage__blobServiceUri: "https://acct.blob.core.windows.net/",
      BACKUP_CONTAINER: "backups",
      BACKUP_COPY_CONTAINER: "backups",
      BackupCopyStorage__blobServiceUri: "https://acct.blob.core.windows.net",
    });
    expect(error.message).toBe(
      'Setting BACKUP_COPY_CONTAINER: "backups" is the backup container itself: a copy must go elsewhere',
    );
    // Another container of the same account is another container.
    expect(
      parseConfig({
        ...identity,
        BACKUP_CONTAINER: "backups",
        BACKUP_COPY_CONTAINER: "copies",
        BackupCopyStorage__blobServiceUri: "https://acct.blob.core.windows.net",
      }).backupCopy,
    ).toEqual({ container: "copies", blobServiceUri: "https://acct.blob.core.windows.net" });
    // The same container name in another account is another container.
    expect(
      parseConfig({
        ...identity,
        BACKUP_CONTAINER: "backups",
        BACKUP_COPY_CONTAINER: "backups",
        BackupCopyStorage__blobServiceUri: "https://vault.blob.core.windows.net",
      }).backupCopy,
    ).toEqual({ container: "backups", blobServiceUri: "https://vault.blob.core.windows.net" });
  });

  it("reads DEPLOYED_AT only in the plain ISO form, not the expanded-year one Date.parse also takes", () => {
    expect(refused({ ...minimal, DEPLOYED_AT: "+002026-12-01T03:00:00Z" }).setting).toBe("DEPLOYED_AT");
  });
});

describe("isLoopback", () => {
  it.each([
    ["localhost", true],
    ["127.0.0.1", true],
    ["127.10.200.3", true],
    ["[::1]", true],
    ["::1", true],
    ["127.0.0.1.nip.io", false],
    ["a127.0.0.1", false],
    ["localhost.example", false],
    ["0.0.0.0", false],
    ["128.0.0.1", false],
    ["127.0.0", false],
    ["[::2]", false],
    // Only brackets around the whole name (an IPv6 literal in a URL) are taken off.
    ["local[host", false],
    ["local]host", false],
    ["[localhost", true],
    ["localhost]", true],
  ])("%s → %s", (host, expected) => {
    expect(isLoopback(host)).toBe(expected);
  });
});

describe("staleStartMs", () => {
  it("is every start attempt's timeout plus every capped wait between them plus five minutes, and at least fifteen minutes", () => {
    // A restore's record (no pre-flight); a backup's adds its pre-flight (config.test.ts).
    const slow = parseConfig({ ...minimal, HSM_REQUEST_TIMEOUT_SECONDS: "120", MAX_POLL_INTERVAL_SECONDS: "300" });
    expect(staleStartMs(slow, 4, "restore")).toBe(4 * 120_000 + 3 * 300_000 + 5 * 60_000);
    expect(staleStartMs(slow, 10, "restore")).toBe(10 * 120_000 + 9 * 300_000 + 5 * 60_000);
    expect(staleStartMs(slow, 1, "restore")).toBe(15 * 60_000);
    const above = parseConfig({ ...minimal, HSM_REQUEST_TIMEOUT_SECONDS: "100", MAX_POLL_INTERVAL_SECONDS: "67" });
    expect(staleStartMs(above, 4, "restore")).toBe(901_000);
    const below = parseConfig({ ...minimal, HSM_REQUEST_TIMEOUT_SECONDS: "100", MAX_POLL_INTERVAL_SECONDS: "66" });
    expect(staleStartMs(below, 4, "restore")).toBe(900_000);
    const noPreflight = parseConfig({ ...minimal, PREFLIGHT: "false", HSM_REQUEST_TIMEOUT_SECONDS: "100" });
    expect(staleStartMs(noPreflight, 4)).toBe(staleStartMs(noPreflight, 4, "restore"));
    expect(staleStartMs(parseConfig({ ...minimal, HSM_REQUEST_TIMEOUT_SECONDS: "100" }))).toBe(
      6 * 100_000 + 2 * (4 * 100_000 + 3 * 60_000) + 10 * 60_000 + 5 * 60_000,
    );
  });
});
