import type { AccessToken, GetTokenOptions, TokenCredential } from "@azure/core-auth";
import { DefaultAzureCredential } from "@azure/identity";
import { Catalog } from "./catalog.js";
import { parseConfig, type AppConfig, type HsmTarget } from "./config.js";
import { ManagedHsmBackupClient, type ManagedHsmBackupClientOptions } from "./hsm/client.js";
import type { HsmBackupOperations } from "./hsm/types.js";
import type { BlobServiceClient } from "@azure/storage-blob";
import { copyBlobService, createBackupStorage, type BackupStorage, type StorageClientOptions } from "./storage.js";

/** Everything the operations need, passed in so tests can build it from real local services. */
export interface AppDeps {
  readonly config: AppConfig;
  readonly storage: BackupStorage;
  readonly catalog: Catalog;
  /** The operations depend on the interface, not on this app's client: keyvault-admin's could serve. */
  hsmClient(hsm: HsmTarget): HsmBackupOperations;
  /** Makes sure the catalog table and backup container exist, once per process (in Azure, Bicep made them). */
  prepare(): Promise<void>;
  now(): Date;
  /** Waits between tries of a catalog write that must not be lost (it carries an accepted job's id). */
  readonly persistDelaysMs: readonly number[];
  /** The credential storage and the HSMs see; the CLI reads who it signed in as from its token's claims. */
  readonly credential?: TokenCredential;
  /** Where succeeded backups are copied (BACKUP_COPY_CONTAINER); absent when copies are off. */
  readonly copyTarget?: { readonly blobService: BlobServiceClient; readonly container: string };
}

export interface DepsOptions {
  readonly credential?: TokenCredential;
  readonly storageOptions?: StorageClientOptions;
  readonly hsmClientOptions?: ManagedHsmBackupClientOptions;
  readonly now?: () => Date;
  /** Default 0.5, 1, 2 and 4 s. */
  readonly persistDelaysMs?: readonly number[];
}

/**
 * One credential serves storage and the HSMs: the app's managed identity in Azure (the user-assigned
 * one when BackupStorage__clientId names it), and the same code path locally through a managed
 * identity endpoint.
 */
export function createDeps(config: AppConfig, options: DepsOptions = {}): AppDeps {
  const clientId = config.storage.kind === "identity" ? config.storage.clientId : undefined;
  const credential = shareTokenRequests(
    options.credential ?? new DefaultAzureCredential(clientId ? { managedIdentityClientId: clientId } : {}),
  );
  const storage = createBackupStorage(config.storage, credential, {
    requestTimeoutMs: config.requestTimeoutMs,
    ...options.storageOptions,
  });
  const catalog = new Catalog(storage.table(config.catalogTable));
  const copy = config.backupCopy;
  const clients = new Map<string, ManagedHsmBackupClient>();
  let prepared: Promise<void> | undefined;
  return {
    config,
    storage,
    catalog,
    hsmClient(hsm) {
      let client = clients.get(hsm.url);
      if (!client) {
        client = new ManagedHsmBackupClient(hsm.url, credential, {
          serviceVersion: config.hsmApiVersion,
          requestTimeoutMs: config.requestTimeoutMs,
          maxPollIntervalMs: config.maxPollIntervalMs,
          ...(options.now ? { now: options.now } : {}),
          ...options.hsmClientOptions,
        });
        clients.set(hsm.url, client);
      }
      return client;
    },
    prepare() {
      const container = storage.blobService.getContainerClient(config.backupContainer);
      prepared ??= Promise.all([
        catalog.ensureTable(),
        // The HSM needs the container to exist before a backup; only a missing one is created.
        storage.blobCall("checking the backup container", async (abortSignal) => {
          if (!(await container.exists({ abortSignal }))) await container.createIfNotExists({ abortSignal });
        }),
      ]).then(
        () => undefined,
        (error: unknown) => {
          prepared = undefined; // let the next invocation try again
          throw error;
        },
      );
      return prepared;
    },
    now: options.now ?? (() => new Date()),
    persistDelaysMs: options.persistDelaysMs ?? [500, 1000, 2000, 4000],
    credential,
    ...(copy
      ? {
          copyTarget: {
            blobService: copyBlobService(storage, copy, credential, {
              requestTimeoutMs: config.requestTimeoutMs,
              ...options.storageOptions,
            }),
            container: copy.container,
          },
        }
      : {}),
  };
}

/**
 * Concurrent requests for the same token become one: a run's first calls (the catalog table and the
 * backup container at once, then every HSM) would otherwise each fetch a token before the first one
 * is cached — `npm run bench` counted two storage tokens per run. Once a token is issued, the
 * credential's own cache answers. Each caller keeps its own abort signal.
 */
export function shareTokenRequests(credential: TokenCredential): TokenCredential {
  const pending = new Map<string, Promise<AccessToken | null>>();
  return {
    getToken(scopes: string | string[], options: GetTokenOptions = {}) {
      const { abortSignal, ...shared } = options;
      const key = JSON.stringify([scopes, shared.tenantId ?? null, shared.claims ?? null, shared.enableCae ?? null]);
      let request = pending.get(key);
      if (!request) {
        request = credential.getToken(scopes, shared).finally(() => pending.delete(key));
        pending.set(key, request);
      }
      if (!abortSignal) return request;
      const aborted = () => Object.assign(new Error("The token request was aborted."), { name: "AbortError" });
      if (abortSignal.aborted) return Promise.reject(aborted());
      return new Promise<AccessToken | null>((resolve, reject) => {
        const abort = () => reject(aborted());
        abortSignal.addEventListener("abort", abort, { once: true });
        request.then(resolve, reject).finally(() => abortSignal.removeEventListener("abort", abort));
      });
    },
  };
}

let memo: AppDeps | undefined;

/**
 * The handlers' dependencies, built on first use from the app settings — never at module load,
 * where a throw would take every function of the app down.
 */
export function getDeps(): AppDeps {
  memo ??= createDeps(parseConfig(process.env));
  return memo;
}
