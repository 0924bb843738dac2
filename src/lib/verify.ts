/**
 * The HSM's own word on whether a backup folder can be restored: its pre-restore check (api-version
 * 7.6+), run on every new backup (verification) and before reconcile adopts a folder no record holds.
 */
import type { HsmTarget } from "./config.js";
import type { AppDeps } from "./deps.js";
import { HsmJobFailedError } from "./hsm/errors.js";
import { toSafeError } from "./redact.js";

/** Pre-restore and pre-backup exist from api-version 7.6 on. */
export const PRE_OPERATION_API_VERSIONS: ReadonlySet<string> = new Set(["7.6", "2025-06-01", "2025-07-01"]);

export type Check = { verdict: "passed" } | { verdict: "refused" | "unavailable" | "unverifiable"; reason: string };

/**
 * Runs the HSM's pre-restore check on a folder and waits for its verdict (at most 10 minutes, or until
 * the given deadline).
 * "refused": the HSM says the folder cannot be restored; "unavailable": no verdict now (busy,
 * unreachable); "unverifiable": this api-version has no such check.
 */
export async function preRestoreCheck(
  deps: AppDeps,
  hsm: HsmTarget,
  folderUri: string,
  deadline?: Date,
): Promise<Check> {
  const { config, storage } = deps;
  if (!PRE_OPERATION_API_VERSIONS.has(config.hsmApiVersion)) {
    return {
      verdict: "unverifiable",
      reason: `not verified: the HSM's pre-restore check needs HSM_API_VERSION 7.6 or later (it is ${config.hsmApiVersion})`,
    };
  }
  try {
    const client = deps.hsmClient(hsm);
    const poller =
      config.hsmStorageAuth === "sas"
        ? await client.beginPreRestore(
            folderUri,
            (await storage.containerSas(config.backupContainer, "restore", config.sasTtlMinutes)).token,
          )
        : await client.beginPreRestore(folderUri);
    const tenMinutes = new Date(deps.now().getTime() + Math.min(config.jobTimeoutMs, 10 * 60_000));
    await poller.pollUntilDone({ deadline: deadline && deadline < tenMinutes ? deadline : tenMinutes });
    return { verdict: "passed" };
  } catch (error) {
    const safe = toSafeError(error);
    return error instanceof HsmJobFailedError
      ? { verdict: "refused", reason: `the HSM's pre-restore check refused it: ${safe.message}` }
      : { verdict: "unavailable", reason: `the pre-restore check could not run: ${safe.message}` };
  }
}

export type Verification = "Passed" | "Failed" | "Skipped";

/**
 * The record fields of a new backup's verification: Passed when the HSM's pre-restore check accepts
 * the folder, Failed (with its message) when it refuses it, Skipped (saying why) when no verdict came.
 * The HSM runs one operation at a time, so this runs after the backup has ended; it counts toward the
 * backup's deadline.
 */
export async function verifyBackup(
  deps: AppDeps,
  hsm: HsmTarget,
  folderUri: string,
  deadline: Date,
): Promise<{ verification: Verification; verifiedAt: string; verificationMessage?: string }> {
  const check = await preRestoreCheck(deps, hsm, folderUri, deadline);
  const verifiedAt = deps.now().toISOString();
  if (check.verdict === "passed") return { verification: "Passed", verifiedAt };
  return {
    verification: check.verdict === "refused" ? "Failed" : "Skipped",
    verifiedAt,
    verificationMessage: check.reason,
  };
}
