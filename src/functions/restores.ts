/** Registration only; the handlers are in src/handlers/restores.ts (see src/functions/backups.ts for why). */
import { app } from "@azure/functions";
import { getRestore, postRestore } from "../handlers/restores.js";

app.http("postRestore", { methods: ["POST"], route: "restores", authLevel: "function", handler: postRestore });
app.http("getRestore", { methods: ["GET"], route: "restores/{id}", authLevel: "function", handler: getRestore });
