/** Registration only; the handler is in src/handlers/reconcile.ts (see src/functions/backups.ts for why). */
import { app } from "@azure/functions";
import { reconcileTimer } from "../handlers/reconcile.js";
import { reconcileSchedule } from "../lib/config.js";

app.timer("reconcile", {
  schedule: reconcileSchedule(process.env),
  runOnStartup: false,
  useMonitor: true,
  handler: reconcileTimer,
});
