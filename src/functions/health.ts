/** Registration only; the handler is in src/handlers/health.ts (see src/functions/backups.ts for why). */
import { app } from "@azure/functions";
import { health } from "../handlers/health.js";

app.http("health", { methods: ["GET"], route: "health", authLevel: "anonymous", handler: health });
