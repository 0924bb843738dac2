/**
 * A small Managed HSM full backup / restore client over the documented data-plane REST API, because
 * @azure/keyvault-admin is not served by the registry this project can reach. Its surface follows
 * keyvault-admin's KeyVaultBackupClient (beginBackup, beginRestore, beginSelectiveKeyRestore,
 * beginPreBackup, beginPreRestore, each with a SAS or managed-identity overload). The operations do
 * not depend on this class but on HsmBackupOperations (types.ts), which it implements; where the
 * official package is available, its client can take this one's place through the small adapter
 * shown in test/lib/hsm/keyvault-admin-adapter.test.ts (errors mapped, jobs resumed from their id),
 * changing only deps.ts. Wire facts and their sources: shared/docs/managed-hsm-backup-api.md.
 *
 * Logging is the Azure SDK's: `AZURE_LOG_LEVEL=info` (or verbose) shows every call under the
 * "mhsm-backup" logger, with the Key Vault correlation headers allowed and everything else
 * (Authorization, any query parameter but api-version) redacted by core-rest-pipeline. The SAS
 * travels in the request body, which the logging policy never logs.
 */
import { setTimeout as sleepFor } from "node:timers/promises";
import type { TokenCredential } from "@azure/core-auth";
import {
  createDefaultHttpClient,
  createHttpHeaders,
  createPipelineFromOptions,
  createPipelineRequest,
  type HttpClient,
  type Pipeline,
  type PipelineResponse,
  type TlsSettings,
} from "@azure/core-rest-pipeline";
import { keyVaultAuthenticationPolicy } from "@azure/keyvault-common";
import { createClientLogger } from "@azure/logger";
import { isLoopback } from "../config.js";
import { requestIdsOf, type RequestIds } from "../correlation.js";
import { redactSecrets } from "../redact.js";
import {
  HsmInvalidResponseError,
  HsmJobFailedError,
  HsmRequestError,
  HsmStatusUnavailableError,
  type Delivery,
} from "./errors.js";
import { HsmOperationPoller, parseOperation } from "./poller.js";
import {
  JOB_ID,
  type BeginOptions,
  type Delay,
  type HsmBackupOperations,
  type HsmOperationState,
  type OperationKind,
} from "./types.js";

export const DEFAULT_HSM_API_VERSION = "7.6";

export interface ManagedHsmBackupClientOptions {
  /** api-version sent on every call; default 7.6. */
  readonly serviceVersion?: string;
  /** Transport; tests inject a recorded-session replayer here. Default: core-rest-pipeline's. */
  readonly httpClient?: HttpClient;
  /** TLS settings, e.g. a CA for a local HTTPS server. */
  readonly tlsOptions?: TlsSettings;
  /** How to wait between polls and retries; tests make time pass without waiting. */
  readonly delay?: Delay;
  /** Wait between status polls when the service gave no Retry-After. Default 2000 ms. */
  readonly defaultPollIntervalMs?: number;
  /** Attempts for a start call the service throttled with 429/503. Default 4. */
  readonly maxStartAttempts?: number;
  /** Attempts for one status read that met a transient failure. Default 4. */
  readonly maxStatusAttempts?: number;
  /** How long one call may take, token acquisition and the whole answer included. Default 30 000 ms. */
  readonly requestTimeoutMs?: number;
  /** Cap on any wait the HSM asks for with Retry-After (an hour-long or 74-year wait is refused). Default 60 000 ms. */
  readonly maxPollIntervalMs?: number;
  /** The clock deadlines are measured with. */
  readonly now?: () => Date;
}

export type { BeginOptions } from "./types.js";

/** Node error codes raised before a connection exists: a request that met one never reached the HSM. */
const NOT_CONNECTED = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EAI_FAIL",
  "ENETUNREACH",
  "EHOSTUNREACH",
  "EADDRNOTAVAIL",
  "CERT_HAS_EXPIRED",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "ERR_INVALID_URL",
]);

/** Storage parameters as the service names them; token is absent in managed-identity mode. */
interface SasTokenParameter {
  storageResourceUri: string;
  token?: string;
  useManagedIdentity?: boolean;
}

/** The client's logger: AZURE_LOG_LEVEL (or setLogLevel from @azure/logger) turns it on. */
export const logger = createClientLogger("mhsm-backup");

/**
 * Headers worth seeing in a wire log beyond those core-rest-pipeline allows already (request ids,
 * Retry-After, WWW-Authenticate): the routing headers the recorded Managed HSM answers carry, and
 * where a job can be followed. Today the pipeline logs answer headers unfiltered (it filters only
 * the request's), so this list decides nothing yet; it keeps them if that changes.
 */
const LOGGED_HEADERS = ["x-ms-keyvault-region", "x-ms-keyvault-network-info", "Azure-AsyncOperation"];

/** An abortable wait that rejects with the caller's abort reason, as every other wait of this client does. */
const sleep: Delay = (ms, signal) =>
  sleepFor(ms, undefined, signal ? { signal } : {}).catch((error: unknown) => {
    throw signal?.aborted ? signal.reason : error;
  });

export class ManagedHsmBackupClient implements HsmBackupOperations {
  /** The HSM's origin, e.g. https://contoso.managedhsm.azure.net */
  readonly vaultUrl: string;
  readonly serviceVersion: string;
  private readonly pipeline: Pipeline;
  private readonly httpClient: HttpClient;
  private readonly delay: Delay;
  private readonly defaultPollIntervalMs: number;
  private readonly maxStartAttempts: number;
  private readonly maxStatusAttempts: number;
  private readonly requestTimeoutMs: number;
  private readonly maxPollIntervalMs: number;
  private readonly now: () => Date;
  /** Requests that went to the transport carrying a token: only those can have reached the HSM's API. */
  private readonly authorizedSends = new WeakSet<object>();
  /** Plain http: only ever true for a loopback host (checked in the constructor). */
  private readonly insecure: boolean;

  /**
   * @throws Error when the URL is not https (plain http is accepted only for a loopback host, where
   * the local emulator runs) or has a path.
   */
  constructor(vaultUrl: string, credential: TokenCredential, options: ManagedHsmBackupClientOptions = {}) {
    const url = new URL(vaultUrl);
    const loopback = isLoopback(url.hostname);
    if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
      throw new Error(`Managed HSM URL "${vaultUrl}" must use https; plain http is accepted only for loopback hosts`);
    }
    if (url.pathname !== "/" || url.search) {
      throw new Error(`Managed HSM URL "${vaultUrl}" must be the HSM's base URL, without a path or query`);
    }
    this.vaultUrl = url.origin;
    this.insecure = url.protocol === "http:";
    this.serviceVersion = options.serviceVersion ?? DEFAULT_HSM_API_VERSION;
    const transport = options.httpClient ?? createDefaultHttpClient();
    this.httpClient = {
      sendRequest: (request) => {
        if (request.headers.has("authorization")) this.authorizedSends.add(request);
        return transport.sendRequest(request);
      },
    };
    this.delay = options.delay ?? sleep;
    this.defaultPollIntervalMs = options.defaultPollIntervalMs ?? 2000;
    this.maxStartAttempts = options.maxStartAttempts ?? 4;
    this.maxStatusAttempts = options.maxStatusAttempts ?? 4;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    this.maxPollIntervalMs = options.maxPollIntervalMs ?? 60_000;
    this.now = options.now ?? (() => new Date());
    // Retries are ours, not the pipeline's: a start call must never be replayed blindly (a replayed
    // POST /backup can start a second job or earn a false "already in progress" conflict).
    this.pipeline = createPipelineFromOptions({
      retryOptions: { maxRetries: 0 },
      userAgentOptions: { userAgentPrefix: "mhsm-backup-functions" },
      loggingOptions: {
        logger: logger.info,
        additionalAllowedHeaderNames: LOGGED_HEADERS,
      },
      ...(options.tlsOptions ? { tlsOptions: options.tlsOptions } : {}),
    });
    // The challenge resource check stops a token being sent to a host that claims another
    // audience; only a loopback emulator (which cannot have a managedhsm.azure.net name) skips it.
    this.pipeline.addPolicy(
      keyVaultAuthenticationPolicy(credential, { disableChallengeResourceVerification: loopback }),
    );
  }

  /** Starts a full backup into the container (optionally a sub-path of it). */
  beginBackup(blobStorageUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  /** Starts a full backup; the HSM reaches storage with its own user-assigned identity (7.5+). */
  beginBackup(blobStorageUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginBackup(
    blobStorageUri: string,
    sasOrOptions?: string | BeginOptions,
    maybeOptions?: BeginOptions,
  ): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    return this.start("backup", "POST", "/backup", storageParameters(blobStorageUri, sasToken), options);
  }

  /** Starts a full restore: the HSM is wiped back to the backup's state, role assignments included. */
  beginRestore(folderUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  beginRestore(folderUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginRestore(
    folderUri: string,
    sasOrOptions?: string | BeginOptions,
    maybeOptions?: BeginOptions,
  ): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    const { containerUri, folder } = splitFolderUri(folderUri);
    return this.start(
      "restore",
      "PUT",
      "/restore",
      { sasTokenParameters: storageParameters(containerUri, sasToken), folderToRestore: folder },
      options,
    );
  }

  /** Restores one key, with all its versions, from a backup folder. The key must be purged first. */
  beginSelectiveKeyRestore(
    keyName: string,
    folderUri: string,
    sasToken: string,
    options?: BeginOptions,
  ): Promise<HsmOperationPoller>;
  beginSelectiveKeyRestore(keyName: string, folderUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginSelectiveKeyRestore(
    keyName: string,
    folderUri: string,
    sasOrOptions?: string | BeginOptions,
    maybeOptions?: BeginOptions,
  ): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    if (!/^[0-9A-Za-z-]{1,127}$/.test(keyName)) {
      throw new Error(`Key name "${keyName}" is not a Managed HSM key name (1-127 letters, digits and hyphens)`);
    }
    const { containerUri, folder } = splitFolderUri(folderUri);
    // The selective restore body names the folder "folder", not "folderToRestore" (spec).
    return this.start(
      "selectiveKeyRestore",
      "PUT",
      `/keys/${keyName}/restore`,
      { sasTokenParameters: storageParameters(containerUri, sasToken), folder },
      options,
    );
  }

  /** Checks that a full backup could run (storage reachable, permissions right); api-version 7.6+. */
  beginPreBackup(blobStorageUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  beginPreBackup(blobStorageUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginPreBackup(
    blobStorageUri: string,
    sasOrOptions?: string | BeginOptions,
    maybeOptions?: BeginOptions,
  ): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    return this.start("preBackup", "POST", "/prebackup", storageParameters(blobStorageUri, sasToken), options);
  }

  /** Checks that a full restore from this folder could run; api-version 7.6+. */
  beginPreRestore(folderUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  beginPreRestore(folderUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginPreRestore(
    folderUri: string,
    sasOrOptions?: string | BeginOptions,
    maybeOptions?: BeginOptions,
  ): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    const { containerUri, folder } = splitFolderUri(folderUri);
    return this.start(
      "preRestore",
      "PUT",
      "/prerestore",
      { sasTokenParameters: storageParameters(containerUri, sasToken), folderToRestore: folder },
      options,
    );
  }

  /** A poller for a job someone else started (e.g. a recycled worker), from its job id alone. */
  resumeOperation(kind: OperationKind, jobId: string): HsmOperationPoller {
    assertJobId(jobId);
    return new HsmOperationPoller(kind, this.statusUrl(kind, jobId), jobId, undefined, this.pollDeps());
  }

  /**
   * Reads a job's status with one request and no waiting (an HTTP handler calls this while a person
   * waits). Failed/Canceled are returned, not thrown; see the poller for waiting.
   * @throws HsmStatusUnavailableError when no usable answer came; HsmInvalidResponseError for nonsense.
   */
  async getOperationStatus(kind: OperationKind, jobId: string, options: BeginOptions = {}): Promise<HsmOperationState> {
    assertJobId(jobId);
    const {
      retryAfterMs: _wait,
      requestIds: _ids,
      ...state
    } = await this.readStatus(kind, this.statusUrl(kind, jobId), options.abortSignal, 1);
    return state;
  }

  private async start(
    kind: OperationKind,
    method: "POST" | "PUT",
    path: string,
    body: object,
    options: BeginOptions,
  ): Promise<HsmOperationPoller> {
    const url = `${this.vaultUrl}${path}?api-version=${encodeURIComponent(this.serviceVersion)}`;
    const json = JSON.stringify(body);
    const maxAttempts = options.maxAttempts ?? this.maxStartAttempts;
    for (let attempt = 1; ; attempt++) {
      const sent = await this.trySend(method, url, json, options.abortSignal);
      if (!("response" in sent)) {
        if (sent.delivery === "notSent") {
          throw new HsmRequestError(
            `${kind} start`,
            this.vaultUrl,
            undefined,
            undefined,
            `the call was not sent (${sent.problem}); nothing was started`,
            "notSent",
          );
        }
        // The request may or may not have reached the HSM: replaying it could start a second job.
        throw new HsmRequestError(
          `${kind} start`,
          this.vaultUrl,
          undefined,
          undefined,
          `the call failed before an answer arrived (${sent.problem}); it was not retried, because the HSM may have started the job. Check the HSM's status before starting again`,
          "unanswered",
          sent.ids,
        );
      }
      const response = sent.response;
      if (response.status === 202 || response.status === 200) {
        const { state, statusUrl } = this.accepted(kind, response);
        return new HsmOperationPoller(
          kind,
          statusUrl,
          state.jobId,
          state,
          this.pollDeps(),
          this.retryAfterMs(response),
        );
      }
      // 429 and 503 are refusals before any work: the only answers after which a start call is re-sent.
      const wait = this.retryAfterMs(response);
      if ((response.status === 429 || response.status === 503) && attempt < maxAttempts) {
        await this.delay(Math.min(wait ?? 5000 * attempt, this.maxPollIntervalMs), options.abortSignal);
        continue;
      }
      throw HsmRequestError.fromResponse(`${kind} start`, this.vaultUrl, response);
    }
  }

  /**
   * Reads an accepted start: the job id comes from the body, or from a well-formed Azure-AsyncOperation
   * header on this HSM when the body is unusable (the HSM did accept the job either way).
   * @throws HsmInvalidResponseError when neither gives a job id: the HSM may be running a job nobody can follow.
   */
  private accepted(kind: OperationKind, response: PipelineResponse): { state: HsmOperationState; statusUrl: string } {
    const fromHeader = this.asyncOperationUrl(response);
    let state: HsmOperationState;
    try {
      state = parseOperation(kind, response.bodyAsText, this.vaultUrl);
    } catch (error) {
      if (!fromHeader) {
        throw new HsmInvalidResponseError(
          `${kind} start`,
          this.vaultUrl,
          `HTTP ${response.status} accepted the call, but ${error instanceof HsmInvalidResponseError ? error.problem : messageOf(error)}, and no usable Azure-AsyncOperation header names the job: a job may be running that cannot be followed`,
          requestIdsOf(response),
        );
      }
      return { state: { kind, jobId: fromHeader.jobId, status: "InProgress" }, statusUrl: fromHeader.url };
    }
    if (fromHeader && fromHeader.jobId !== state.jobId) {
      throw new HsmInvalidResponseError(
        `${kind} start`,
        this.vaultUrl,
        `HTTP ${response.status} accepted the call, but the body names job ${state.jobId} and Azure-AsyncOperation job ${fromHeader.jobId}: a job may be running that cannot be followed`,
        requestIdsOf(response),
      );
    }
    return { state, statusUrl: fromHeader?.url ?? this.statusUrl(kind, state.jobId) };
  }

  private pollDeps() {
    return {
      readStatus: (kind: OperationKind, url: string, signal?: AbortSignal) => this.readStatus(kind, url, signal),
      delay: this.delay,
      defaultPollIntervalMs: this.defaultPollIntervalMs,
      maxPollIntervalMs: this.maxPollIntervalMs,
      now: this.now,
    };
  }

  /**
   * One status read, with up to `attempts` tries. A 4xx (other than 401, 403, 408, 429) is the job's
   * terminal failure — the service has answered a bad SAS that way (recorded). 401/403 say nothing
   * about the job, only about our access to its status. 3xx, 408, 429, 5xx and no answer are retried;
   * after that the job's fate is unknown, which is not the same as failed: HsmStatusUnavailableError.
   */
  private async readStatus(
    kind: OperationKind,
    url: string,
    signal?: AbortSignal,
    attempts = this.maxStatusAttempts,
  ): Promise<StatusRead> {
    const jobId = jobIdFromStatusUrl(url);
    let lastProblem = "";
    let lastIds: RequestIds = {};
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const sent = await this.trySend("GET", url, undefined, signal);
      let wait: number | undefined;
      if ("response" in sent) {
        const response = sent.response;
        lastIds = requestIdsOf(response);
        if (response.status === 200) {
          const retryAfter = this.retryAfterMs(response);
          let state: HsmOperationState;
          try {
            state = parseOperation(kind, response.bodyAsText, this.vaultUrl, jobId);
          } catch (error) {
            throw error instanceof HsmInvalidResponseError ? error.withIds(lastIds) : error;
          }
          return { ...state, requestIds: lastIds, ...(retryAfter !== undefined ? { retryAfterMs: retryAfter } : {}) };
        }
        if (response.status === 401 || response.status === 403) {
          throw HsmRequestError.fromResponse(`${kind} status`, this.vaultUrl, response);
        }
        const transient =
          response.status < 400 || response.status === 408 || response.status === 429 || response.status >= 500;
        if (!transient) {
          throw new HsmJobFailedError(
            kind,
            this.vaultUrl,
            jobId,
            HsmRequestError.fromResponse(`${kind} status`, this.vaultUrl, response),
          );
        }
        lastProblem =
          response.status < 400 ? `HTTP ${response.status} (a redirect, not followed)` : `HTTP ${response.status}`;
        wait = this.retryAfterMs(response);
      } else {
        lastProblem = sent.problem;
        lastIds = sent.ids;
      }
      if (attempt < attempts) await this.delay(Math.min(wait ?? 1000 * 2 ** attempt, this.maxPollIntervalMs), signal);
    }
    throw new HsmStatusUnavailableError(kind, this.vaultUrl, jobId, lastProblem, attempts, lastIds);
  }

  /**
   * Sends one call under the request timeout (token, connection and the whole body). Resolves with the
   * answer, or with how far a call that got none went: a request that never carried a token to the
   * transport, or that failed before a connection existed, was not sent.
   * @throws the caller's abort reason when the caller aborted.
   */
  private async trySend(
    method: "GET" | "POST" | "PUT",
    url: string,
    body: string | undefined,
    callerSignal?: AbortSignal,
  ): Promise<
    { response: PipelineResponse } | { delivery: Exclude<Delivery, "answered">; problem: string; ids: RequestIds }
  > {
    const timeout = AbortSignal.timeout(this.requestTimeoutMs);
    const abortSignal = callerSignal ? AbortSignal.any([callerSignal, timeout]) : timeout;
    const headers = createHttpHeaders({ Accept: "application/json" });
    if (body !== undefined) headers.set("Content-Type", "application/json");
    const request = createPipelineRequest({
      url,
      method,
      headers,
      abortSignal,
      allowInsecureConnection: this.insecure,
      ...(body !== undefined ? { body } : {}),
    });
    try {
      return { response: await this.pipeline.sendRequest(this.httpClient, request) };
    } catch (error) {
      if (callerSignal?.aborted) throw callerSignal.reason ?? error;
      const problem = timeout.aborted ? `no answer within ${this.requestTimeoutMs / 1000} s` : sendProblem(error);
      const code = errorCode(error);
      const sent = this.authorizedSends.has(request) && !(code !== undefined && NOT_CONNECTED.has(code));
      // A call that may have reached the HSM can be looked up by the id it carried; one never sent cannot.
      return { delivery: sent ? "unanswered" : "notSent", problem, ids: sent ? requestIdsOf(undefined, request) : {} };
    }
  }

  /**
   * The status URL from Azure-AsyncOperation, used only when it points at this HSM and at a status
   * path: a recorded answer carried a malformed one ("...azure.netbackup/..."), and our bearer token
   * must never follow a URL to another host. Otherwise the documented path is built from the job id.
   */
  private asyncOperationUrl(response: PipelineResponse): { url: string; jobId: string } | undefined {
    const header = response.headers.get("azure-asyncoperation");
    if (!header) return undefined;
    try {
      const url = new URL(header);
      const match = /^\/(?:backup|restore)\/([0-9A-Za-z]{1,64})\/pending$/.exec(url.pathname);
      if (url.origin !== this.vaultUrl || !match) return undefined;
      url.search = "";
      url.searchParams.set("api-version", this.serviceVersion);
      return { url: url.href, jobId: match[1]! };
    } catch {
      return undefined; // Malformed header: the documented path is built instead.
    }
  }

  /** Retry-After in ms (seconds or an HTTP date), never more than the cap: a day-long or 74-year wait is not obeyed. */
  private retryAfterMs(response: PipelineResponse): number | undefined {
    const value = response.headers.get("retry-after")?.trim();
    if (value === undefined || value === "") return undefined;
    const ms = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - this.now().getTime();
    return Number.isFinite(ms) ? Math.min(Math.max(0, ms), this.maxPollIntervalMs) : undefined;
  }

  private statusUrl(kind: OperationKind, jobId: string): string {
    const family = kind === "backup" || kind === "preBackup" ? "backup" : "restore";
    return `${this.vaultUrl}/${family}/${jobId}/pending?api-version=${encodeURIComponent(this.serviceVersion)}`;
  }
}

/** One status read: the state, the wait the HSM asked for, and the ids of the exchange. */
type StatusRead = HsmOperationState & { retryAfterMs?: number; requestIds?: RequestIds };

function overload(
  sasOrOptions: string | BeginOptions | undefined,
  maybeOptions: BeginOptions | undefined,
): [string | undefined, BeginOptions] {
  return typeof sasOrOptions === "string" ? [sasOrOptions, maybeOptions ?? {}] : [undefined, sasOrOptions ?? {}];
}

/**
 * With a SAS only storageResourceUri + token are sent: 7.2-7.4 services know no useManagedIdentity
 * field and nothing establishes that they ignore it. Without a SAS the HSM's identity is used.
 */
function storageParameters(storageResourceUri: string, sasToken: string | undefined): SasTokenParameter {
  if (sasToken === undefined) return { storageResourceUri, useManagedIdentity: true };
  if (sasToken.trim() === "") throw new Error("The SAS token is empty");
  // Every documented client sends the token without a leading "?"; whether the service accepts one is unknown.
  return { storageResourceUri, token: sasToken.replace(/^\?/, "") };
}

/**
 * Splits a backup folder URI into container URI + folder path, the convention the .NET SDK used
 * against real HSMs for nested folders (recorded): https://acct.blob.core.windows.net/c/a/b/mhsm-x-1
 * → container https://acct.blob.core.windows.net/c, folder a/b/mhsm-x-1. For a folder at the
 * container root this equals the JS SDK's split at the last "/". Azurite-style URLs keep the account
 * in the path (http://127.0.0.1:10000/devstoreaccount1/c/folder), so the container is found after it.
 */
export function splitFolderUri(folderUri: string): { containerUri: string; folder: string } {
  let url: URL;
  try {
    url = new URL(folderUri);
  } catch {
    throw new Error(`Backup folder URI "${redactSecrets(folderUri)}" is not a URL`);
  }
  if (url.search)
    throw new Error(`Backup folder URI "${redactSecrets(folderUri)}" must not carry a query (a SAS goes separately)`);
  const segments = url.pathname.split("/").filter((s) => s.length > 0);
  const containerIndex = isLoopback(url.hostname) ? 1 : 0;
  const container = segments.slice(0, containerIndex + 1);
  const folder = segments.slice(containerIndex + 1);
  if (container.length !== containerIndex + 1 || folder.length === 0) {
    throw new Error(`Backup folder URI "${folderUri}" names no folder inside a container`);
  }
  return { containerUri: `${url.origin}/${container.join("/")}`, folder: folder.join("/") };
}

function assertJobId(jobId: string): void {
  if (!JOB_ID.test(jobId)) throw new Error(`"${jobId.slice(0, 80)}" is not a Managed HSM job id`);
}

function jobIdFromStatusUrl(url: string): string {
  return /\/(?:backup|restore)\/([^/?]+)\/pending/.exec(url)?.[1] ?? "unknown";
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * What went wrong with a call, in one line. A credential failure (DefaultAzureCredential explains
 * every credential it tried, over several lines) becomes one line saying what to do.
 */
function sendProblem(error: unknown): string {
  const first = redactSecrets(messageOf(error)).split("\n")[0]!.slice(0, 300);
  const name = error instanceof Error ? error.name : "";
  if (/Credential|Authentication/.test(name)) {
    return `no token could be acquired for the HSM (${name}: ${first}); sign in (az login) or check the app's managed identity and its IDENTITY_ENDPOINT`;
  }
  return first;
}

/** The Node/system error code of a failed request, looking through core-rest-pipeline's wrapping. */
function errorCode(error: unknown): string | undefined {
  for (let e: unknown = error, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && code !== "REQUEST_SEND_ERROR") return code;
  }
  return undefined;
}
