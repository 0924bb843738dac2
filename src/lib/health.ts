import type { AppDeps } from "./deps.js";

export interface HsmHealth {
  readonly name: string;
  /** When the newest successful backup ended; absent when none is recorded. */
  readonly lastSuccessAt?: string;
  readonly ageHours?: number;
  readonly stale: boolean;
}

export interface Health {
  readonly healthy: boolean;
  readonly maxAgeHours: number;
  readonly hsms: readonly HsmHealth[];
}

/**
 * Healthy when every configured HSM has a successful backup younger than HEALTH_MAX_AGE_HOURS. Only
 * names and times: the endpoint is anonymous, so no folder URIs, URLs or errors.
 */
export async function checkHealth(deps: AppDeps): Promise<Health> {
  await deps.prepare();
  const now = deps.now().getTime();
  const maxAgeHours = deps.config.healthMaxAgeHours;
  const hsms = await Promise.all(deps.config.hsms.map(async (hsm): Promise<HsmHealth> => {
    const newest = (await deps.catalog.list("backup", { hsmName: hsm.name, status: "Succeeded", top: 1 })).items[0];
    if (!newest) return { name: hsm.name, stale: true };
    const endedAt = newest.endedAt ?? newest.startedAt;
    const ageHours = Math.round(((now - Date.parse(endedAt)) / 3_600_000) * 10) / 10;
    return { name: hsm.name, lastSuccessAt: endedAt, ageHours, stale: ageHours >= maxAgeHours };
  }));
  return { healthy: hsms.every((h) => !h.stale), maxAgeHours, hsms };
}
