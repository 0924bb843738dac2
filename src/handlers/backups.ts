import { json, route } from "../lib/handler.js";
import { safeLogger } from "../lib/logger.js";
import { ProblemError } from "../lib/problem.js";

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
