/**
 * Loads the real recorded Managed HSM sessions in shared/recordings (three formats: .NET test-recorder
 * JSON, JS test-proxy JSON, JS nock scripts) into one shape, and replays them as an HTTP transport:
 * each request the client sends is matched against the next recorded one, and the recorded answer
 * is what the client gets back.
 */
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
import {
  createHttpHeaders,
  type HttpClient,
  type PipelineRequest,
  type PipelineResponse,
} from "@azure/core-rest-pipeline";

/** Beside the repository; MHSM_RECORDINGS_DIR overrides it where the tests run from a copy (Stryker's sandbox). */
export const RECORDINGS_DIR =
  process.env.MHSM_RECORDINGS_DIR ??
  join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "shared", "recordings");

export interface RecordedEntry {
  readonly method: string;
  readonly url: URL;
  readonly requestBody: unknown; // parsed JSON, or null when the request had none
  readonly hadAuthorization: boolean | undefined; // undefined: the format does not say
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>; // lower-case names
  readonly responseBody: string;
}

export function recordingFiles(): string[] {
  return readdirSync(RECORDINGS_DIR)
    .filter((f) => f.endsWith(".json") || f.endsWith(".js"))
    .sort();
}

export function loadRecording(file: string): RecordedEntry[] {
  const text = readFileSync(join(RECORDINGS_DIR, file), "utf8");
  return file.endsWith(".js") ? loadNock(text) : loadRecorderJson(text);
}

/** Backup/restore calls of the HSM only: key, token and discovery calls belong to other clients. */
export function backupRestoreEntries(entries: readonly RecordedEntry[]): RecordedEntry[] {
  return entries.filter((e) =>
    /^\/(backup|restore|prebackup|prerestore)(\/|$)|^\/keys\/[^/]+\/restore$/.test(e.url.pathname),
  );
}

function loadRecorderJson(text: string): RecordedEntry[] {
  const doc = JSON.parse(text) as { Entries: Array<Record<string, unknown>> };
  return doc.Entries.map((e) => {
    const requestHeaders = lowerKeys(e.RequestHeaders as Record<string, unknown>);
    return {
      method: String(e.RequestMethod),
      url: new URL(String(e.RequestUri)),
      requestBody: parseMaybeJson(e.RequestBody),
      hadAuthorization: "authorization" in requestHeaders,
      status: Number(e.StatusCode),
      headers: lowerKeys(e.ResponseHeaders as Record<string, unknown>),
      responseBody: bodyText(e.ResponseBody),
    };
  });
}

/** Runs a nock recording against a stand-in `nock` that writes down each interceptor. */
function loadNock(text: string): RecordedEntry[] {
  const entries: RecordedEntry[] = [];
  const nock = (origin: string) => {
    let pending: { method: string; path: string; body: unknown } | undefined;
    const scope = {
      post: (path: string, body?: unknown) => ((pending = { method: "POST", path, body }), scope),
      put: (path: string, body?: unknown) => ((pending = { method: "PUT", path, body }), scope),
      get: (path: string) => ((pending = { method: "GET", path, body: null }), scope),
      delete: (path: string) => ((pending = { method: "DELETE", path, body: null }), scope),
      query: () => scope,
      reply: (status: number, body: unknown, headers: string[] = []) => {
        if (!pending) throw new Error("reply() before a request in a nock recording");
        const map: Record<string, string> = {};
        for (let i = 0; i + 1 < headers.length; i += 2) map[headers[i]!.toLowerCase()] = String(headers[i + 1]);
        entries.push({
          method: pending.method,
          url: new URL(pending.path, origin.replace(/:443$/, "")),
          requestBody: typeof pending.body === "string" ? parseMaybeJson(pending.body) : (pending.body ?? null),
          hadAuthorization: undefined,
          status,
          headers: map,
          responseBody: bodyText(body),
        });
        pending = undefined;
        return scope;
      },
    };
    return scope;
  };
  const module = { exports: {} };
  vm.runInNewContext(text, {
    module,
    require: (name: string) => {
      if (name === "nock") return nock;
      throw new Error(`nock recording requires unexpected module ${name}`);
    },
  });
  return entries;
}

function lowerKeys(headers: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(headers ?? {}).map(([k, v]) => [k.toLowerCase(), Array.isArray(v) ? v.join(" ") : String(v)]),
  );
}

function parseMaybeJson(value: unknown): unknown {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value !== "string") return value;
  try {
    return JSON.parse(value);
  } catch {
    return value;
  }
}

function bodyText(body: unknown): string {
  if (body === null || body === undefined) return "";
  if (typeof body === "string") return body;
  if (Array.isArray(body) && body.length === 0) return "";
  return JSON.stringify(body);
}

export interface SentRequest {
  readonly method: string;
  readonly url: URL;
  readonly body: unknown;
  readonly authorization: string | undefined;
}

/**
 * An HttpClient that answers from a recording, in order. A request that does not match the next
 * recorded one fails the exchange with a description of both. `hostOverride` maps the recorded host
 * onto the one the client is pointed at.
 */
export class ReplayHttpClient implements HttpClient {
  readonly sent: SentRequest[] = [];
  private next = 0;

  constructor(private readonly entries: readonly RecordedEntry[]) {}

  get remaining(): number {
    return this.entries.length - this.next;
  }

  async sendRequest(request: PipelineRequest): Promise<PipelineResponse> {
    const url = new URL(request.url);
    const body = typeof request.body === "string" && request.body !== "" ? JSON.parse(request.body) : null;
    const authorization = request.headers.get("authorization");
    this.sent.push({ method: request.method, url, body, authorization });
    const expected = this.entries[this.next];
    if (!expected) throw new Error(`Replay: unexpected extra request ${request.method} ${url.pathname}`);
    const problems: string[] = [];
    if (request.method !== expected.method) problems.push(`method ${request.method} ≠ recorded ${expected.method}`);
    if (url.pathname !== expected.url.pathname)
      problems.push(`path ${url.pathname} ≠ recorded ${expected.url.pathname}`);
    const recordedVersion = expected.url.searchParams.get("api-version");
    if (recordedVersion !== null && url.searchParams.get("api-version") !== recordedVersion) {
      problems.push(`api-version ${url.searchParams.get("api-version")} ≠ recorded ${recordedVersion}`);
    }
    if (expected.status === 401) {
      // The challenge probe: no credentials and no body, so nothing can start before auth.
      if (authorization !== undefined) problems.push("probe carried an Authorization header");
      if (body !== null) problems.push("probe carried a body");
    } else {
      if (expected.hadAuthorization !== false && authorization === undefined) problems.push("no Authorization header");
      if (JSON.stringify(sortKeys(body)) !== JSON.stringify(sortKeys(expected.requestBody))) {
        problems.push(`body ${JSON.stringify(body)} ≠ recorded ${JSON.stringify(expected.requestBody)}`);
      }
    }
    if (problems.length > 0) {
      throw new Error(
        `Replay mismatch at recorded entry ${this.next} (${expected.method} ${expected.url.pathname}): ${problems.join("; ")}`,
      );
    }
    this.next++;
    return {
      request,
      status: expected.status,
      headers: createHttpHeaders(expected.headers),
      bodyAsText: expected.responseBody,
    };
  }
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, v]) => [k, sortKeys(v)]),
    );
  }
  return value;
}
