import { json, route } from "../lib/handler.js";
import { safeLogger } from "../lib/logger.js";
import { ProblemError } from "../lib/problem.js";

/** How often a caller should come back; recorded backups took 8-78 s. */
const POLL_AFTER_SECONDS = "15";
/**
 * How long the call may spend before answering: the host cuts an HTTP call off at 230 s. It bounds the
 * pre-flight's wait for the HSM's pre-backup check (which must end before the backup may start); a
 * check still running then fails the pre-flight, saying so, rather than the call being cut off with
 * the records half-written.
 */
const HTTP_BUDGET_MS = 120_000;

/**
 * POST /api/backups {"hsm": "<name>"}? — the timer's backup, on demand, for one HSM or all. It starts
 * the jobs, records them Running and answers 202 at once (an HTTP call is cut off at 230 s); the
 * status URL, the reconcile run or the next timer run records each outcome. Every HSM gets an entry:
 * Running, Skipped (a job still runs there) or Failed (the start was refused) — the request itself
 * was valid, so it is 202 whatever each HSM said. Only when nothing at all could be recorded is it 503.
 */
export const postBackup = route(async (request, context, deps) => {
  const [{ backupRequest, requestedBy }, { backupAll }] = await Promise.all([
    import("../lib/http.js"),
    import("../lib/backup.js"),
  ]);
  const configured = deps.config.hsms.map((h) => h.name);
  const { hsm } = await backupRequest(request, configured);
  const results = await backupAll(deps, safeLogger(context), {
    trigger: "http",
    requestedBy: requestedBy(request),
    waitForOutcome: false,
    runDeadline: new Date(deps.now().getTime() + HTTP_BUDGET_MS),
    ...(hsm !== undefined ? { hsmNames: [hsm] } : {}),
  });
  const backups = results.map((r) => ({
    hsm: r.hsm,
    outcome: r.outcome,
    ...(r.record ? { statusUrl: `/api/backups/${r.record.id}`, record: r.record } : {}),
    ...(r.detail !== undefined ? { detail: r.detail } : {}),
  }));
  if (backups.every((b) => b.record === undefined)) {
    const detail = results.map((r) => `${r.hsm}: ${r.detail ?? r.outcome}`).join("; ");
    throw new ProblemError(503, "Backup not started", detail, { backups });
  }
  const only = backups.length === 1 ? backups[0]!.statusUrl : undefined;
  return json(202, { backups }, { "Retry-After": POLL_AFTER_SECONDS, ...(only ? { Location: only } : {}) });
});

/** GET /api/backups?hsm=&status=&top=&continuationToken= — the catalog, newest first. */
export const listBackups = route(async (request, _context, deps) => {
  const { listQuery } = await import("../lib/http.js");
  const query = listQuery(request);
  await deps.prepare();
  const page = await deps.catalog.list("backup", query);
  return json(200, page);
});

/** GET /api/backups/{id} — one record; a backup still running is refreshed from the HSM. */
export const getBackup = route(async (request, context, deps) => {
  const [{ recordId }, { refreshRecord }] = await Promise.all([import("../lib/http.js"), import("../lib/outcome.js")]);
  const id = recordId(request, "backup");
  const stored = await deps.catalog.get("backup", id);
  if (!stored) throw new ProblemError(404, "Backup not found", `No backup with id ${id} is recorded.`);
  const current = await refreshRecord(deps, "backup", stored, safeLogger(context));
  return json(200, current.record);
});
