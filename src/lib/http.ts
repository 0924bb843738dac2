/**
 * Reading HTTP requests: record ids, listing queries and restore bodies, checked before anything is
 * asked of storage or an HSM. Handlers import it on first use (it pulls in the catalog); the route
 * wrapper and JSON answers live in handler.ts, which registration loads.
 */
import type { HttpRequest } from "@azure/functions";
import { RECORD_ID, type ListQuery } from "./catalog.js";
import { ProblemError } from "./problem.js";
import type { RestoreRequest } from "./restore.js";
import { checkKeyName, checkRecordId, describe, InvalidInput, parseListQuery, truncate } from "./validation.js";

/**
 * Who made an HTTP request: the principal App Service Authentication vouches for (it sets these
 * headers and strips callers' own when it is on), else "function key" — all the host checked.
 */
export function requestedBy(request: HttpRequest): string {
  const name = request.headers.get("x-ms-client-principal-name")?.trim();
  const id = request.headers.get("x-ms-client-principal-id")?.trim();
  if (!name && !id) return "function key";
  return [name, id ? `(${id})` : undefined].filter(Boolean).join(" ").slice(0, 200);
}

/** Restore requests are tiny; anything larger is not one. */
export const MAX_BODY_BYTES = 4096;

/** A record id from the route; malformed ids (quotes, OData, anything odd) are refused before any query. */
export function recordId(request: HttpRequest, what: "backup" | "restore"): string {
  return asProblem(() => checkRecordId(request.params.id ?? "", what));
}

/** The listing's query: hsm, status, top (1-100), continuationToken; unknown names are refused so a typo cannot widen a listing. */
export function listQuery(request: HttpRequest): ListQuery {
  const allowed = new Set(["hsm", "status", "verification", "top", "continuationToken", "code"]); // code: the function key
  const unknown = [...request.query.keys()].filter((k) => !allowed.has(k));
  if (unknown.length > 0) {
    throw new ProblemError(
      400,
      "Unknown query parameter",
      `Unknown query parameter(s): ${unknown.map((k) => truncate(k)).join(", ")}. Known: hsm, status, verification, top, continuationToken.`,
    );
  }
  const repeated = [...new Set(request.query.keys())].filter((k) => request.query.getAll(k).length > 1);
  if (repeated.length > 0) {
    throw new ProblemError(
      400,
      "Repeated query parameter",
      `Give each parameter once: ${repeated.map((k) => truncate(k)).join(", ")}.`,
    );
  }
  const value = (name: string) => request.query.get(name) ?? undefined;
  return asProblem(() =>
    parseListQuery(
      {
        hsm: value("hsm"),
        status: value("status"),
        verification: value("verification"),
        top: value("top"),
        continuationToken: value("continuationToken"),
      },
      (field) => field,
    ),
  );
}

/**
 * The body of POST /api/restores: {"backupId": "...", "keyName": "..."?, "confirm": "<hsm name>"?}.
 * Unknown fields are refused: a misspelt "keyName" must not turn a one-key restore into a full wipe
 * of the HSM (and a full restore needs "confirm" anyway: startRestore checks it against the backup).
 */
export async function restoreRequest(request: HttpRequest): Promise<RestoreRequest> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) throw tooLarge();
  const contentType = request.headers.get("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(contentType)) {
    throw new ProblemError(
      415,
      "Unsupported media type",
      `Send the restore request as application/json, not "${truncate(contentType) || "no content type"}".`,
    );
  }
  const text = await request.text();
  if (Buffer.byteLength(text) > MAX_BODY_BYTES) throw tooLarge();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ProblemError(400, "Malformed JSON", "The request body is not valid JSON.");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ProblemError(
      400,
      "Invalid restore request",
      'The body must be a JSON object: {"backupId": "...", "keyName": "..." (optional)}.',
    );
  }
  const fields = body as Record<string, unknown>;
  const unknown = Object.keys(fields).filter((k) => k !== "backupId" && k !== "keyName" && k !== "confirm");
  if (unknown.length > 0) {
    throw new ProblemError(
      400,
      "Invalid restore request",
      `Unknown field(s): ${unknown.map((k) => truncate(k)).join(", ")}. Known: backupId, keyName, confirm.`,
    );
  }
  const { backupId, keyName, confirm } = fields;
  if (confirm !== undefined && (typeof confirm !== "string" || confirm.length === 0 || confirm.length > 100)) {
    throw new ProblemError(400, "Invalid restore request", `confirm ${describe(confirm)} is not an HSM name.`);
  }
  const confirmed = confirm !== undefined ? { confirm } : {};
  if (backupId === undefined) throw new ProblemError(400, "Invalid restore request", "backupId is required.");
  if (typeof backupId !== "string" || !RECORD_ID.test(backupId)) {
    throw new ProblemError(
      400,
      "Invalid restore request",
      `backupId ${describe(backupId)} is not a backup id (13 digits, a hyphen, 8 hex digits).`,
    );
  }
  if (keyName === undefined) return { backupId, ...confirmed };
  return {
    backupId,
    keyName: asProblem(() => checkKeyName(keyName, (field) => field), "Invalid restore request"),
    ...confirmed,
  };
}

/** Runs a shared validation rule and answers its InvalidInput as a 400 problem. */
function asProblem<T>(check: () => T, title?: string): T {
  try {
    return check();
  } catch (error) {
    if (error instanceof InvalidInput) throw new ProblemError(400, title ?? error.title, `${error.message}.`);
    throw error;
  }
}

function tooLarge(): ProblemError {
  return new ProblemError(413, "Request too large", `A restore request is at most ${MAX_BODY_BYTES} bytes.`);
}
