import type { InvocationContext, Timer } from "@azure/functions";
import { FUNCTION_TIMEOUT_MS, RUN_MARGIN_MS } from "../lib/config.js";
import type { AppDeps } from "../lib/deps.js";
import { appDeps } from "../lib/handler.js";
import { safeLogger } from "../lib/logger.js";
import { latestOccurrence, parseSchedule } from "../lib/schedule.js";

/**
 * Backs up every configured HSM and fails the invocation when any did not succeed, so that a missed
 * backup shows as a failed run in the portal, not as a quiet log line. It stops waiting RUN_MARGIN_MS
 * before the function timeout; a job still running then is settled by the reconcile timer.
 */
export async function nightlyBackup(timer: Timer, context: InvocationContext, deps?: AppDeps): Promise<void> {
  const { backupAll, failureSummary } = await import("../lib/backup.js");
  const log = safeLogger(context);
  if (timer.isPastDue) log.warn("The backup timer is past due: this run catches up a missed schedule.");
  const app = deps ?? (await appDeps());
  const now = app.now();
  const runDeadline = new Date(now.getTime() + FUNCTION_TIMEOUT_MS - RUN_MARGIN_MS);
  // The slot this invocation belongs to: a catch-up after downtime backs up once, for the latest slot.
  const slot = latestOccurrence(parseSchedule(app.config.backupSchedule), now);
  const results = await backupAll(app, log, { trigger: "timer", runDeadline, ...(slot ? { slot } : {}) });
  const pending = results.filter((r) => r.outcome === "Pending");
  if (pending.length > 0)
    log.warn(
      `Still running when this run stopped waiting (reconcile records the outcome): ${pending.map((r) => `${r.hsm} job ${r.jobId}`).join(", ")}`,
    );
  const failure = failureSummary(results);
  if (failure) throw new Error(failure);
}
