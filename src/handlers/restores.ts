import { json, route } from "../lib/handler.js";
import { safeLogger } from "../lib/logger.js";
import { ProblemError } from "../lib/problem.js";

/** How often a caller should come back; restores took 11-39 s on recorded HSMs. */
const POLL_AFTER_SECONDS = "10";

/**
 * POST /api/restores {"backupId": "...", "keyName": "..."?} — starts the restore and answers 202 with
 * its status URL at once: an HTTP trigger is cut off at 230 s, and a restore can take longer.
 */
export const postRestore = route(async (request, context, deps) => {
  const [{ requestedBy, restoreRequest }, { startRestore }] = await Promise.all([
    import("../lib/http.js"),
    import("../lib/restore.js"),
  ]);
  const body = await restoreRequest(request);
  const record = await startRestore(deps, safeLogger(context), { ...body, requestedBy: requestedBy(request) });
  const statusUrl = `/api/restores/${record.id}`;
  return json(202, { ...record, statusUrl }, { Location: statusUrl, "Retry-After": POLL_AFTER_SECONDS });
});

/** GET /api/restores/{id} — the restore's status; while it runs, the HSM is asked and an outcome recorded. */
export const getRestore = route(async (request, context, deps) => {
  const [{ recordId }, { restoreStatus }] = await Promise.all([import("../lib/http.js"), import("../lib/restore.js")]);
  const id = recordId(request, "restore");
  const record = await restoreStatus(deps, safeLogger(context), id);
  if (!record) throw new ProblemError(404, "Restore not found", `No restore with id ${id} is recorded.`);
  const running = record.status === "Starting" || record.status === "Running";
  return json(200, record, running ? { "Retry-After": POLL_AFTER_SECONDS } : {});
});
