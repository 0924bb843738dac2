import type { AppDeps } from "./deps.js";

export interface HsmHealth {
  readonly name: string;
  /** When the newest successful backup ended; absent when none is recorded. */
  readonly lastSuccessAt?: string;
  readonly ageHours?: number;
  readonly stale: boolean;
  /** The HSM's pre-restore check of that backup: Passed, Failed, Skipped, or "none" (never checked). */
  readonly verification?: string;
  /** The newest successful backup was not verified restorable (Failed, Skipped or never checked). */
  readonly unverified?: boolean;
  /** With copies on: the newest successful backup has no immutable copy (Failed, Skipped or none). Not unhealthy: the backup exists. */
  readonly copyMissing?: boolean;
  /** Never backed up, still within HEALTH_GRACE_HOURS of the deployment: not stale (yet). */
  readonly awaitingFirstBackup?: boolean;
  /** When that grace ends: from then on, still no successful backup is stale. */
  readonly graceEndsAt?: string;
}

export interface Health {
  readonly healthy: boolean;
  readonly maxAgeHours: number;
  readonly hsms: readonly HsmHealth[];
}

/**
 * Healthy when every configured HSM has a successful backup younger than HEALTH_MAX_AGE_HOURS whose
 * restorability check did not fail: a backup the HSM says it cannot restore is no backup. One that was
 * not checked (api-version before 7.6, HSM busy) is reported as unverified, not as unhealthy. An HSM
 * never backed up is stale, except within HEALTH_GRACE_HOURS of DEPLOYED_AT: a fresh deployment's
 * first backup may not have run yet, and nobody should be paged for that. Only
 * names, times and verdicts: the endpoint is anonymous, so no folder URIs, URLs or errors.
 */
export async function checkHealth(deps: AppDeps): Promise<Health> {
  await deps.prepare();
  const now = deps.now().getTime();
  const maxAgeHours = deps.config.healthMaxAgeHours;
  const hsms = await Promise.all(
    deps.config.hsms.map(async (hsm): Promise<HsmHealth> => {
      const newest = (await deps.catalog.list("backup", { hsmName: hsm.name, status: "Succeeded", top: 1 })).items[0];
      if (!newest) return neverBackedUp(deps, hsm.name, now);
      const endedAt = newest.endedAt ?? newest.startedAt;
      const ageHours = Math.round(((now - Date.parse(endedAt)) / 3_600_000) * 10) / 10;
      const verification = newest.verification ?? "none";
      return {
        name: hsm.name,
        lastSuccessAt: endedAt,
        ageHours,
        stale: ageHours >= maxAgeHours || verification === "Failed",
        verification,
        unverified: verification !== "Passed",
        ...(deps.config.backupCopy ? { copyMissing: newest.copyStatus !== "Copied" } : {}),
      };
    }),
  );
  return { healthy: hsms.every((h) => !h.stale), maxAgeHours, hsms };
}

function neverBackedUp(deps: AppDeps, name: string, now: number): HsmHealth {
  const { deployedAt, healthGraceHours } = deps.config;
  if (!deployedAt || healthGraceHours === 0) return { name, stale: true };
  const graceEnds = deployedAt.getTime() + healthGraceHours * 3_600_000;
  if (now >= graceEnds) return { name, stale: true };
  return { name, stale: false, awaitingFirstBackup: true, graceEndsAt: new Date(graceEnds).toISOString() };
}
