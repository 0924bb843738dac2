import type { InvocationContext, Timer } from "@azure/functions";
import { FUNCTION_TIMEOUT_MS, RUN_MARGIN_MS } from "../lib/config.js";
import type { AppDeps } from "../lib/deps.js";
import { appDeps } from "../lib/handler.js";
import { safeLogger } from "../lib/logger.js";

/**
 * Settles what a bad night left open (records still Starting/Running, TimedOut jobs that did end,
 * backups the HSM wrote that no record holds) and fails the invocation when it recorded an outcome
 * that is not a success, naming it.
 */
export async function reconcileTimer(_timer: Timer, context: InvocationContext, deps?: AppDeps): Promise<void> {
  const { reconcile, reconcileFailures } = await import("../lib/reconcile.js");
  const log = safeLogger(context);
  const app = deps ?? (await appDeps());
  const runDeadline = new Date(app.now().getTime() + FUNCTION_TIMEOUT_MS - RUN_MARGIN_MS);
  const report = await reconcile(app, log, { runDeadline });
  if (report.changed.length > 0 || report.discovered.length > 0 || report.verified.length > 0) {
    log.info(
      `Reconcile: checked ${report.checked} record(s), changed ${report.changed.length}, adopted ${report.discovered.length} discovered backup(s), verified ${report.verified.length} backup(s) after the fact`,
    );
  }
  const failure = reconcileFailures(report);
  if (failure) throw new Error(failure);
}
