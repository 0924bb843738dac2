import functions, { type InvocationContext, type Timer } from "@azure/functions";
import { backupSchedule } from "../lib/config.js";
import type { AppDeps } from "../lib/deps.js";
import { appDeps } from "../lib/handler.js";
import { safeLogger } from "../lib/logger.js";

/**
 * Backs up every configured HSM and fails the invocation when any did not succeed, so that a missed
 * backup shows as a failed run in the portal, not as a quiet log line.
 */
export async function nightlyBackup(timer: Timer, context: InvocationContext, deps?: AppDeps): Promise<void> {
  const { backupAll, failureSummary } = await import("../lib/backup.js");
  const log = safeLogger(context);
  if (timer.isPastDue) log.warn("The backup timer is past due: this run catches up a missed schedule.");
  const records = await backupAll(deps ?? await appDeps(), log, { trigger: "timer" });
  const failure = failureSummary(records);
  if (failure) throw new Error(failure);
}

functions.app.timer("nightlyBackup", {
  // UTC on every plan (Flex Consumption ignores WEBSITE_TIME_ZONE). runOnStartup stays off: it
  // causes extra runs on every scale-out and restart.
  schedule: backupSchedule(process.env),
  runOnStartup: false,
  useMonitor: true,
  handler: (timer, context) => nightlyBackup(timer, context),
});
