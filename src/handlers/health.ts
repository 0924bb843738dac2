import { checkHealth } from "../lib/health.js";
import { json, route } from "../lib/handler.js";

/**
 * GET /api/health — 200 when every HSM has a recent successful backup (or is awaiting its first one
 * within the grace period after deployment), 503 naming the stale ones.
 * Anonymous so the availability test can call it; it reveals HSM names and times only.
 */
export const health = route(async (_request, _context, deps) => {
  const result = await checkHealth(deps);
  const stale = result.hsms.filter((h) => h.stale).map((h) => h.name);
  const unverified = result.hsms.filter((h) => !h.stale && h.unverified).map((h) => h.name);
  const copyMissing = result.hsms.filter((h) => !h.stale && h.copyMissing).map((h) => h.name);
  const awaiting = result.hsms.filter((h) => h.awaitingFirstBackup).map((h) => h.name);
  const details = [
    ...(stale.length > 0
      ? [
          `No successful backup within ${result.maxAgeHours} h that the HSM's check did not refuse for: ${stale.join(", ")}`,
        ]
      : []),
    ...(unverified.length > 0 ? [`Newest backup not verified restorable for: ${unverified.join(", ")}`] : []),
    ...(copyMissing.length > 0 ? [`Newest backup has no immutable copy for: ${copyMissing.join(", ")}`] : []),
    ...(awaiting.length > 0
      ? [`Awaiting the first backup, within the grace period after deployment: ${awaiting.join(", ")}`]
      : []),
  ];
  return json(result.healthy ? 200 : 503, {
    status: result.healthy ? "healthy" : "stale",
    ...(details.length > 0 ? { detail: details.join(". ") } : {}),
    ...result,
  });
});
