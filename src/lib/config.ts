/**
 * The one place that reads app settings. Every setting the app reads is named in SETTINGS; the README
 * table, local.settings.sample.json and the Bicep app settings list exactly these (tests hold them
 * together). parseConfig is pure so tests can pass a literal object.
 */
import { parseSchedule } from "./schedule.js";

export const SETTINGS = [
  "MANAGED_HSM_URLS",
  "BackupStorage",
  "BackupStorage__blobServiceUri",
  "BackupStorage__tableServiceUri",
  "BackupStorage__clientId",
  "BACKUP_CONTAINER",
  "CATALOG_TABLE",
  "BACKUP_SCHEDULE",
  "SAS_TTL_MINUTES",
  "HSM_API_VERSION",
  "HSM_STORAGE_AUTH",
  "RESTORE_ENABLED",
  "HEALTH_MAX_AGE_HOURS",
  "HEALTH_GRACE_HOURS",
  "DEPLOYED_AT",
  "HSM_REQUEST_TIMEOUT_SECONDS",
  "MAX_POLL_INTERVAL_SECONDS",
  "JOB_TIMEOUT_MINUTES",
  "RECONCILE_SCHEDULE",
  "BACKUP_CONCURRENCY",
  "BACKUP_COPY_CONTAINER",
  "BackupCopyStorage__blobServiceUri",
  "PREFLIGHT",
  "RETENTION_DAYS",
  "RETENTION_MIN_KEEP",
  "PRUNE_SCHEDULE",
] as const;

export type SettingName = (typeof SETTINGS)[number];
export type Env = Readonly<Record<string, string | undefined>>;

export const DEFAULT_BACKUP_SCHEDULE = "0 0 2 * * *";
export const DEFAULT_RECONCILE_SCHEDULE = "0 */15 * * * *";
export const DEFAULT_PRUNE_SCHEDULE = "0 30 3 * * *";

/**
 * host.json's functionTimeout (a test holds the two together). A timer run stops waiting
 * RUN_MARGIN_MS before it, so it ends on its own terms: what it did not see end stays Running
 * for the reconcile run to settle, rather than the host killing the invocation mid-write.
 */
export const FUNCTION_TIMEOUT_MS = 60 * 60_000;
export const RUN_MARGIN_MS = 5 * 60_000;

/** api-versions whose backuprestore spec has full backup, restore and selective key restore. */
export const HSM_API_VERSIONS = ["7.2", "7.3", "7.4", "7.5", "7.6", "2025-06-01", "2025-07-01"] as const;
/** Managed-identity storage access (no SAS) exists from 7.5 on. */
const MANAGED_IDENTITY_API_VERSIONS = new Set(["7.5", "7.6", "2025-06-01", "2025-07-01"]);

export interface HsmTarget {
  /** Origin of the HSM, e.g. https://contoso.managedhsm.azure.net */
  readonly url: string;
  /** First DNS label, e.g. contoso: the name used in backup folder names and the catalog. */
  readonly name: string;
}

export type StorageConnection =
  | { readonly kind: "connectionString"; readonly connectionString: string }
  | {
      readonly kind: "identity";
      readonly blobServiceUri: string;
      readonly tableServiceUri: string;
      readonly clientId?: string;
    };

export interface AppConfig {
  readonly hsms: readonly HsmTarget[];
  readonly storage: StorageConnection;
  readonly backupContainer: string;
  readonly catalogTable: string;
  readonly backupSchedule: string;
  readonly sasTtlMinutes: number;
  readonly hsmApiVersion: string;
  /** "sas": the app signs a container SAS per job; "managedIdentity": the HSM's own identity reaches storage. */
  readonly hsmStorageAuth: "sas" | "managedIdentity";
  readonly restoreEnabled: boolean;
  readonly healthMaxAgeHours: number;
  /**
   * An HSM with no successful backup yet is not stale until this long after deployedAt: a new
   * deployment (or a newly added HSM) does not page anyone before its first backup could run. 0: off.
   */
  readonly healthGraceHours: number;
  /** When Bicep last deployed the app's settings (DEPLOYED_AT); absent locally, which means no grace. */
  readonly deployedAt?: Date;
  /** Per call to an HSM or storage: token, connection and the whole answer. */
  readonly requestTimeoutMs: number;
  /** Cap on any Retry-After the HSM asks for. */
  readonly maxPollIntervalMs: number;
  /** After this long a job still running (or unreadable) is recorded TimedOut. */
  readonly jobTimeoutMs: number;
  readonly reconcileSchedule: string;
  /** At most this many HSMs are backed up at once. */
  readonly backupConcurrency: number;
  /** Backup folders older than this many days are deleted by prune, the floor excepted. */
  readonly retentionDays: number;
  /** The floor: prune never deletes the newest this many usable backups of an HSM. */
  readonly retentionMinKeep: number;
  readonly pruneSchedule: string;
  /** Checks storage and (api 7.6+) the HSM's pre-backup before every backup; a failed check is recorded PreflightFailed. */
  readonly preflight: boolean;
  /** Immutable copies: where each succeeded backup is copied; absent when copies are off. */
  readonly backupCopy?: BackupCopyTarget;
}

/**
 * The container a backup is copied into (the "vault", whose account has an immutability policy the
 * HSM's own target may not have). blobServiceUri absent: the container is in the BackupStorage
 * connection string's account (local development, Azurite).
 */
export interface BackupCopyTarget {
  readonly container: string;
  readonly blobServiceUri?: string;
}

export class ConfigError extends Error {
  constructor(
    readonly setting: SettingName | `${string}`,
    message: string,
  ) {
    super(`Setting ${setting}: ${message}`);
    this.name = "ConfigError";
  }
}

/** Parses and validates every setting; throws ConfigError naming the first missing or malformed one. */
export function parseConfig(env: Env): AppConfig {
  const hsmApiVersion = oneOf(env, "HSM_API_VERSION", HSM_API_VERSIONS, "7.6");
  const hsmStorageAuth = oneOf(env, "HSM_STORAGE_AUTH", ["sas", "managedIdentity"] as const, "sas");
  if (hsmStorageAuth === "managedIdentity" && !MANAGED_IDENTITY_API_VERSIONS.has(hsmApiVersion)) {
    throw new ConfigError(
      "HSM_STORAGE_AUTH",
      `"managedIdentity" needs HSM_API_VERSION 7.5 or later, but HSM_API_VERSION is "${hsmApiVersion}"`,
    );
  }
  return {
    hsms: parseHsmUrls(env),
    storage: parseStorageConnection(env),
    backupContainer: matching(env, "BACKUP_CONTAINER", "mhsm-backups", CONTAINER_NAME, CONTAINER_NAME_RULE),
    catalogTable: matching(
      env,
      "CATALOG_TABLE",
      "hsmbackups",
      /^[A-Za-z][A-Za-z0-9]{2,62}$/,
      "a table name: 3-63 letters and digits, starting with a letter",
    ),
    backupSchedule: backupSchedule(env, { validate: true }),
    sasTtlMinutes: integer(env, "SAS_TTL_MINUTES", 120, 5, 24 * 60),
    hsmApiVersion,
    hsmStorageAuth,
    restoreEnabled: boolean(env, "RESTORE_ENABLED", true),
    healthMaxAgeHours: integer(env, "HEALTH_MAX_AGE_HOURS", 26, 1, 24 * 31),
    healthGraceHours: integer(env, "HEALTH_GRACE_HOURS", 26, 0, 24 * 31),
    deployedAt: timestamp(env, "DEPLOYED_AT"),
    requestTimeoutMs: integer(env, "HSM_REQUEST_TIMEOUT_SECONDS", 30, 5, 120) * 1000,
    maxPollIntervalMs: integer(env, "MAX_POLL_INTERVAL_SECONDS", 60, 1, 300) * 1000,
    jobTimeoutMs: integer(env, "JOB_TIMEOUT_MINUTES", 120, 10, 24 * 60) * 60_000,
    reconcileSchedule: schedule(env, "RECONCILE_SCHEDULE", DEFAULT_RECONCILE_SCHEDULE, { validate: true }),
    backupConcurrency: integer(env, "BACKUP_CONCURRENCY", 8, 1, 100),
    ...parseBackupCopy(env),
    preflight: boolean(env, "PREFLIGHT", true),
    retentionDays: integer(env, "RETENTION_DAYS", 30, 1, 3650),
    retentionMinKeep: integer(env, "RETENTION_MIN_KEEP", 7, 1, 1000),
    pruneSchedule: schedule(env, "PRUNE_SCHEDULE", DEFAULT_PRUNE_SCHEDULE, { validate: true }),
  };
}

const CONTAINER_NAME = /^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$/;
const CONTAINER_NAME_RULE =
  "a blob container name: 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit";

/**
 * Copies are off unless BACKUP_COPY_CONTAINER names a container. Half a configuration is refused
 * rather than read as "off": an operator who set one of the two expects copies.
 */
function parseBackupCopy(env: Env): { backupCopy?: BackupCopyTarget } {
  const container = setting(env, "BACKUP_COPY_CONTAINER");
  const uri = setting(env, "BackupCopyStorage__blobServiceUri");
  const identity = setting(env, "BackupStorage") === undefined;
  if (container === undefined) {
    if (uri !== undefined)
      throw new ConfigError("BACKUP_COPY_CONTAINER", "is required with BackupCopyStorage__blobServiceUri");
    return {};
  }
  if (!CONTAINER_NAME.test(container))
    throw new ConfigError("BACKUP_COPY_CONTAINER", `"${container}" is not ${CONTAINER_NAME_RULE}`);
  const backupContainer = setting(env, "BACKUP_CONTAINER") ?? "mhsm-backups";
  const itself = () =>
    new ConfigError("BACKUP_COPY_CONTAINER", `"${container}" is the backup container itself: a copy must go elsewhere`);
  if (!identity) {
    if (uri !== undefined)
      throw new ConfigError(
        "BackupCopyStorage__blobServiceUri",
        "is for the identity-based connection; with a BackupStorage connection string the copy container is in that account",
      );
    if (container === backupContainer) throw itself();
    return { backupCopy: { container } };
  }
  if (uri === undefined)
    throw new ConfigError(
      "BackupCopyStorage__blobServiceUri",
      "is required with BACKUP_COPY_CONTAINER: the blob endpoint of the account that holds the immutable copies",
    );
  const blobServiceUri = parseServiceUrl("BackupCopyStorage__blobServiceUri", uri).href.replace(/\/$/, "");
  const backupBlobServiceUri = setting(env, "BackupStorage__blobServiceUri")?.replace(/\/$/, "");
  if (container === backupContainer && blobServiceUri === backupBlobServiceUri) throw itself();
  return { backupCopy: { container, blobServiceUri } };
}

/**
 * The timer schedule, read at registration time. With validate false it never throws: a throw while
 * a function file loads takes the whole app down, and the host reports a bad schedule itself.
 */
export function backupSchedule(env: Env, { validate = false } = {}): string {
  return schedule(env, "BACKUP_SCHEDULE", DEFAULT_BACKUP_SCHEDULE, { validate });
}

/** The reconcile timer's schedule, read at registration time; never throws (see backupSchedule). */
export function reconcileSchedule(env: Env): string {
  return schedule(env, "RECONCILE_SCHEDULE", DEFAULT_RECONCILE_SCHEDULE);
}

/** The prune timer's schedule, read at registration time; never throws (see backupSchedule). */
export function pruneSchedule(env: Env): string {
  return schedule(env, "PRUNE_SCHEDULE", DEFAULT_PRUNE_SCHEDULE);
}

function schedule(
  env: Env,
  name: "BACKUP_SCHEDULE" | "RECONCILE_SCHEDULE" | "PRUNE_SCHEDULE",
  fallback: string,
  { validate = false }: { validate?: boolean } = {},
): string {
  const value = setting(env, name) ?? fallback;
  if (validate) {
    try {
      parseSchedule(value);
    } catch (error) {
      throw new ConfigError(
        name,
        `${(error as Error).message}: expected six fields (second minute hour day month day-of-week), UTC, e.g. "${fallback}"`,
      );
    }
  }
  return value;
}

/**
 * How long a record may stay Starting (no job id) while its worker is still trying to start the
 * job: every attempt's timeout plus every capped wait between attempts, and a margin. A Starting
 * record older than this lost its worker. A backup's record is Starting through its pre-flight too
 * (PREFLIGHT): two storage calls (each up to three tries), the pre-backup start and its wait.
 */
export function staleStartMs(
  config: AppConfig,
  maxStartAttempts = 4,
  operation: "backup" | "restore" = "backup",
): number {
  const longestStart = maxStartAttempts * config.requestTimeoutMs + (maxStartAttempts - 1) * config.maxPollIntervalMs;
  const preflight =
    operation === "backup" && config.preflight
      ? 2 * 3 * config.requestTimeoutMs + longestStart + PRE_BACKUP_MAX_WAIT_MS
      : 0;
  return Math.max(15 * 60_000, preflight + longestStart + 5 * 60_000);
}

/** The HSM's pre-backup check (the pre-flight) is waited for at most this long, within the backup's deadline. */
export const PRE_BACKUP_MAX_WAIT_MS = 10 * 60_000;

function parseHsmUrls(env: Env): HsmTarget[] {
  const raw = setting(env, "MANAGED_HSM_URLS");
  if (raw === undefined) {
    throw new ConfigError(
      "MANAGED_HSM_URLS",
      "is required: a comma-separated list of Managed HSM URLs, e.g. https://contoso.managedhsm.azure.net",
    );
  }
  const targets: HsmTarget[] = [];
  for (const entry of raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)) {
    const url = parseServiceUrl("MANAGED_HSM_URLS", entry);
    if (url.pathname !== "/" || url.search || url.hash) {
      throw new ConfigError("MANAGED_HSM_URLS", `"${entry}" must be the HSM's base URL with no path or query`);
    }
    const name = hsmNameOf(url);
    if (targets.some((t) => t.url === url.origin)) {
      throw new ConfigError("MANAGED_HSM_URLS", `"${entry}" is listed twice`);
    }
    if (targets.some((t) => t.name === name)) {
      throw new ConfigError("MANAGED_HSM_URLS", `two HSMs share the name "${name}"; names must be unique`);
    }
    targets.push({ url: url.origin, name });
  }
  if (targets.length === 0) {
    throw new ConfigError("MANAGED_HSM_URLS", "lists no HSM");
  }
  return targets;
}

function parseStorageConnection(env: Env): StorageConnection {
  const connectionString = setting(env, "BackupStorage");
  const blobServiceUri = setting(env, "BackupStorage__blobServiceUri");
  const tableServiceUri = setting(env, "BackupStorage__tableServiceUri");
  const clientId = setting(env, "BackupStorage__clientId");
  if (connectionString !== undefined) {
    if (blobServiceUri !== undefined || tableServiceUri !== undefined) {
      throw new ConfigError(
        "BackupStorage",
        "set either a connection string in BackupStorage or BackupStorage__blobServiceUri + BackupStorage__tableServiceUri, not both",
      );
    }
    if (!/(^|;)\s*(UseDevelopmentStorage=true|AccountName=)/i.test(connectionString)) {
      throw new ConfigError(
        "BackupStorage",
        "is not a storage connection string (expected UseDevelopmentStorage=true or one with AccountName=...)",
      );
    }
    return { kind: "connectionString", connectionString };
  }
  if (blobServiceUri === undefined && tableServiceUri === undefined) {
    throw new ConfigError(
      "BackupStorage",
      "is required: a connection string, or BackupStorage__blobServiceUri and BackupStorage__tableServiceUri for an identity-based connection",
    );
  }
  if (blobServiceUri === undefined)
    throw new ConfigError("BackupStorage__blobServiceUri", "is required with BackupStorage__tableServiceUri");
  if (tableServiceUri === undefined)
    throw new ConfigError("BackupStorage__tableServiceUri", "is required with BackupStorage__blobServiceUri");
  return {
    kind: "identity",
    blobServiceUri: parseServiceUrl("BackupStorage__blobServiceUri", blobServiceUri).href.replace(/\/$/, ""),
    tableServiceUri: parseServiceUrl("BackupStorage__tableServiceUri", tableServiceUri).href.replace(/\/$/, ""),
    ...(clientId !== undefined ? { clientId: guid("BackupStorage__clientId", clientId) } : {}),
  };
}

/** https, or plain http only on a loopback host (Azurite, the local emulator). */
function parseServiceUrl(name: SettingName, value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(name, `"${value}" is not a URL`);
  }
  if (url.protocol === "https:") return url;
  if (url.protocol === "http:" && isLoopback(url.hostname)) return url;
  throw new ConfigError(name, `"${value}" must use https (plain http is accepted only for loopback hosts)`);
}

/**
 * The name of the HSM at `url`, as the catalog records it and as its backup folders carry it
 * (`mhsm-<name>-…`): the first DNS label, `contoso` for https://contoso.managedhsm.azure.net. A bare
 * loopback address (a local stand-in) has no name in it, so its port tells instances apart:
 * `loopback-8443`. The HSM emulator names itself by this same function when reached that way, so in
 * the local http mode the catalog and the folders agree.
 */
export function hsmNameOf(url: URL): string {
  return isLoopback(url.hostname) ? `loopback-${url.port || "80"}` : (url.hostname.split(".")[0] ?? "");
}

export function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
}

function setting(env: Env, name: SettingName): string | undefined {
  const value = env[name]?.trim();
  return value === "" ? undefined : value;
}

function matching(env: Env, name: SettingName, fallback: string, pattern: RegExp, expected: string): string {
  const value = setting(env, name) ?? fallback;
  if (!pattern.test(value)) throw new ConfigError(name, `"${value}" is not ${expected}`);
  return value;
}

function integer(env: Env, name: SettingName, fallback: number, min: number, max: number): number {
  const raw = setting(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new ConfigError(name, `"${raw}" is not a whole number from ${min} to ${max}`);
  }
  return Number(raw);
}

/** An ISO 8601 UTC time, as Bicep's utcNow('u') ("2026-12-01 03:00:00Z") or utcNow('o') write it. */
function timestamp(env: Env, name: SettingName): Date | undefined {
  const raw = setting(env, name);
  if (raw === undefined) return undefined;
  const iso = raw.replace(" ", "T");
  const time = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?Z$/.test(iso) ? Date.parse(iso) : NaN;
  if (Number.isNaN(time)) throw new ConfigError(name, `"${raw}" is not a UTC time like 2026-12-01T03:00:00Z`);
  return new Date(time);
}

function boolean(env: Env, name: SettingName, fallback: boolean): boolean {
  const raw = setting(env, name)?.toLowerCase();
  if (raw === undefined) return fallback;
  if (raw === "true") return true;
  if (raw === "false") return false;
  throw new ConfigError(name, `"${raw}" is not true or false`);
}

function oneOf<T extends string>(env: Env, name: SettingName, allowed: readonly T[], fallback: T): T {
  const raw = setting(env, name) ?? fallback;
  const found = allowed.find((a) => a === raw);
  if (found === undefined) throw new ConfigError(name, `"${raw}" is not one of ${allowed.join(", ")}`);
  return found;
}

function guid(name: SettingName, value: string): string {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value)) {
    throw new ConfigError(name, `"${value}" is not a client id (GUID)`);
  }
  return value;
}
