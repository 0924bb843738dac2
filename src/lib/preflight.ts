/**
 * The pre-flight before a backup: what can be checked cheaply, so that a backup that cannot work
 * fails with a message naming the missing account, container or role instead of the HSM's job error
 * hours later — or, worse, a backup that "starts" and never writes anything. The checks, in order:
 * the backup container exists; in SAS mode the SAS can be signed (with an identity-based connection
 * this gets a user-delegation key); with api-version 7.6+ the HSM's own pre-backup check passes.
 */
import { PRE_BACKUP_MAX_WAIT_MS, type HsmTarget } from "./config.js";
import type { AppDeps } from "./deps.js";
import { HsmJobFailedError, HsmRequestError } from "./hsm/errors.js";
import type { HsmOperation } from "./hsm/types.js";
import { toSafeError } from "./redact.js";
import { PRE_OPERATION_API_VERSIONS } from "./verify.js";

/**
 * "passed": start the backup. "startFailed": the pre-backup start met what a backup start would have
 * met — the HSM busy with another job (409) or out of reach (the call was never sent) — and the caller
 * records it as it records that backup start (Skipped, StartNotSent). "failed": record PreflightFailed.
 */
export type PreflightVerdict =
  | { readonly verdict: "passed" }
  | { readonly verdict: "startFailed"; readonly error: HsmRequestError }
  | { readonly verdict: "failed"; readonly message: string };

/**
 * Runs the checks for one HSM. The HSM runs one operation at a time, so this returns only once its
 * pre-backup job has ended (or has been given up on, which fails the pre-flight: see below). Its wait
 * ends at `deadline` (the backup's own) or after ten minutes, whichever is first.
 */
export async function preflight(
  deps: AppDeps,
  hsm: HsmTarget,
  deadline: Date,
  abortSignal?: AbortSignal,
): Promise<PreflightVerdict> {
  const { config, storage } = deps;
  const container = config.backupContainer;
  const account = storage.blobService.accountName;
  const failed = (message: string): PreflightVerdict => ({ verdict: "failed", message });

  try {
    const exists = await storage.blobCall("checking the backup container", (signal) =>
      storage.blobService.getContainerClient(container).exists({ abortSignal: signal }),
    );
    if (!exists)
      return failed(
        `container ${container} does not exist in account ${account}; create it (the deployment does) or set BACKUP_CONTAINER to the container the backups go to`,
      );
  } catch (error) {
    return failed(
      `the app could not check container ${container} in account ${account}: ${toSafeError(error).message}${
        statusOf(error) === 403 ? "; the app's identity needs Storage Blob Data Contributor on the container" : ""
      }`,
    );
  }

  let sasToken: string | undefined;
  if (config.hsmStorageAuth === "sas") {
    try {
      sasToken = (await storage.containerSas(container, "backup", config.sasTtlMinutes)).token;
    } catch (error) {
      const cause = toSafeError(error).message;
      return failed(
        config.storage.kind === "identity"
          ? `the app could not get a user-delegation key from account ${account} (${cause}): it needs Storage Blob Delegator on the account to sign the HSM's SAS`
          : `the app could not sign a SAS for container ${container} in account ${account}: ${cause}`,
      );
    }
  }

  if (!PRE_OPERATION_API_VERSIONS.has(config.hsmApiVersion)) return { verdict: "passed" };
  const client = deps.hsmClient(hsm);
  const containerUrl = storage.containerUrl(container);
  const begin = abortSignal ? { abortSignal } : {};
  let poller: HsmOperation;
  try {
    poller =
      sasToken !== undefined
        ? await client.beginPreBackup(containerUrl, sasToken, begin)
        : await client.beginPreBackup(containerUrl, begin);
  } catch (error) {
    if (error instanceof HsmRequestError && (error.statusCode === 409 || error.notSent))
      return { verdict: "startFailed", error };
    const forbidden = error instanceof HsmRequestError && error.statusCode === 403;
    return failed(
      `HSM ${hsm.name} did not start its pre-backup check: ${toSafeError(error).message}${
        forbidden
          ? `; the app's identity needs the Managed HSM Backup role (local RBAC, scope /) on HSM ${hsm.name}`
          : ""
      }`,
    );
  }
  const cap = new Date(deps.now().getTime() + PRE_BACKUP_MAX_WAIT_MS);
  try {
    await poller.pollUntilDone({ deadline: deadline < cap ? deadline : cap, ...begin });
    return { verdict: "passed" };
  } catch (error) {
    if (error instanceof HsmJobFailedError)
      return failed(
        `the HSM's pre-backup check failed${error.code ? ` (${error.code})` : ""}: ${error.serviceMessage}; ${storageNeeds(deps, hsm.name, account)}`,
      );
    if (abortSignal?.aborted)
      return failed(
        `the run stopped during the HSM's pre-backup check (job ${poller.jobId}: ${toSafeError(abortSignal.reason).message}); no backup was started`,
      );
    // No verdict: the job may still be running, and the HSM refuses a second one meanwhile. Starting
    // the backup now would earn a 409 recorded as Skipped, which pages no one; a Failed record does.
    return failed(
      `the HSM's pre-backup check (job ${poller.jobId}) did not finish: ${toSafeError(error).message}; no backup was started, because the HSM runs one operation at a time and may still be running the check`,
    );
  }
}

/** What the HSM needs to write into the container, by how it reaches storage. */
function storageNeeds(deps: AppDeps, hsmName: string, account: string): string {
  const container = deps.config.backupContainer;
  if (deps.config.hsmStorageAuth === "managedIdentity")
    return `HSM ${hsmName}'s user-assigned identity needs Storage Blob Data Contributor on container ${container} of account ${account}, and the app's identity the Managed HSM Backup role on the HSM`;
  return deps.config.storage.kind === "identity"
    ? `the HSM writes with the app's user-delegation SAS, which grants at most what the app's identity holds: it needs Storage Blob Data Contributor on container ${container} of account ${account} (and the Managed HSM Backup role on the HSM); the account must also let the HSM in over its network rules`
    : `the HSM writes with a SAS signed by the account key of ${account}: check that container ${container} accepts writes (network rules, immutability) and that the app's identity has the Managed HSM Backup role on the HSM`;
}

function statusOf(error: unknown): number | undefined {
  const status = (error as { statusCode?: unknown } | null)?.statusCode;
  return typeof status === "number" ? status : undefined;
}
