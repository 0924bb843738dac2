import type { InvocationContext, Timer } from "@azure/functions";
import { FUNCTION_TIMEOUT_MS, RUN_MARGIN_MS } from "../lib/config.js";
import type { AppDeps } from "../lib/deps.js";
import { appDeps } from "../lib/handler.js";
import { safeLogger } from "../lib/logger.js";

/**
 * Deletes backup folders past the retention, above the floor. A folder storage refuses to delete is
 * reported (a warning line) and left: that is no failure of the run. The invocation fails only when
 * an HSM's prune could not be carried out (catalog or storage out of reach), naming it.
 */
export async function pruneTimer(_timer: Timer, context: InvocationContext, deps?: AppDeps): Promise<void> {
  const { prune } = await import("../lib/prune.js");
  const log = safeLogger(context);
  const app = deps ?? (await appDeps());
  const runDeadline = new Date(app.now().getTime() + FUNCTION_TIMEOUT_MS - RUN_MARGIN_MS);
  const report = await prune(app, log, { runDeadline });
  if (report.errors.length > 0)
    throw new Error(`Prune met ${report.errors.length} error(s): ${report.errors.join("; ")}`);
}
