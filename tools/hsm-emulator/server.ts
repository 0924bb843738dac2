import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import type { TlsSettings } from "@azure/core-rest-pipeline";
import { AnonymousCredential, ContainerClient, type StoragePipelineOptions } from "@azure/storage-blob";
import { hsmNameOf } from "../../src/lib/config.js";
import { authenticate, challengeHeader, type Caller } from "./auth.js";
import { HsmHttpError, badRequest, toError } from "./errors.js";
import {
  JobFailure,
  JobManager,
  type FaultTarget,
  type JobFamily,
  type JobKind,
  type JobLogEntry,
  type JobRequest,
  type MissingParameter,
  type StorageAccess,
} from "./jobs.js";
import {
  KeyStore,
  deletedKeyBundle,
  isKeyType,
  keyBundle,
  keyItem,
  type DeletedKeyBundle,
  type KeyBundle,
  type KeyItem,
  type KeyType,
} from "./keys.js";
import {
  DATA_ACTION_PREFIX,
  HSM_ROLES,
  RoleStore,
  findRoleDefinition,
  parseScope,
  roleDefinitions,
  type HsmDataAction,
  type RoleAssignment,
} from "./rbac.js";
import { parseStorageResourceUri, redact } from "./storage.js";

export interface HsmEmulatorOptions {
  /**
   * HSM name used in backup folder names (`mhsm-<name>-...`). Default: the name the app gives an HSM
   * at this emulator's own URL (`loopback-<port>`, src/lib/config.ts hsmNameOf), so an app pointed at
   * http://127.0.0.1:<port> finds its folders under the name its catalog records.
   */
  name?: string;
  /** Port on 127.0.0.1; default 0 (a free port). */
  port?: number;
  /**
   * Serve HTTPS with this certificate and key (PEM) instead of plain http, so clients run their real
   * TLS and host-name checks, e.g. against a test CA's leaf for `*.managedhsm.azure.net`.
   */
  tls?: { readonly cert: string; readonly key: string };
  /** Tenant in the challenge's authorization URL. Default 00000000-0000-0000-0000-000000000000. */
  tenantId?: string;
  /** Retry-After (seconds) on 202 responses. Default 1. */
  retryAfterSeconds?: number;
  /** Minimum time a job stays InProgress. Default 200 ms. */
  jobDurationMs?: number;
  /** Options for the ContainerClient built from a SAS (e.g. tlsOptions for an HTTPS Azurite). */
  storageClientOptions?: StoragePipelineOptions & { tlsOptions?: TlsSettings };
  /**
   * Storage access for requests with `useManagedIdentity: true` (stands in for the HSM's user-assigned
   * identity). Absent: such jobs fail, like a real HSM without a user-assigned identity.
   */
  managedIdentityStorage?: (containerUrl: string) => ContainerClient;
  /** Check HSM local RBAC for backup/restore and role management. Default false. */
  enforceRbac?: boolean;
  /**
   * Principals that get "Managed HSM Administrator" at scope `/` on start, like the real HSM's
   * initialAdminObjectIds. Needed to bootstrap role assignments over HTTP when enforceRbac is on.
   */
  initialAdminObjectIds?: readonly string[];
  /** One line per request and per job transition, secrets removed. Default: silent. */
  log?: (line: string) => void;
  /**
   * Clock (epoch ms) of job start/end times and backup folder names, e.g. a test's simulated clock
   * so that folder times agree with the app's; default Date.now. Job durations and token expiry stay
   * on real time.
   */
  now?: () => number;
}

export interface RecordedRequest {
  readonly requestId: string;
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  /** Lower-case names; Authorization is "<redacted>". */
  readonly headers: Readonly<Record<string, string>>;
  /** Parsed JSON (any `token` field "<redacted>"), the raw text if not JSON, or null when empty. */
  readonly body: unknown;
  /** The response status (0 only while the request is still being answered). */
  readonly status: number;
}

export interface HsmEmulatorKeys {
  /** Creates the key or adds a version; default kty "RSA" (stored as RSA-HSM). */
  create(name: string, kty?: KeyType): KeyBundle;
  /** Current version of a live key. */
  get(name: string): KeyBundle | undefined;
  list(): KeyItem[];
  /** Soft delete; throws if the key is not live. */
  delete(name: string): DeletedKeyBundle;
  /** Purges a soft-deleted key; throws if there is none. */
  purge(name: string): void;
  /** True for a live key (a soft-deleted one does not count). */
  has(name: string): boolean;
  /** True for a soft-deleted, not yet purged key. */
  isDeleted(name: string): boolean;
}

export interface HsmEmulatorRoles {
  /** Adds a role assignment directly (no RBAC check). roleDefinitionId may be a bare GUID; scope defaults to "/". */
  assign(principalId: string, roleDefinitionId: string, options?: { scope?: string; name?: string }): RoleAssignment;
  list(): RoleAssignment[];
  remove(name: string): void;
}

export interface HsmEmulatorFaults {
  /**
   * The next matching job ends Failed with this error: "backup" the next full backup (never a
   * pre-backup), "prebackup" the next pre-backup, "restore" the next restore-family job (full,
   * selective or pre-restore), "any" the next job of any kind.
   */
  failNextJob(kind: FaultTarget, error?: { code: string; message: string }): void;
  /** The next `count` authenticated requests get this status, Retry-After and a KeyVault error body; nothing else happens. */
  throttleNext(count: number, status: 429 | 503, retryAfterSeconds: number): void;
  /**
   * Minimum InProgress time for jobs started from now on; with `kind`, for that kind of job only
   * (without it, for every kind, dropping per-kind durations).
   */
  setJobDurationMs(ms: number, kind?: JobKind): void;
  /**
   * The next job start answers with an Azure-AsyncOperation URL on this origin (e.g. another host)
   * instead of the one the request came in on; the job itself runs as usual. For testing that a
   * client never follows a status URL, with its bearer token, to a host it did not choose.
   */
  foreignAsyncOperationNext(origin: string): void;
}

export interface HsmEmulator {
  /** http://127.0.0.1:<port>, or https://127.0.0.1:<port> with the `tls` option. */
  readonly url: string;
  /** The port it listens on at 127.0.0.1 (what a test transport maps a real HSM host name to). */
  readonly port: number;
  readonly name: string;
  readonly requests: RecordedRequest[];
  /** Every job it ever started, in start order (copies: later changes do not show in them). */
  jobs(): JobLogEntry[];
  readonly keys: HsmEmulatorKeys;
  readonly roles: HsmEmulatorRoles;
  readonly faults: HsmEmulatorFaults;
  stop(): Promise<void>;
}

/**
 * api-versions with backuprestore.json in the spec, ranked so feature gates can compare them
 * (managed identity from 7.5, pre-operations from 7.6).
 */
const API_VERSION_RANK: Readonly<Record<string, number>> = {
  "7.2-preview": 72,
  "7.2": 72,
  "7.3-preview": 73,
  "7.3": 73,
  "7.4-preview.1": 74,
  "7.4": 74,
  "7.5-preview.1": 75,
  "7.5": 75,
  "7.6-preview.1": 76,
  "7.6-preview.2": 76,
  "7.6": 76,
  "2025-06-01": 77,
  "2025-07-01": 78,
};
const SUPPORTED_API_VERSIONS = Object.keys(API_VERSION_RANK).join(", ");

function apiVersionRank(version: string): number | undefined {
  const known = API_VERSION_RANK[version];
  if (known !== undefined) return known;
  // Date-named previews newer than the last stable one, e.g. 2026-01-01-preview (.NET V2026_01_01_Preview).
  const preview = /^(\d{4}-\d{2}-\d{2})-preview$/.exec(version);
  return preview && preview[1]! > "2025-07-01" ? 79 : undefined;
}

const MAX_BODY_BYTES = 1024 * 1024;
const KEY_NAME = /^[0-9a-zA-Z-]{1,127}$/;
const JOB_ID = /^[0-9a-f]{32}$/i;
const HSM_NAME = /^[a-zA-Z0-9-]{3,24}$/;

interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

interface RequestContext {
  readonly method: string;
  /** Decoded, non-empty path segments: `///providers/...` and `/keys/k1/` parse like `/providers/...` and `/keys/k1`. */
  readonly segments: readonly string[];
  readonly apiVersion: string | undefined;
  readonly rawBody: string;
  /** Scheme + host the client used, so kids and polling URLs point back the way it came. */
  readonly baseUrl: string;
  readonly caller: Caller;
}

interface RequestTarget {
  readonly pathname: string;
  readonly query: URLSearchParams;
}

/**
 * Splits the request target by hand: the JS SDK sends role calls at scope "/" as `//providers/...`,
 * which `new URL(target, base)` would read as a protocol-relative URL with host "providers".
 */
function parseTarget(raw: string): RequestTarget {
  const queryStart = raw.indexOf("?");
  return {
    pathname: queryStart < 0 ? raw : raw.slice(0, queryStart),
    query: new URLSearchParams(queryStart < 0 ? "" : raw.slice(queryStart + 1)),
  };
}

interface MutableRecord {
  requestId: string;
  method: string;
  path: string;
  query: Record<string, string>;
  headers: Record<string, string>;
  body: unknown;
  status: number;
}

const is = (segment: string | undefined, word: string): boolean => segment?.toLowerCase() === word.toLowerCase();

function redactRecordedBody(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redactRecordedBody);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([key, inner]) => [key, key === "token" ? "<redacted>" : redactRecordedBody(inner)]),
    );
  }
  return typeof value === "string" ? redact(value) : value;
}

function parseJsonObject(raw: string): Record<string, unknown> | undefined {
  if (!raw.trim()) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (error) {
    throw badRequest(`The request body is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw badRequest("The request body must be a JSON object.");
  return value as Record<string, unknown>;
}

function optionalString(source: Record<string, unknown>, field: string, path: string): string | undefined {
  const value = source[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw badRequest(`${path}${field} must be a string, got ${typeof value}.`);
  return value;
}

function requiredString(source: Record<string, unknown>, field: string, path: string): string {
  const value = optionalString(source, field, path);
  if (!value) throw badRequest(`${path}${field} is required.`);
  return value;
}

/**
 * Reads a SASTokenParameter (flat for backup, nested as sasTokenParameters elsewhere) and rejects what
 * the real service rejects synchronously. Pre-operations (required=false) turn missing fields into a
 * failed job instead, since their spec has no required fields.
 */
function readStorageAccess(
  value: unknown,
  path: string,
  apiVersion: string,
  required: boolean,
): StorageAccess | MissingParameter {
  const missing = (detail: string): MissingParameter => {
    if (required) throw badRequest(detail);
    return { kind: "missing", detail: `Storage access check failed: ${detail}` };
  };
  if (value === undefined || value === null) return missing(`${path || "The request body"} is required.`);
  if (typeof value !== "object" || Array.isArray(value))
    throw badRequest(`${path || "The request body"} must be a JSON object.`);
  const source = value as Record<string, unknown>;
  const prefix = path ? `${path}.` : "";
  const uri = optionalString(source, "storageResourceUri", prefix);
  const token = optionalString(source, "token", prefix);
  const useManagedIdentity = source.useManagedIdentity;
  if (useManagedIdentity !== undefined && useManagedIdentity !== null && typeof useManagedIdentity !== "boolean") {
    throw badRequest(`${prefix}useManagedIdentity must be a boolean, got ${typeof useManagedIdentity}.`);
  }
  if (useManagedIdentity === true && (apiVersionRank(apiVersion) ?? 0) < 75) {
    throw badRequest(
      `${prefix}useManagedIdentity is not supported in api-version ${apiVersion}; it needs 7.5 or later.`,
    );
  }
  if (!uri) return missing(`${prefix}storageResourceUri is required.`);
  const target = parseStorageResourceUri(uri, `${prefix}storageResourceUri`);
  if (useManagedIdentity === true) return { kind: "managedIdentity", target };
  if (!token)
    return missing(`${prefix}token (a container SAS) is required unless ${prefix}useManagedIdentity is true.`);
  // Every source sends the SAS without '?'; whether the real service tolerates one is not established,
  // so the emulator refuses it rather than let a client bug pass locally.
  if (token.startsWith("?")) {
    throw badRequest("The customer provided SAS token is malformed. The SAS token must not start with '?'.");
  }
  if (!new URLSearchParams(token).get("se")) {
    // Recorded real response (api 7.3, 2022-10-24).
    throw badRequest("The customer provided SAS token is malformed. The SAS token does not contain the expiry field");
  }
  return { kind: "sas", target, token };
}

function requireStorageAccess(value: unknown, path: string, apiVersion: string): StorageAccess {
  const access = readStorageAccess(value, path, apiVersion, true);
  if (access.kind === "missing") throw badRequest(access.detail);
  return access;
}

/** Starts the emulator on 127.0.0.1 and resolves once it listens. */
export async function startHsmEmulator(options: HsmEmulatorOptions = {}): Promise<HsmEmulator> {
  if (options.name !== undefined && !HSM_NAME.test(options.name)) {
    throw new Error(`HSM emulator name '${options.name}' is invalid: use 3-24 letters, digits and dashes.`);
  }
  // Settled once the port is known (below); no request can reach a job before that.
  let name = options.name ?? "";
  const tenantId = options.tenantId ?? "00000000-0000-0000-0000-000000000000";
  const retryAfterSeconds = options.retryAfterSeconds ?? 1;
  const enforceRbac = options.enforceRbac ?? false;
  const log = options.log ?? (() => undefined);
  const keys = new KeyStore();
  const roles = new RoleStore();
  for (const oid of options.initialAdminObjectIds ?? []) roles.put("/", randomUUID(), HSM_ROLES.administrator, oid);
  const requests: RecordedRequest[] = [];
  let throttle: { remaining: number; status: 429 | 503; retryAfterSeconds: number } | undefined;
  let foreignAsyncOperationOrigin: string | undefined;

  const jobs = new JobManager(
    {
      get hsmName() {
        return name;
      },
      keys,
      roles,
      log,
      ...(options.now ? { now: options.now } : {}),
      storageClient(access) {
        if (access.kind === "managedIdentity") {
          if (!options.managedIdentityStorage) {
            throw new JobFailure(
              "ManagedIdentityNotConfigured",
              "useManagedIdentity is true, but this managed HSM has no user-assigned managed identity to authenticate to Azure Storage with (emulator option managedIdentityStorage is not set).",
            );
          }
          return options.managedIdentityStorage(access.target.containerUrl);
        }
        // Short retries: a real HSM retries too, but a test must not wait 4 s per try on a dead endpoint.
        return new ContainerClient(`${access.target.containerUrl}?${access.token}`, new AnonymousCredential(), {
          retryOptions: { maxTries: 3, retryDelayInMs: 100, maxRetryDelayInMs: 1000 },
          ...options.storageClientOptions,
        });
      },
    },
    options.jobDurationMs ?? 200,
  );

  function authorize(ctx: RequestContext, action: HsmDataAction, scope = "/"): void {
    if (!enforceRbac || roles.isAllowed(ctx.caller.oid, action)) return;
    // Shape reported from a real HSM: "(AccessDenied) Not authorized to access
    // Microsoft.KeyVault/managedHsm/roleAssignments/read/action on /" (Azure/azure-cli#32719).
    throw new HsmHttpError(
      403,
      "AccessDenied",
      `Not authorized to access ${DATA_ACTION_PREFIX}${action} on ${scope}. Caller oid=${ctx.caller.oid ?? "(token has no oid)"} has no role assignment at scope / that grants it.`,
    );
  }

  function startReply(ctx: RequestContext, family: JobFamily, request: JobRequest): Reply {
    const job = jobs.start(request);
    const origin = foreignAsyncOperationOrigin ?? ctx.baseUrl;
    foreignAsyncOperationOrigin = undefined;
    return {
      status: 202,
      headers: {
        "Azure-AsyncOperation": `${origin}/${family}/${job.id}/pending`,
        "Retry-After": String(retryAfterSeconds),
      },
      body: jobs.render(job),
    };
  }

  function requireApiVersionForPreOperation(ctx: RequestContext): string {
    const version = ctx.apiVersion!;
    if ((apiVersionRank(version) ?? 0) < 76) {
      throw badRequest(
        `${ctx.method} /${ctx.segments.join("/")} is not available in api-version ${version}; it needs 7.6 or later.`,
      );
    }
    return version;
  }

  function statusReply(ctx: RequestContext, family: JobFamily, jobId: string): Reply {
    authorize(ctx, family === "backup" ? "backup/status/action" : "restore/status/action");
    const job = JOB_ID.test(jobId) ? jobs.find(family, jobId) : undefined;
    if (!job)
      throw new HsmHttpError(404, "NotFound", `No ${family} job with id '${jobId}' exists on this managed HSM.`);
    return { status: 200, body: jobs.render(job) };
  }

  function keyNameFrom(segment: string): string {
    if (!KEY_NAME.test(segment))
      throw badRequest(`Key name '${segment}' is invalid: use 1-127 letters, digits and dashes.`, "BadParameter");
    return segment;
  }

  function createKey(ctx: RequestContext, keyName: string): Reply {
    const body = parseJsonObject(ctx.rawBody) ?? {};
    const kty = body.kty;
    if (!isKeyType(kty)) {
      throw badRequest(
        `kty must be one of RSA, RSA-HSM, EC, EC-HSM, oct, oct-HSM; got ${JSON.stringify(kty)}.`,
        "BadParameter",
      );
    }
    const keyOps = body.key_ops;
    if (keyOps !== undefined && (!Array.isArray(keyOps) || !keyOps.every((op) => typeof op === "string"))) {
      throw badRequest("key_ops must be an array of strings.", "BadParameter");
    }
    const attributes = (body.attributes ?? {}) as { enabled?: unknown };
    const enabled = typeof attributes.enabled === "boolean" ? attributes.enabled : undefined;
    const version = keys.create(keyName, kty, { keyOps: keyOps as string[] | undefined, enabled });
    return { status: 200, body: keyBundle(ctx.baseUrl, keyName, version) };
  }

  function keysRoute(ctx: RequestContext): Reply | undefined {
    const [, second, third] = ctx.segments;
    const { method } = ctx;
    if (ctx.segments.length === 1) {
      if (method !== "GET") return undefined;
      return {
        status: 200,
        body: { value: keys.liveRecords().map((record) => keyItem(ctx.baseUrl, record)), nextLink: null },
      };
    }
    const keyName = keyNameFrom(second!);
    if (ctx.segments.length === 2) {
      if (method === "GET") {
        return { status: 200, body: keyBundle(ctx.baseUrl, keyName, keys.requireVersion(keyName, undefined)) };
      }
      if (method === "DELETE") return { status: 200, body: deletedKeyBundle(ctx.baseUrl, keys.softDelete(keyName)) };
      return undefined;
    }
    if (ctx.segments.length === 3) {
      if (is(third, "create") && method === "POST") return createKey(ctx, keyName);
      if (is(third, "restore") && method === "PUT") return selectiveKeyRestore(ctx, keyName);
      if (is(third, "versions") && method === "GET") {
        const record = keys.requireLive(keyName);
        const value = record.versions.map((version) => ({
          kid: `${ctx.baseUrl}/keys/${keyName}/${version.version}`,
          attributes: keyBundle(ctx.baseUrl, keyName, version).attributes,
        }));
        return { status: 200, body: { value, nextLink: null } };
      }
      if (method === "GET")
        return { status: 200, body: keyBundle(ctx.baseUrl, keyName, keys.requireVersion(keyName, third)) };
    }
    return undefined;
  }

  function deletedKeysRoute(ctx: RequestContext): Reply | undefined {
    const { method, segments } = ctx;
    if (segments.length === 1 && method === "GET") {
      const value = keys.deletedRecords().map((record) => {
        const bundle = deletedKeyBundle(ctx.baseUrl, record);
        return {
          kid: `${ctx.baseUrl}/keys/${record.name}`,
          attributes: bundle.attributes,
          recoveryId: bundle.recoveryId,
          deletedDate: bundle.deletedDate,
          scheduledPurgeDate: bundle.scheduledPurgeDate,
        };
      });
      return { status: 200, body: { value, nextLink: null } };
    }
    if (segments.length < 2) return undefined;
    const keyName = keyNameFrom(segments[1]!);
    if (segments.length === 2 && method === "GET") {
      const record = keys.deletedRecord(keyName);
      if (!record) throw new HsmHttpError(404, "KeyNotFound", `Deleted key not found: ${keyName}`);
      return { status: 200, body: deletedKeyBundle(ctx.baseUrl, record) };
    }
    if (segments.length === 2 && method === "DELETE") {
      keys.purge(keyName);
      return { status: 204 };
    }
    if (segments.length === 3 && is(segments[2], "recover") && method === "POST") {
      const record = keys.recover(keyName);
      return { status: 200, body: keyBundle(ctx.baseUrl, keyName, record.versions.at(-1)!) };
    }
    return undefined;
  }

  function backup(ctx: RequestContext): Reply {
    authorize(ctx, "backup/start/action");
    const body = parseJsonObject(ctx.rawBody);
    const access = requireStorageAccess(body, "", ctx.apiVersion!);
    return startReply(ctx, "backup", { kind: "backup", access });
  }

  function preBackup(ctx: RequestContext): Reply {
    const version = requireApiVersionForPreOperation(ctx);
    authorize(ctx, "backup/start/action");
    const body = parseJsonObject(ctx.rawBody);
    const access = readStorageAccess(body, "", version, false);
    return startReply(ctx, "backup", { kind: "prebackup", access });
  }

  function restore(ctx: RequestContext): Reply {
    authorize(ctx, "restore/start/action");
    const body = parseJsonObject(ctx.rawBody);
    if (!body) throw badRequest("The request body is required: { sasTokenParameters, folderToRestore }.");
    const access = requireStorageAccess(body.sasTokenParameters, "sasTokenParameters", ctx.apiVersion!);
    const folder = requiredString(body, "folderToRestore", "");
    return startReply(ctx, "restore", { kind: "restore", access, folder });
  }

  function preRestore(ctx: RequestContext): Reply {
    const version = requireApiVersionForPreOperation(ctx);
    authorize(ctx, "restore/start/action");
    const body = parseJsonObject(ctx.rawBody) ?? {};
    const access = readStorageAccess(body.sasTokenParameters, "sasTokenParameters", version, false);
    const folder = optionalString(body, "folderToRestore", "");
    return startReply(ctx, "restore", { kind: "prerestore", access, folder });
  }

  function selectiveKeyRestore(ctx: RequestContext, keyName: string): Reply {
    authorize(ctx, "restore/start/action");
    const body = parseJsonObject(ctx.rawBody);
    if (!body) throw badRequest("The request body is required: { sasTokenParameters, folder }.");
    const access = requireStorageAccess(body.sasTokenParameters, "sasTokenParameters", ctx.apiVersion!);
    // Selective restore names the field `folder`, not `folderToRestore` (spec).
    const folder = requiredString(body, "folder", "");
    return startReply(ctx, "restore", { kind: "selectiveKeyRestore", access, folder, keyName });
  }

  /** `/{scope}/providers/Microsoft.Authorization/roleAssignments[/{name}]` and `.../roleDefinitions[/{name}]`. */
  function rbacRoute(ctx: RequestContext, providersIndex: number): Reply | undefined {
    const { segments, method } = ctx;
    const scope = parseScope(segments.slice(0, providersIndex));
    const collection = segments[providersIndex + 2];
    const itemName = segments[providersIndex + 3];
    if (segments.length > providersIndex + 4) return undefined;
    if (is(collection, "roleDefinitions")) {
      if (method !== "GET") return undefined;
      authorize(ctx, "roleDefinitions/read/action", scope);
      return itemName === undefined
        ? { status: 200, body: { value: roleDefinitions(scope) } }
        : { status: 200, body: findRoleDefinition(scope, itemName) };
    }
    if (!is(collection, "roleAssignments")) return undefined;
    if (itemName === undefined) {
      if (method !== "GET") return undefined;
      authorize(ctx, "roleAssignments/read/action", scope);
      return { status: 200, body: { value: roles.list(scope) } };
    }
    switch (method) {
      case "GET":
        authorize(ctx, "roleAssignments/read/action", scope);
        return { status: 200, body: roles.get(itemName) };
      case "DELETE":
        authorize(ctx, "roleAssignments/delete/action", scope);
        return { status: 200, body: roles.delete(itemName) };
      case "PUT": {
        authorize(ctx, "roleAssignments/write/action", scope);
        const body = parseJsonObject(ctx.rawBody);
        const properties = body?.properties;
        if (typeof properties !== "object" || properties === null || Array.isArray(properties)) {
          throw badRequest(
            "The request body must be { properties: { roleDefinitionId, principalId } }.",
            "BadParameter",
          );
        }
        const props = properties as Record<string, unknown>;
        const roleDefinitionId = requiredString(props, "roleDefinitionId", "properties.");
        const principalId = requiredString(props, "principalId", "properties.");
        return { status: 201, body: roles.put(scope, itemName, roleDefinitionId, principalId) };
      }
      default:
        return undefined;
    }
  }

  function route(ctx: RequestContext): Reply | undefined {
    const { segments, method } = ctx;
    const [first, second, third] = segments;
    const providersIndex = segments.findIndex(
      (segment, index) => is(segment, "providers") && is(segments[index + 1], "Microsoft.Authorization"),
    );
    if (providersIndex >= 0) return rbacRoute(ctx, providersIndex);
    if (is(first, "backup")) {
      if (segments.length === 1 && method === "POST") return backup(ctx);
      if (segments.length === 3 && is(third, "pending") && method === "GET") return statusReply(ctx, "backup", second!);
      return undefined;
    }
    if (is(first, "restore")) {
      if (segments.length === 1 && method === "PUT") return restore(ctx);
      if (segments.length === 3 && is(third, "pending") && method === "GET")
        return statusReply(ctx, "restore", second!);
      return undefined;
    }
    if (is(first, "prebackup") && segments.length === 1 && method === "POST") return preBackup(ctx);
    if (is(first, "prerestore") && segments.length === 1 && method === "PUT") return preRestore(ctx);
    if (is(first, "keys")) return keysRoute(ctx);
    if (is(first, "deletedkeys")) return deletedKeysRoute(ctx);
    return undefined;
  }

  const isStatusPoll = (method: string, segments: readonly string[]): boolean =>
    method === "GET" &&
    segments.length === 3 &&
    (is(segments[0], "backup") || is(segments[0], "restore")) &&
    is(segments[2], "pending");

  /** Everything after the body is read: auth, throttling, api-version, restore mode, then the route. */
  function answer(
    method: string,
    target: RequestTarget,
    rawBody: string,
    authorization: string | undefined,
    baseUrl: string,
  ): Reply {
    const auth = authenticate(authorization, Math.floor(Date.now() / 1000));
    const challenge = { "WWW-Authenticate": challengeHeader(tenantId) };
    if (auth.kind === "challenge") return { status: 401, headers: challenge };
    if (auth.kind === "rejected")
      return { status: 401, headers: challenge, body: new HsmHttpError(401, "Unauthorized", auth.message).toBody() };

    // Throttling counts authenticated requests only: the challenge probe carries no identity to throttle,
    // and answering it with 429 would break the client's challenge handshake.
    if (throttle && throttle.remaining > 0) {
      throttle.remaining--;
      const { status, retryAfterSeconds: seconds } = throttle;
      const error =
        status === 429
          ? new HsmHttpError(
              429,
              "Throttled",
              `Request was not processed because too many requests were received (emulated throttling). Retry after ${seconds} seconds.`,
            )
          : new HsmHttpError(
              503,
              "ServiceUnavailable",
              `The service is temporarily unavailable (emulated). Retry after ${seconds} seconds.`,
            );
      return { status, headers: { "Retry-After": String(seconds) }, body: error.toBody() };
    }

    let segments: string[];
    try {
      segments = target.pathname
        .split("/")
        .filter(Boolean)
        .map((segment) => decodeURIComponent(segment));
    } catch {
      throw badRequest(`The request path '${target.pathname}' is not valid percent-encoding.`);
    }
    const apiVersion = target.query.get("api-version") ?? undefined;
    // Status polls also answered without api-version on the real service (Azure/azure-cli#18049).
    if (apiVersion === undefined && !isStatusPoll(method, segments)) {
      throw badRequest(`The api-version query parameter is required. Supported versions: ${SUPPORTED_API_VERSIONS}.`);
    }
    if (apiVersion !== undefined && apiVersionRank(apiVersion) === undefined) {
      throw badRequest(
        `The specified api-version '${apiVersion}' is not supported. Supported versions: ${SUPPORTED_API_VERSIONS}.`,
      );
    }

    const restoring = jobs.restoreInProgress();
    if (restoring && !(isStatusPoll(method, segments) && is(segments[0], "restore"))) {
      // The real status code is not established; 409 says "not now, because of the HSM's state" without
      // triggering the SDK's automatic 503 retries, which would only hide the restore mode.
      throw new HsmHttpError(
        409,
        "Conflict",
        `The managed HSM is in restore mode: full restore job ${restoring.id} is in progress, and every data-plane operation except GET /restore/{jobId}/pending is disabled until it ends.`,
        {},
        "RestoreInProgress",
      );
    }

    const ctx: RequestContext = { method, segments, apiVersion, rawBody, baseUrl, caller: auth.caller };
    const reply = route(ctx);
    if (reply) return reply;
    throw new HsmHttpError(
      404,
      "NotFound",
      `No operation ${method} ${target.pathname} exists on this managed HSM emulator.`,
    );
  }

  const standardHeaders = (requestId: string): Record<string, string> => ({
    "Content-Type": "application/json; charset=utf-8",
    "Cache-Control": "no-cache",
    "x-ms-request-id": requestId,
    "x-ms-keyvault-region": "emulator",
  });

  function send(res: ServerResponse, requestId: string, startedAt: number, reply: Reply): void {
    const headers: Record<string, string> = {
      ...standardHeaders(requestId),
      "x-ms-server-latency": String(Date.now() - startedAt),
      ...reply.headers,
    };
    if (reply.body === undefined) {
      if (reply.status !== 204) headers["Content-Length"] = "0";
      res.writeHead(reply.status, headers);
      res.end();
      return;
    }
    const text = JSON.stringify(reply.body);
    headers["Content-Length"] = String(Buffer.byteLength(text));
    res.writeHead(reply.status, headers);
    res.end(text);
  }

  function readBody(req: IncomingMessage): Promise<string> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size <= MAX_BODY_BYTES) chunks.push(chunk);
      });
      req.on("end", () =>
        size > MAX_BODY_BYTES
          ? reject(
              new HsmHttpError(
                413,
                "RequestTooLarge",
                `The request body has ${size} bytes; the emulator accepts at most ${MAX_BODY_BYTES}.`,
              ),
            )
          : resolve(Buffer.concat(chunks).toString("utf8")),
      );
      req.on("error", reject);
    });
  }

  /** The scheme and host the request came in on: official clients follow the URLs they are given. */
  function baseUrlFor(req: IncomingMessage, fallback: string): string {
    const host = req.headers.host;
    const scheme = (req.socket as TLSSocket).encrypted ? "https" : "http";
    return host && /^[A-Za-z0-9.\-:[\]]+$/.test(host) ? `${scheme}://${host}` : fallback;
  }

  let url = "";

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const startedAt = Date.now();
    const requestId = randomUUID();
    const method = (req.method ?? "GET").toUpperCase();
    const target = parseTarget(req.url ?? "/");
    const headers: Record<string, string> = {};
    for (const [key, value] of Object.entries(req.headers)) {
      if (value === undefined) continue;
      headers[key] = key === "authorization" ? "<redacted>" : redact(Array.isArray(value) ? value.join(", ") : value);
    }
    const record: MutableRecord = {
      requestId,
      method,
      path: target.pathname,
      query: Object.fromEntries([...target.query].map(([key, value]) => [key, redact(value)])),
      headers,
      body: null,
      status: 0,
    };
    requests.push(record);

    let reply: Reply;
    try {
      const rawBody = await readBody(req);
      if (rawBody.trim()) {
        try {
          record.body = redactRecordedBody(JSON.parse(rawBody));
        } catch {
          record.body = redact(rawBody);
        }
      }
      reply = answer(method, target, rawBody, req.headers.authorization, baseUrlFor(req, url));
    } catch (error) {
      if (error instanceof HsmHttpError) {
        reply = { status: error.status, headers: { ...error.headers }, body: error.toBody() };
      } else {
        const message = redact(`The HSM emulator failed unexpectedly: ${toError(error).message}`);
        log(`ERROR ${method} ${target.pathname}: ${message}`);
        reply = { status: 500, body: new HsmHttpError(500, "InternalServerError", message).toBody() };
      }
    }
    record.status = reply.status;
    const search = target.query.toString();
    log(`${method} ${target.pathname}${search ? `?${redact(search)}` : ""} -> ${reply.status}`);
    if (!res.headersSent && !res.destroyed) send(res, requestId, startedAt, reply);
  }

  const listener: RequestListener = (req, res) => {
    void handle(req, res);
  };
  const server: Server = options.tls
    ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, listener)
    : createServer(listener);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  url = `${options.tls ? "https" : "http"}://127.0.0.1:${port}`;
  name ||= hsmNameOf(new URL(url));

  let stopped: Promise<void> | undefined;
  return {
    url,
    port,
    name,
    requests,
    jobs: () => jobs.log(),
    keys: {
      create: (keyName, kty = "RSA") => keyBundle(url, keyName, keys.create(keyName, kty)),
      get: (keyName) => {
        const current = keys.live(keyName)?.versions.at(-1);
        return current ? keyBundle(url, keyName, current) : undefined;
      },
      list: () => keys.liveRecords().map((record) => keyItem(url, record)),
      delete: (keyName) => deletedKeyBundle(url, keys.softDelete(keyName)),
      purge: (keyName) => keys.purge(keyName),
      has: (keyName) => keys.live(keyName) !== undefined,
      isDeleted: (keyName) => keys.deletedRecord(keyName) !== undefined,
    },
    roles: {
      assign: (principalId, roleDefinitionId, assignOptions = {}) =>
        roles.put(assignOptions.scope ?? "/", assignOptions.name ?? randomUUID(), roleDefinitionId, principalId),
      list: () => roles.list("/"),
      remove: (assignmentName) => void roles.delete(assignmentName),
    },
    faults: {
      failNextJob(kind, error) {
        jobs.failNext(
          kind,
          error ?? {
            code: "InternalError",
            message: `Injected failure (faults.failNextJob): the emulator failed this ${kind} job on purpose.`,
          },
        );
      },
      throttleNext(count, status, seconds) {
        if (!Number.isInteger(count) || count < 0)
          throw new Error(`throttleNext count must be a non-negative integer, got ${count}.`);
        if (status !== 429 && status !== 503)
          throw new Error(`throttleNext status must be 429 or 503, got ${String(status)}.`);
        if (!Number.isInteger(seconds) || seconds < 0)
          throw new Error(`throttleNext retryAfterSeconds must be a non-negative integer, got ${seconds}.`);
        throttle = { remaining: count, status, retryAfterSeconds: seconds };
      },
      setJobDurationMs: (ms, kind) => jobs.setDurationMs(ms, kind),
      foreignAsyncOperationNext(origin) {
        foreignAsyncOperationOrigin = new URL(origin).origin;
      },
    },
    stop() {
      stopped ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeAllConnections();
        await jobs.stop();
        await closed;
      })();
      return stopped;
    },
  };
}
