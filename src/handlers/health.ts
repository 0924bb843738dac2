import { checkHealth } from "../lib/health.js";
import { json, route } from "../lib/handler.js";

/**
 * GET /api/health — 200 when every HSM has a recent successful backup, 503 naming the stale ones.
 * Anonymous so the availability test can call it; it reveals HSM names and times only.
 */
export const health = route(async (_request, _context, deps) => {
  const result = await checkHealth(deps);
  const stale = result.hsms.filter((h) => h.stale).map((h) => h.name);
  return json(result.healthy ? 200 : 503, {
    status: result.healthy ? "healthy" : "stale",
    ...(stale.length > 0 ? { detail: `No successful backup within ${result.maxAgeHours} h for: ${stale.join(", ")}` } : {}),
    ...result,
  });
});
