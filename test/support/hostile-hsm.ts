/**
 * A scripted Managed HSM stand-in for answers the real emulator (tools/hsm-emulator) cannot give:
 * impossible job ids and times, foreign folders, redirects, HTML, day-long Retry-After, errors that
 * echo a SAS. It speaks the Key Vault challenge like the real service, records every request, and
 * answers each route from a script; unscripted routes get well-formed answers (the defaults), so a
 * test scripts only the step it is about. Defaults: every start call 202 InProgress with
 * Azure-AsyncOperation and Retry-After 0; every status poll Succeeded at once, a backup's folder
 * `<storageResourceUri>/mhsm-<name>-<16 digits>` (none for a pre-backup), for a job id it never gave
 * out a folder under https://hostilestorage.blob.core.windows.net/backups.
 *
 * The app runs the HSM's pre-backup check before every backup, and it polls the same
 * `/backup/{jobId}/pending` route. So that a script for that route is about the backup job, a status
 * read of a pre-backup job the default `/prebackup` answer started is looked up under the path
 * `/prebackup/{jobId}/pending` instead (default: Succeeded at once); a test scripts that path to make
 * the check fail or hang. A test that scripts `/prebackup` itself owns its jobs' status reads.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { challengeHeader } from "../../tools/hsm-emulator/auth.js";
import { listenOnLoopback, readBody } from "./loopback.js";

export type JobFamily = "backup" | "restore";

export interface HostileRequest {
  readonly method: string;
  /** Path without the query. */
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  /** Lower-case names; `authorization` is always there, as "present" or "absent". */
  readonly headers: Readonly<Record<string, string>>;
  /** Parsed JSON, the raw text if not JSON, or null when empty. */
  readonly body: unknown;
  /** Scheme + host the client used, for URLs that point back at this server. */
  readonly origin: string;
  /** True when it was answered with the challenge (it carried no bearer token). */
  challenged: boolean;
  /** What it got: a status, "hang" or "lostResponse"; 0 while it is being answered. */
  answered: number | "hang" | "lostResponse";
}

export interface ScriptedReply {
  readonly status: number;
  readonly headers?: Readonly<Record<string, string>>;
  /** A string is sent as is; anything else as JSON. Absent: an empty body. */
  readonly body?: unknown;
}

/** A reply, a reply computed from the request (the defaults are these), or no reply at all. */
export type Answer =
  ScriptedReply | "hang" | "lostResponse" | ((request: HostileRequest) => ScriptedReply | "hang" | "lostResponse");

export interface HostileHsmOptions {
  /** Name in default folder names (`mhsm-<name>-...`); default "hostilehsm". */
  readonly name?: string;
  /** Tenant in the challenge; default 00000000-0000-0000-0000-000000000000. */
  readonly tenantId?: string;
  /** Answer requests without a bearer token with the challenge; default true. */
  readonly challenge?: boolean;
}

export interface HostileHsm {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly name: string;
  /** Every request, the challenged ones included, in arrival order. */
  readonly requests: readonly HostileRequest[];
  /**
   * Scripts a route: the n-th matching authenticated request gets answers[n]; the last answer repeats.
   * The newest script for a route wins over older ones and over the defaults. A string path matches exactly.
   */
  on(method: string, path: RegExp | string, answers: Answer | readonly Answer[]): void;
  /** Requests other than challenge probes, optionally of one method and path. */
  authenticated(method?: string, path?: RegExp): HostileRequest[];
  /** Closes the listener and every open socket, hanging ones included. */
  stop(): Promise<void>;
}

/** 32 lower-case hex characters, like a real job id. */
export function newJobId(): string {
  return randomBytes(16).toString("hex");
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** `mhsm-<name>-<yyyyMMddHHmmss><2 digits>`, as real folders are named (managed-hsm-backup-api.md §7). */
export function folderName(hsmName: string, at = new Date()): string {
  const digits = String(randomBytes(1)[0]! % 100).padStart(2, "0");
  return `mhsm-${hsmName}-${at.toISOString().replace(/[-:T]/g, "").slice(0, 14)}${digits}`;
}

/** A FullBackupOperation (backup) or RestoreOperation (restore) body, InProgress unless overridden. */
export function operationBody(
  family: JobFamily,
  overrides: Readonly<Record<string, unknown>> = {},
): Record<string, unknown> {
  return {
    status: "InProgress",
    statusDetails: null,
    error: null,
    startTime: nowSeconds(),
    endTime: null,
    jobId: newJobId(),
    ...(family === "backup" ? { azureStorageBlobContainerUri: null } : {}),
    ...overrides,
  };
}

/** A Key Vault error answer: `{"error":{"code","message"}}`. */
export function keyVaultError(
  status: number,
  code: string,
  message: string,
  headers: Readonly<Record<string, string>> = {},
): ScriptedReply {
  return {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
    body: { error: { code, message } },
  };
}

export interface StartedOptions {
  /** Azure-AsyncOperation: default `<origin>/<family>/<jobId>/pending`; null leaves it out. */
  readonly asyncOperation?: string | null;
  /** Retry-After; default "0". */
  readonly retryAfter?: string;
  readonly status?: number;
  /** Replaces the JSON body, e.g. with HTML. */
  readonly rawBody?: string;
  readonly contentType?: string;
}

/** A start call's answer: 202, the operation body (overrides applied) and Azure-AsyncOperation. */
export function started(
  family: JobFamily,
  overrides: Readonly<Record<string, unknown>> = {},
  options: StartedOptions = {},
): Answer {
  return (request) => {
    const body = operationBody(family, overrides);
    const asyncOperation =
      options.asyncOperation === undefined
        ? `${request.origin}/${family}/${String(body.jobId)}/pending`
        : options.asyncOperation;
    return {
      status: options.status ?? 202,
      headers: {
        "content-type": options.contentType ?? "application/json; charset=utf-8",
        "retry-after": options.retryAfter ?? "0",
        ...(asyncOperation !== null ? { "azure-asyncoperation": asyncOperation } : {}),
      },
      body: options.rawBody ?? body,
    };
  };
}

type Overrides = Readonly<Record<string, unknown>> | ((request: HostileRequest) => Readonly<Record<string, unknown>>);

/**
 * A status poll's answer: 200 and the operation body for the job id in the request path, with the
 * overrides applied; a function override is evaluated per request (a fresh endTime, a folder name).
 */
export function jobStatus(
  family: JobFamily,
  overrides: Overrides = {},
  headers: Readonly<Record<string, string>> = {},
): Answer {
  return (request) => {
    const jobId = /^\/(?:backup|restore)\/([^/]+)\/pending$/.exec(request.path)?.[1] ?? newJobId();
    const base = operationBody(family, { jobId, startTime: nowSeconds() - 1 });
    const extra = typeof overrides === "function" ? overrides(request) : overrides;
    return {
      status: 200,
      headers: { "content-type": "application/json; charset=utf-8", ...headers },
      body: { ...base, ...extra },
    };
  };
}

/** Settles an answer for one request. */
export function resolveAnswer(answer: Answer, request: HostileRequest): ScriptedReply | "hang" | "lostResponse" {
  return typeof answer === "function" ? answer(request) : answer;
}

/** Retry-After values no client should sleep on. */
export const RETRY_AFTER_DAY = "86400";
export const RETRY_AFTER_FAR_DATE = "Fri, 31 Dec 9999 23:59:59 GMT";

/** The forms in which a service error text has been seen to carry a SAS signature. */
export type SasEchoForm = "urlEncoded" | "doubleEncoded" | "json" | "header";

/** An error message that echoes `signature` in the given form, as a careless service might. */
export function sasEcho(signature: string, form: SasEchoForm): string {
  const once = encodeURIComponent(signature);
  switch (form) {
    case "urlEncoded":
      return `Failed to access https%3A%2F%2Fvictim.blob.core.windows.net%2Fbackups%3Fsv%3D2025-11-05%26sr%3Dc%26sp%3Dcrdw%26sig%3D${once}`;
    case "doubleEncoded":
      return `Failed to access https%253A%252F%252Fvictim.blob.core.windows.net%252Fbackups%253Fsv%253D2025-11-05%2526sr%253Dc%2526sig%253D${encodeURIComponent(once)}`;
    case "json":
      return `Storage rejected the request: {"sv":"2025-11-05","sr":"c","sig":"${signature}"}`;
    case "header":
      return `Storage rejected the request. signature: ${signature}`;
  }
}

/** Ready-made hostile answers; each is one step a test puts into a script. */
export const hostile = {
  /** Start answered with job id "job-1" (not 32 hex), the polling header following it. */
  badJobIdStart: (family: JobFamily): Answer => started(family, { jobId: "job-1" }),
  /** Start answered with a good Azure-AsyncOperation header but an HTML body. */
  htmlStart:
    (family: JobFamily): Answer =>
    (request) =>
      resolveAnswer(
        started(
          family,
          {},
          {
            asyncOperation: `${request.origin}/${family}/${newJobId()}/pending`,
            rawBody: "<html><body><h1>202 Accepted</h1></body></html>",
            contentType: "text/html",
          },
        ),
        request,
      ),
  /** Succeeded with endTime 1e15 (Unix seconds, about 31 million years ahead). */
  farFutureEnd: (family: JobFamily): Answer =>
    jobStatus(family, () => ({
      status: "Succeeded",
      endTime: 1e15,
      ...(family === "backup"
        ? {
            azureStorageBlobContainerUri: `https://hostilestorage.blob.core.windows.net/backups/${folderName("hostilehsm")}`,
          }
        : {}),
    })),
  /** A status no version of the spec lists. */
  timedOut: (family: JobFamily): Answer => jobStatus(family, () => ({ status: "TimedOut", endTime: nowSeconds() })),
  /** Backup Succeeded, but no folder. */
  succeededWithoutFolder: (): Answer =>
    jobStatus("backup", () => ({ status: "Succeeded", endTime: nowSeconds(), azureStorageBlobContainerUri: null })),
  /** Backup Succeeded into someone else's storage account. */
  foreignFolder: (): Answer =>
    jobStatus("backup", () => ({
      status: "Succeeded",
      endTime: nowSeconds(),
      azureStorageBlobContainerUri: `https://attacker.blob.core.windows.net/loot/${folderName("hostilehsm")}`,
    })),
  /** Status of another job than the one polled. */
  otherJob: (family: JobFamily, status = "Succeeded"): Answer =>
    jobStatus(family, () => ({ jobId: newJobId(), status, endTime: nowSeconds() })),
  /** A redirect to another host. */
  redirect: (location = "https://attacker.example/backup"): Answer => ({ status: 302, headers: { location } }),
  /** InProgress, asking the client to come back in a day (or in the year 9999 with `RETRY_AFTER_FAR_DATE`). */
  comeBackLater: (family: JobFamily, retryAfter: string = RETRY_AFTER_DAY): Answer =>
    jobStatus(family, {}, { "retry-after": retryAfter }),
  /** A 400 on the start call whose message echoes the SAS signature. */
  sasEchoError: (signature: string, form: SasEchoForm): Answer =>
    keyVaultError(400, "InvalidParameter", sasEcho(signature, form)),
  /** A Failed job whose error message echoes the SAS signature. */
  sasEchoFailed: (family: JobFamily, signature: string, form: SasEchoForm): Answer =>
    jobStatus(family, () => ({
      status: "Failed",
      endTime: nowSeconds(),
      error: { code: "StorageAccessFailed", message: sasEcho(signature, form), innererror: null },
    })),
};

function storageUriOf(body: unknown): string {
  const direct = (body as { storageResourceUri?: unknown } | null)?.storageResourceUri;
  const nested = (body as { sasTokenParameters?: { storageResourceUri?: unknown } } | null)?.sasTokenParameters
    ?.storageResourceUri;
  const uri =
    typeof direct === "string"
      ? direct
      : typeof nested === "string"
        ? nested
        : "https://hostilestorage.blob.core.windows.net/backups";
  return uri.replace(/\/+$/, "");
}

interface Route {
  readonly method: string;
  readonly path: RegExp | string;
  readonly answers: readonly Answer[];
  next: number;
}

function parseBody(text: string): unknown {
  if (!text) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/** Starts the stand-in on a free 127.0.0.1 port. */
export async function startHostileHsm(options: HostileHsmOptions = {}): Promise<HostileHsm> {
  const name = options.name ?? "hostilehsm";
  const requests: HostileRequest[] = [];
  const routes: Route[] = [];
  // Remembered by the default start answers so the default status answer can name a folder under
  // the storage URI it was given; null for a pre-backup, which never reports one.
  const jobStorage = new Map<string, string | null>();

  const rememberJob =
    (answer: Answer): Answer =>
    (request) => {
      const reply = resolveAnswer(answer, request);
      if (typeof reply === "object" && typeof reply.body === "object" && reply.body !== null) {
        const jobId = (reply.body as { jobId?: unknown }).jobId;
        if (typeof jobId === "string")
          jobStorage.set(jobId, request.path === "/prebackup" ? null : storageUriOf(request.body));
      }
      return reply;
    };
  const defaults: Route[] = [
    { method: "POST", path: /^\/(pre)?backup$/, answers: [rememberJob(started("backup"))], next: 0 },
    { method: "PUT", path: /^\/(pre)?restore$/, answers: [started("restore")], next: 0 },
    { method: "PUT", path: /^\/keys\/[^/]+\/restore$/, answers: [started("restore")], next: 0 },
    {
      method: "GET",
      path: /^\/backup\/[^/]+\/pending$/,
      next: 0,
      answers: [
        jobStatus("backup", (request) => {
          const storage = jobStorage.get(request.path.split("/")[2]!);
          return {
            status: "Succeeded",
            endTime: nowSeconds(),
            azureStorageBlobContainerUri:
              storage === null ? null : `${storage ?? storageUriOf(null)}/${folderName(name)}`,
          };
        }),
      ],
    },
    {
      method: "GET",
      path: /^\/prebackup\/[^/]+\/pending$/,
      next: 0,
      answers: [
        jobStatus("backup", () => ({ status: "Succeeded", endTime: nowSeconds(), azureStorageBlobContainerUri: null })),
      ],
    },
    {
      method: "GET",
      path: /^\/restore\/[^/]+\/pending$/,
      answers: [jobStatus("restore", () => ({ status: "Succeeded", endTime: nowSeconds() }))],
      next: 0,
    },
  ];

  const find = (method: string, path: string): Route | undefined =>
    [...routes]
      .reverse()
      .concat(defaults)
      .find(
        (r) =>
          r.method.toUpperCase() === method.toUpperCase() &&
          (typeof r.path === "string" ? r.path === path : r.path.test(path)),
      );

  const respond = (res: ServerResponse, reply: ScriptedReply) => {
    const text =
      reply.body === undefined ? "" : typeof reply.body === "string" ? reply.body : JSON.stringify(reply.body);
    const headers: Record<string, string> = { ...reply.headers };
    if (text && !Object.keys(headers).some((h) => h.toLowerCase() === "content-type"))
      headers["content-type"] = "application/json; charset=utf-8";
    res.writeHead(reply.status, { ...headers, "content-length": String(Buffer.byteLength(text)) }).end(text);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const raw = req.url ?? "/";
    const q = raw.indexOf("?");
    const headers: Record<string, string> = {};
    for (const [key, value] of Object.entries(req.headers))
      if (value !== undefined) headers[key] = Array.isArray(value) ? value.join(", ") : value;
    const bearer = /^Bearer\s+\S+/i.test(req.headers.authorization ?? "");
    headers.authorization = req.headers.authorization !== undefined ? "present" : "absent";
    const request: HostileRequest = {
      method: req.method ?? "GET",
      path: q < 0 ? raw : raw.slice(0, q),
      query: Object.fromEntries(new URLSearchParams(q < 0 ? "" : raw.slice(q + 1))),
      headers,
      body: parseBody((await readBody(req)).toString("utf8")),
      origin: `http://${req.headers.host ?? "127.0.0.1"}`,
      challenged: false,
      answered: 0,
    };
    requests.push(request);
    if (!bearer && options.challenge !== false) {
      request.challenged = true;
      request.answered = 401;
      respond(res, {
        status: 401,
        headers: {
          "content-type": "application/json; charset=utf-8",
          "www-authenticate": challengeHeader(options.tenantId ?? "00000000-0000-0000-0000-000000000000"),
        },
      });
      return;
    }
    const polled = request.method === "GET" ? /^\/backup\/([^/]+)\/pending$/.exec(request.path)?.[1] : undefined;
    const preBackup = polled !== undefined && jobStorage.get(polled) === null;
    const route = find(request.method, preBackup ? `/prebackup/${polled}/pending` : request.path);
    const scripted = route
      ? route.answers[Math.min(route.next++, route.answers.length - 1)]!
      : keyVaultError(404, "NotFound", `The hostile HSM has no route for ${request.method} ${request.path}`);
    const reply = resolveAnswer(scripted, request);
    if (reply === "hang") {
      request.answered = "hang";
      return;
    }
    if (reply === "lostResponse") {
      request.answered = "lostResponse";
      req.socket.destroy();
      return;
    }
    request.answered = reply.status;
    respond(res, reply);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (res.headersSent) return void res.destroy();
      respond(res, keyVaultError(500, "HostileHsmFailed", (error as Error).message));
    });
  });
  const listening = await listenOnLoopback(server);

  return {
    url: listening.origin,
    name,
    requests,
    on(method, path, answers) {
      const list: readonly Answer[] = Array.isArray(answers) ? answers : [answers as Answer];
      if (list.length === 0) throw new Error(`A script for ${method} ${String(path)} needs at least one answer`);
      routes.push({ method, path, answers: list, next: 0 });
    },
    authenticated: (method, path) =>
      requests.filter(
        (r) =>
          !r.challenged &&
          (method === undefined || r.method === method.toUpperCase()) &&
          (path === undefined || path.test(r.path)),
      ),
    stop: () => listening.close(),
  };
}
