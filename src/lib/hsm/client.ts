/**
 * A small Managed HSM full backup / restore client over the documented data-plane REST API, because
 * @azure/keyvault-admin is not served by the registry this project can reach. Its surface follows
 * keyvault-admin's KeyVaultBackupClient (beginBackup, beginRestore, beginSelectiveKeyRestore,
 * beginPreBackup, beginPreRestore, each with a SAS or managed-identity overload) so the official
 * package can replace it in this one file where it is available. Wire facts and their sources:
 * shared/docs/managed-hsm-backup-api.md.
 */
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
import { isLoopback } from "../config.js";
import { redactSecrets } from "../redact.js";
import { HsmJobFailedError, HsmRequestError, HsmStatusUnavailableError } from "./errors.js";
import { HsmOperationPoller, type Delay, type OperationKind, type HsmOperationState, parseOperation } from "./poller.js";

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
}

export interface BeginOptions {
  readonly abortSignal?: AbortSignal;
}

/** Storage parameters as the service names them; token is absent in managed-identity mode. */
interface SasTokenParameter {
  storageResourceUri: string;
  token?: string;
  useManagedIdentity?: boolean;
}

const sleep: Delay = (ms, signal) =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });

export class ManagedHsmBackupClient {
  /** The HSM's origin, e.g. https://contoso.managedhsm.azure.net */
  readonly vaultUrl: string;
  readonly serviceVersion: string;
  private readonly pipeline: Pipeline;
  private readonly httpClient: HttpClient;
  private readonly delay: Delay;
  private readonly defaultPollIntervalMs: number;
  private readonly maxStartAttempts: number;
  private readonly maxStatusAttempts: number;
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
    this.httpClient = options.httpClient ?? createDefaultHttpClient();
    this.delay = options.delay ?? sleep;
    this.defaultPollIntervalMs = options.defaultPollIntervalMs ?? 2000;
    this.maxStartAttempts = options.maxStartAttempts ?? 4;
    this.maxStatusAttempts = options.maxStatusAttempts ?? 4;
    // Retries are ours, not the pipeline's: a start call must never be replayed blindly (a replayed
    // POST /backup can start a second job or earn a false "already in progress" conflict).
    this.pipeline = createPipelineFromOptions({
      retryOptions: { maxRetries: 0 },
      userAgentOptions: { userAgentPrefix: "mhsm-backup-functions" },
      ...(options.tlsOptions ? { tlsOptions: options.tlsOptions } : {}),
    });
    // The challenge resource check stops a token being sent to a host that claims another
    // audience; only a loopback emulator (which cannot have a managedhsm.azure.net name) skips it.
    this.pipeline.addPolicy(keyVaultAuthenticationPolicy(credential, { disableChallengeResourceVerification: loopback }));
  }

  /** Starts a full backup into the container (optionally a sub-path of it). */
  beginBackup(blobStorageUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  /** Starts a full backup; the HSM reaches storage with its own user-assigned identity (7.5+). */
  beginBackup(blobStorageUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginBackup(blobStorageUri: string, sasOrOptions?: string | BeginOptions, maybeOptions?: BeginOptions): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    return this.start("backup", "POST", "/backup", storageParameters(blobStorageUri, sasToken), options);
  }

  /** Starts a full restore: the HSM is wiped back to the backup's state, role assignments included. */
  beginRestore(folderUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  beginRestore(folderUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginRestore(folderUri: string, sasOrOptions?: string | BeginOptions, maybeOptions?: BeginOptions): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    const { containerUri, folder } = splitFolderUri(folderUri);
    return this.start("restore", "PUT", "/restore",
      { sasTokenParameters: storageParameters(containerUri, sasToken), folderToRestore: folder }, options);
  }

  /** Restores one key, with all its versions, from a backup folder. The key must be purged first. */
  beginSelectiveKeyRestore(keyName: string, folderUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  beginSelectiveKeyRestore(keyName: string, folderUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginSelectiveKeyRestore(keyName: string, folderUri: string, sasOrOptions?: string | BeginOptions, maybeOptions?: BeginOptions): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    if (!/^[0-9A-Za-z-]{1,127}$/.test(keyName)) {
      throw new Error(`Key name "${keyName}" is not a Managed HSM key name (1-127 letters, digits and hyphens)`);
    }
    const { containerUri, folder } = splitFolderUri(folderUri);
    // The selective restore body names the folder "folder", not "folderToRestore" (spec).
    return this.start("selectiveKeyRestore", "PUT", `/keys/${keyName}/restore`,
      { sasTokenParameters: storageParameters(containerUri, sasToken), folder }, options);
  }

  /** Checks that a full backup could run (storage reachable, permissions right); api-version 7.6+. */
  beginPreBackup(blobStorageUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  beginPreBackup(blobStorageUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginPreBackup(blobStorageUri: string, sasOrOptions?: string | BeginOptions, maybeOptions?: BeginOptions): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    return this.start("preBackup", "POST", "/prebackup", storageParameters(blobStorageUri, sasToken), options);
  }

  /** Checks that a full restore from this folder could run; api-version 7.6+. */
  beginPreRestore(folderUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  beginPreRestore(folderUri: string, options?: BeginOptions): Promise<HsmOperationPoller>;
  async beginPreRestore(folderUri: string, sasOrOptions?: string | BeginOptions, maybeOptions?: BeginOptions): Promise<HsmOperationPoller> {
    const [sasToken, options] = overload(sasOrOptions, maybeOptions);
    const { containerUri, folder } = splitFolderUri(folderUri);
    return this.start("preRestore", "PUT", "/prerestore",
      { sasTokenParameters: storageParameters(containerUri, sasToken), folderToRestore: folder }, options);
  }

  /** A poller for a job someone else started (e.g. a recycled worker), from its job id alone. */
  resumeOperation(kind: OperationKind, jobId: string): HsmOperationPoller {
    assertJobId(jobId);
    return new HsmOperationPoller(kind, this.statusUrl(kind, jobId), undefined, this.pollDeps());
  }

  /** Reads a job's status once. Failed/Canceled are returned, not thrown; see the poller for waiting. */
  async getOperationStatus(kind: OperationKind, jobId: string, options: BeginOptions = {}): Promise<HsmOperationState> {
    assertJobId(jobId);
    return this.readStatus(kind, this.statusUrl(kind, jobId), options.abortSignal);
  }

  private async start(kind: OperationKind, method: "POST" | "PUT", path: string, body: object, options: BeginOptions): Promise<HsmOperationPoller> {
    const url = `${this.vaultUrl}${path}?api-version=${encodeURIComponent(this.serviceVersion)}`;
    const json = JSON.stringify(body);
    for (let attempt = 1; ; attempt++) {
      let response: PipelineResponse;
      try {
        response = await this.send(method, url, json, options.abortSignal);
      } catch (error) {
        if (options.abortSignal?.aborted) throw error;
        // The request may or may not have reached the HSM: replaying it could start a second job.
        throw new HsmRequestError(`${kind} start`, this.vaultUrl, undefined, undefined,
          `the call failed before an answer arrived (${redactSecrets(messageOf(error))}); it was not retried, because the HSM may have started the job. Check the HSM's status before starting again`);
      }
      if (response.status === 202 || response.status === 200) {
        const state = parseOperation(kind, response.bodyAsText, this.vaultUrl);
        const statusUrl = this.pollingUrl(kind, response, state.jobId);
        return new HsmOperationPoller(kind, statusUrl, state, this.pollDeps(), retryAfterMs(response));
      }
      // 429 and 503 are refusals before any work: the only answers after which a start call is re-sent.
      const wait = retryAfterMs(response);
      if ((response.status === 429 || response.status === 503) && attempt < this.maxStartAttempts) {
        await this.delay(wait ?? 5000 * attempt, options.abortSignal);
        continue;
      }
      throw HsmRequestError.fromResponse(`${kind} start`, this.vaultUrl, response);
    }
  }

  private pollDeps() {
    return {
      readStatus: (kind: OperationKind, url: string, signal?: AbortSignal) => this.readStatus(kind, url, signal),
      delay: this.delay,
      defaultPollIntervalMs: this.defaultPollIntervalMs,
    };
  }

  /**
   * One status read. A 4xx (other than 401, 403, 429) is the job's terminal failure — the service has answered a
   * bad SAS that way (recorded). 429, 5xx and transport errors are retried; after that the job's fate
   * is unknown, which is not the same as failed: HsmStatusUnavailableError.
   */
  private async readStatus(kind: OperationKind, url: string, signal?: AbortSignal): Promise<HsmOperationState & { retryAfterMs?: number }> {
    let lastProblem = "";
    for (let attempt = 1; attempt <= this.maxStatusAttempts; attempt++) {
      let response: PipelineResponse | undefined;
      try {
        response = await this.send("GET", url, undefined, signal);
      } catch (error) {
        if (signal?.aborted) throw error;
        lastProblem = redactSecrets(messageOf(error));
      }
      if (response) {
        if (response.status === 200) {
          const wait = retryAfterMs(response);
          return { ...parseOperation(kind, response.bodyAsText, this.vaultUrl), ...(wait !== undefined ? { retryAfterMs: wait } : {}) };
        }
        // 401/403 say nothing about the job, only about our access to its status.
        if (response.status === 401 || response.status === 403) {
          throw HsmRequestError.fromResponse(`${kind} status`, this.vaultUrl, response);
        }
        if (response.status !== 429 && response.status < 500) {
          throw new HsmJobFailedError(kind, this.vaultUrl, jobIdFromStatusUrl(url), HsmRequestError.fromResponse(`${kind} status`, this.vaultUrl, response));
        }
        lastProblem = `HTTP ${response.status}`;
        if (attempt < this.maxStatusAttempts) {
          await this.delay(retryAfterMs(response) ?? 1000 * 2 ** attempt, signal);
          continue;
        }
      } else if (attempt < this.maxStatusAttempts) {
        await this.delay(1000 * 2 ** attempt, signal);
        continue;
      }
    }
    throw new HsmStatusUnavailableError(kind, this.vaultUrl, jobIdFromStatusUrl(url), lastProblem, this.maxStatusAttempts);
  }

  private send(method: "GET" | "POST" | "PUT", url: string, body: string | undefined, abortSignal?: AbortSignal): Promise<PipelineResponse> {
    const headers = createHttpHeaders({ Accept: "application/json" });
    if (body !== undefined) headers.set("Content-Type", "application/json");
    const request = createPipelineRequest({ url, method, headers, allowInsecureConnection: this.insecure, ...(body !== undefined ? { body } : {}), ...(abortSignal ? { abortSignal } : {}) });
    return this.pipeline.sendRequest(this.httpClient, request);
  }

  /**
   * The status URL. The Azure-AsyncOperation header is used only when it points at this HSM and at a
   * status path: a recorded answer carried a malformed one ("...azure.netbackup/..."), and our bearer
   * token must never follow a URL to another host. Otherwise the documented path is built from the job id.
   */
  private pollingUrl(kind: OperationKind, response: PipelineResponse, jobId: string): string {
    const header = response.headers.get("azure-asyncoperation");
    if (header) {
      try {
        const url = new URL(header);
        if (url.origin === this.vaultUrl && /^\/(backup|restore)\/[0-9A-Za-z]+\/pending$/.test(url.pathname)) {
          url.searchParams.set("api-version", this.serviceVersion);
          return url.href;
        }
      } catch {
        // Malformed header: fall through to the documented path.
      }
    }
    return this.statusUrl(kind, jobId);
  }

  private statusUrl(kind: OperationKind, jobId: string): string {
    const family = kind === "backup" || kind === "preBackup" ? "backup" : "restore";
    return `${this.vaultUrl}/${family}/${jobId}/pending?api-version=${encodeURIComponent(this.serviceVersion)}`;
  }
}

function overload(sasOrOptions: string | BeginOptions | undefined, maybeOptions: BeginOptions | undefined): [string | undefined, BeginOptions] {
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
  if (url.search) throw new Error(`Backup folder URI "${redactSecrets(folderUri)}" must not carry a query (a SAS goes separately)`);
  const segments = url.pathname.split("/").filter((s) => s.length > 0);
  const containerIndex = isLoopback(url.hostname) ? 1 : 0;
  const container = segments.slice(0, containerIndex + 1);
  const folder = segments.slice(containerIndex + 1);
  if (container.length !== containerIndex + 1 || folder.length === 0) {
    throw new Error(`Backup folder URI "${folderUri}" names no folder inside a container`);
  }
  return { containerUri: `${url.origin}/${container.join("/")}`, folder: folder.join("/") };
}

function retryAfterMs(response: PipelineResponse): number | undefined {
  const value = response.headers.get("retry-after");
  if (value === undefined) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

function assertJobId(jobId: string): void {
  if (!/^[0-9A-Za-z]{1,64}$/.test(jobId)) throw new Error(`"${jobId}" is not a Managed HSM job id`);
}

function jobIdFromStatusUrl(url: string): string {
  return /\/(?:backup|restore)\/([^/?]+)\/pending/.exec(url)?.[1] ?? "unknown";
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
