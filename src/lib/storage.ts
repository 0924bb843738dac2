import type { TokenCredential } from "@azure/core-auth";
import type { PipelineOptions, PipelineRequest, SendRequest } from "@azure/core-rest-pipeline";
import { RestError, TableClient, type TableServiceClientOptions } from "@azure/data-tables";
import {
  BlobServiceClient,
  ContainerSASPermissions,
  generateBlobSASQueryParameters,
  SASProtocol,
  StorageSharedKeyCredential,
  type StoragePipelineOptions,
  type UserDelegationKey,
} from "@azure/storage-blob";
import { ConfigError, isLoopback, type BackupCopyTarget, type StorageConnection } from "./config.js";
import { rememberSecret, toSafeError } from "./redact.js";

/** The permissions the HSM needs, and no more: backup writes a folder, restore reads one. */
export type SasPurpose = "backup" | "restore";
const PERMISSIONS: Record<SasPurpose, string> = { backup: "crdw", restore: "rl" };

/**
 * SAS version pinned to a GA storage service version that both Azure and Azurite 3.35 accept:
 * Azurite refuses storage-blob 12.32's default (2026-04-06) for user-delegation SAS.
 */
export const SAS_VERSION = "2025-11-05";

/** Clock skew allowance: the SAS starts a few minutes in the past. */
const SAS_START_SKEW_MS = 5 * 60_000;

/** Options for the storage clients; tlsOptions lets a local HTTPS Azurite be trusted in-process. */
export type StorageClientOptions = Pick<PipelineOptions, "tlsOptions" | "agent"> & {
  /** Per attempt of every storage call; default 30 s. */
  readonly requestTimeoutMs?: number;
};

/**
 * Storage calls fail fast and say so: a few quick retries, each attempt under the timeout. The SDKs'
 * defaults wait ~17 s before an unreachable account is reported, and have no per-attempt deadline.
 */
const STORAGE_RETRIES = 2;

function clientOptions(options: StorageClientOptions) {
  const { requestTimeoutMs = 30_000, ...transport } = options;
  return { transport, requestTimeoutMs };
}

/**
 * Gives every attempt of a table request a deadline (data-tables has no such option) and reports a
 * missed one as ETIMEDOUT, which the retry policy retries: a catalog call is idempotent or guarded
 * by an etag, so a retry is safe.
 */
function timeoutPolicy(ms: number) {
  return {
    policy: {
      name: "catalogRequestTimeout",
      async sendRequest(request: PipelineRequest, next: SendRequest) {
        const timer = new AbortController();
        const timeout = setTimeout(() => timer.abort(), ms);
        const callers = request.abortSignal;
        request.abortSignal = callers ? AbortSignal.any([callers as AbortSignal, timer.signal]) : timer.signal;
        try {
          return await next(request);
        } catch (error) {
          if (timer.signal.aborted && !callers?.aborted) {
            throw new RestError(`no answer within ${ms / 1000} s from ${new URL(request.url).host}`, {
              code: "ETIMEDOUT",
              request,
            });
          }
          throw error;
        } finally {
          clearTimeout(timeout);
          request.abortSignal = callers;
        }
      },
    },
    position: "perRetry" as const,
  };
}

function blobOptions(storageOptions: StorageClientOptions): StoragePipelineOptions {
  const { transport, requestTimeoutMs } = clientOptions(storageOptions);
  return {
    ...transport,
    retryOptions: {
      maxTries: STORAGE_RETRIES + 1,
      tryTimeoutInMs: requestTimeoutMs,
      retryDelayInMs: 500,
      maxRetryDelayInMs: 2000,
    },
  } as StoragePipelineOptions;
}

/**
 * The blob service holding the immutable copies: its own account reached with the app's identity,
 * or (no URI: a connection string, locally) the backup account itself.
 */
export function copyBlobService(
  backup: BackupStorage,
  target: BackupCopyTarget,
  credential: TokenCredential,
  storageOptions: StorageClientOptions = {},
): BlobServiceClient {
  if (target.blobServiceUri === undefined) return backup.blobService;
  return new BlobServiceClient(target.blobServiceUri, credential, blobOptions(storageOptions));
}

/** Backup storage did not answer a blob call in time (storage-blob's own timeout is only a server-side hint). */
export class StorageUnavailableError extends Error {
  constructor(
    readonly host: string,
    what: string,
    detail: string,
  ) {
    super(`backup storage at ${host} could not be reached while ${what} (${detail})`);
    this.name = "StorageUnavailableError";
  }
}

export interface ContainerSas {
  /** The SAS query string, without "?". A secret: never log, store or return it. */
  readonly token: string;
  readonly permissions: string;
  readonly expiresOn: Date;
}

export interface BackupStorage {
  readonly blobService: BlobServiceClient;
  table(name: string): TableClient;
  /** The container's URL, without any SAS. */
  containerUrl(container: string): string;
  /**
   * A container SAS for the HSM, signed with the account key or a user-delegation key. Its validity
   * is judged by the storage service's clock, so it is always computed from the machine's.
   */
  containerSas(container: string, purpose: SasPurpose, ttlMinutes: number): Promise<ContainerSas>;
  /**
   * Runs blob calls under one deadline (every try's timeout, retries included): the abort signal it
   * hands over ends a call the service never answers.
   * @throws StorageUnavailableError when the deadline passed.
   */
  blobCall<T>(what: string, call: (abortSignal: AbortSignal) => Promise<T>): Promise<T>;
}

/**
 * Builds the blob and table clients from the BackupStorage connection: shared key when the
 * connection string carries one (Azurite, shared-key accounts), otherwise the app's identity, with
 * SAS signed by a user-delegation key (in Azure shared-key access is off).
 */
export function createBackupStorage(
  connection: StorageConnection,
  credential: TokenCredential,
  storageOptions: StorageClientOptions = {},
): BackupStorage {
  const { transport, requestTimeoutMs } = clientOptions(storageOptions);
  const options = blobOptions(storageOptions);
  const blobDeadlineMs = requestTimeoutMs * (STORAGE_RETRIES + 1);
  const tableOptions = (endpoint: string): TableServiceClientOptions => ({
    ...transport,
    allowInsecureConnection: new URL(endpoint).protocol === "http:",
    retryOptions: { maxRetries: STORAGE_RETRIES, retryDelayInMs: 500, maxRetryDelayInMs: 2000 },
    additionalPolicies: [timeoutPolicy(requestTimeoutMs)],
  });
  if (connection.kind === "connectionString") {
    // The SDKs parse the connection string (UseDevelopmentStorage=true and explicit endpoints
    // included); the app only insists on an account key, because it signs the HSM's SAS with it.
    const connectionString = connection.connectionString;
    const blobService = fromConnectionString(() => BlobServiceClient.fromConnectionString(connectionString, options));
    const sharedKey = blobService.credential;
    if (!(sharedKey instanceof StorageSharedKeyCredential)) {
      throw new ConfigError(
        "BackupStorage",
        "the connection string has no AccountKey, so the app cannot sign a SAS with it; use an identity-based connection (BackupStorage__blobServiceUri + BackupStorage__tableServiceUri) instead",
      );
    }
    // The table endpoint is known once the SDK has parsed the string: plain http (Azurite) needs the insecure flag.
    const tableUrl = fromConnectionString(() => TableClient.fromConnectionString(connectionString, "catalog").url);
    checkEndpoint("BlobEndpoint", blobService.url);
    checkEndpoint("TableEndpoint", tableUrl);
    const table = (name: string) => TableClient.fromConnectionString(connectionString, name, tableOptions(tableUrl));
    return storage(
      blobService,
      table,
      async (container, permissions, startsOn, expiresOn) =>
        generateBlobSASQueryParameters(
          sasValues(blobService.url, container, permissions, startsOn, expiresOn),
          sharedKey,
        ).toString(),
      blobDeadlineMs,
    );
  }
  const blobService = new BlobServiceClient(connection.blobServiceUri, credential, options);
  const delegationKey = delegationKeys((startsOn, expiresOn) =>
    signed.blobCall("getting a user-delegation key", (abortSignal) =>
      blobService.getUserDelegationKey(startsOn, expiresOn, { abortSignal }),
    ),
  );
  const signed = storage(
    blobService,
    (name) => new TableClient(connection.tableServiceUri, name, credential, tableOptions(connection.tableServiceUri)),
    async (container, permissions, startsOn, expiresOn) => {
      const key = await delegationKey(startsOn, expiresOn);
      return generateBlobSASQueryParameters(
        sasValues(blobService.url, container, permissions, startsOn, expiresOn),
        key,
        blobService.accountName,
      ).toString();
    },
    blobDeadlineMs,
  );
  return signed;
}

/**
 * One user-delegation key serves every SAS of a run instead of one request per HSM (issue 9): a key
 * is asked for with twice the lifetime of the SAS that needs it, and reused (concurrent callers share
 * the request in flight) for every later SAS that it covers from start to expiry; only then is a new
 * one fetched. The key never leaves the process — the HSM gets the SAS, whose own expiry is unchanged
 * — so the longer key lifetime widens nothing an HSM or a log could hold. A failed request is not kept.
 */
function delegationKeys(
  fetch: (startsOn: Date, expiresOn: Date) => Promise<UserDelegationKey>,
): (startsOn: Date, expiresOn: Date) => Promise<UserDelegationKey> {
  let cached: { startsOn: Date; expiresOn: Date; key: Promise<UserDelegationKey> } | undefined;
  return (startsOn, expiresOn) => {
    if (!cached || startsOn < cached.startsOn || expiresOn > cached.expiresOn) {
      const keyExpiresOn = new Date(expiresOn.getTime() + (expiresOn.getTime() - startsOn.getTime()));
      const entry = { startsOn, expiresOn: keyExpiresOn, key: fetch(startsOn, keyExpiresOn) };
      entry.key.catch(() => {
        if (cached === entry) cached = undefined;
      });
      cached = entry;
    }
    return cached.key;
  };
}

type Sign = (container: string, permissions: string, startsOn: Date, expiresOn: Date) => Promise<string>;

function storage(
  blobService: BlobServiceClient,
  table: (name: string) => TableClient,
  sign: Sign,
  blobDeadlineMs: number,
): BackupStorage {
  return {
    blobService,
    table,
    async blobCall(what, call) {
      const deadline = AbortSignal.timeout(blobDeadlineMs);
      try {
        return await call(deadline);
      } catch (error) {
        if (deadline.aborted)
          throw new StorageUnavailableError(
            new URL(blobService.url).host,
            what,
            `no answer within ${blobDeadlineMs / 1000} s`,
          );
        throw error;
      }
    },
    containerUrl: (container) => blobService.getContainerClient(container).url,
    async containerSas(container, purpose, ttlMinutes) {
      const now = new Date();
      const permissions = PERMISSIONS[purpose];
      const startsOn = new Date(now.getTime() - SAS_START_SKEW_MS);
      const expiresOn = new Date(now.getTime() + ttlMinutes * 60_000);
      const token = await sign(container, permissions, startsOn, expiresOn);
      // The redactor then knows this signature in whatever encoding an error text echoes it.
      const signature = new URLSearchParams(token).get("sig");
      if (signature) rememberSecret(signature);
      return { token, permissions, expiresOn };
    },
  };
}

function sasValues(
  blobServiceUrl: string,
  containerName: string,
  permissions: string,
  startsOn: Date,
  expiresOn: Date,
) {
  return {
    containerName,
    permissions: ContainerSASPermissions.parse(permissions),
    startsOn,
    expiresOn,
    // https-only wherever it can be: only a loopback emulator speaks plain http.
    protocol: isLoopback(new URL(blobServiceUrl).hostname) ? SASProtocol.HttpsAndHttp : SASProtocol.Https,
    version: SAS_VERSION,
  };
}

/** An SDK's refusal of the connection string, as the setting's error (the SDK's text never shows the key). */
function fromConnectionString<T>(create: () => T): T {
  try {
    return create();
  } catch (error) {
    throw new ConfigError("BackupStorage", `the connection string was refused: ${toSafeError(error).message}`);
  }
}

/**
 * An endpoint of the connection string, held to the rule of every other URL setting: https, or
 * plain http only on a loopback host (Azurite). Its value is not echoed: the answer of the
 * anonymous health endpoint carries this message.
 */
function checkEndpoint(name: string, value: string): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError("BackupStorage", `the connection string's ${name} is not a URL`);
  }
  if (url.protocol !== "https:" && !(url.protocol === "http:" && isLoopback(url.hostname))) {
    throw new ConfigError(
      "BackupStorage",
      `the connection string's ${name} must use https (plain http is accepted only for loopback hosts)`,
    );
  }
}
