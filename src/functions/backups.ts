/**
 * Registration only: the handlers live in src/handlers/ so that the CLI, the demo and the tests can
 * call them without loading this file — outside the Functions host `app.http` only prints "test mode"
 * warnings. The host calls a handler with (request, context), so the optional deps parameter keeps
 * its default (the app's memoized dependencies).
 */
import { app } from "@azure/functions";
import { getBackup, listBackups, postBackup } from "../handlers/backups.js";

app.http("listBackups", { methods: ["GET"], route: "backups", authLevel: "function", handler: listBackups });
app.http("postBackup", { methods: ["POST"], route: "backups", authLevel: "function", handler: postBackup });
app.http("getBackup", { methods: ["GET"], route: "backups/{id}", authLevel: "function", handler: getBackup });
