/** Registration only; the handler is in src/handlers/nightlyBackup.ts (see src/functions/backups.ts for why). */
import { app } from "@azure/functions";
import { nightlyBackup } from "../handlers/nightlyBackup.js";
import { backupSchedule } from "../lib/config.js";

app.timer("nightlyBackup", {
  // UTC on every plan (Flex Consumption ignores WEBSITE_TIME_ZONE). runOnStartup stays off: it
  // causes extra runs on every scale-out and restart.
  schedule: backupSchedule(process.env),
  runOnStartup: false,
  useMonitor: true,
  handler: nightlyBackup,
});
