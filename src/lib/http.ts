/**
 * Reading HTTP requests: record ids, listing queries, restore and backup bodies, checked before anything is
 * asked of storage or an HSM. Handlers import it on first use (it pulls in the catalog); the route
 * wrapper and JSON answers live in handler.ts, which registration loads.
 */
import type { HttpRequest } from "@azure/functions";
import { RECORD_ID, type ListQuery } from "./catalog.js";
import { ProblemError } from "./problem.js";
import type { RestoreRequest } from "./restore.js";
import {
  checkConfiguredHsm,
  checkKeyName,
  checkRecordId,
  describe,
  InvalidInput,
  parseListQuery,
  truncate,
} from "./validation.js";

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

/** Restore and backup requests are tiny; anything larger is not one. */
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
  const fields = await jsonObject(request, "restore", '{"backupId": "...", "keyName": "..." (optional)}');
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

/**
 * The body of POST /api/backups: empty, {} (every configured HSM) or {"hsm": "<name>"} (that one).
 * An unknown name is refused naming the configured ones, before anything is recorded or started.
 */
export async function backupRequest(request: HttpRequest, configured: readonly string[]): Promise<{ hsm?: string }> {
  const fields = await jsonObject(request, "backup", '{"hsm": "<name>"}, or {} or no body for every HSM', {
    allowEmpty: true,
  });
  const unknown = Object.keys(fields).filter((k) => k !== "hsm");
  if (unknown.length > 0) {
    throw new ProblemError(
      400,
      "Invalid backup request",
      `Unknown field(s): ${unknown.map((k) => truncate(k)).join(", ")}. Known: hsm.`,
    );
  }
  if (fields.hsm === undefined) return {};
  return { hsm: asProblem(() => checkConfiguredHsm(fields.hsm, configured, (field) => field)) };
}

/**
 * A small JSON object body: declared and actual size, media type, syntax and shape checked, each
 * refusal naming what to send. allowEmpty: no body at all (or only whitespace) reads as {}.
 */
async function jsonObject(
  request: HttpRequest,
  what: "backup" | "restore",
  shape: string,
  { allowEmpty = false } = {},
): Promise<Record<string, unknown>> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) throw tooLarge(what);
  const text = await request.text();
  if (allowEmpty && text.trim() === "") return {};
  const contentType = request.headers.get("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(contentType)) {
    throw new ProblemError(
      415,
      "Unsupported media type",
      `Send the ${what} request as application/json, not "${truncate(contentType) || "no content type"}".`,
    );
  }
  if (Buffer.byteLength(text) > MAX_BODY_BYTES) throw tooLarge(what);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ProblemError(400, "Malformed JSON", "The request body is not valid JSON.");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ProblemError(400, `Invalid ${what} request`, `The body must be a JSON object: ${shape}.`);
  }
  return body as Record<string, unknown>;
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

function tooLarge(what: "backup" | "restore"): ProblemError {
  return new ProblemError(413, "Request too large", `A ${what} request is at most ${MAX_BODY_BYTES} bytes.`);
}
