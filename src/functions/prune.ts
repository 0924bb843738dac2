/** Registration only; the handler is in src/handlers/prune.ts (see src/functions/backups.ts for why). */
import { app } from "@azure/functions";
import { pruneTimer } from "../handlers/prune.js";
import { pruneSchedule } from "../lib/config.js";

app.timer("prune", {
  schedule: pruneSchedule(process.env),
  runOnStartup: false,
  useMonitor: true,
  handler: pruneTimer,
});
