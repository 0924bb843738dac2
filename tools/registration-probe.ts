/**
 * What a Functions worker does when it starts, in a fresh process: provide @azure/functions-core,
 * import every file that package.json `main` names, and optionally invoke one function through the
 * handler it registered. Prints one JSON line; used by the bundle smoke test and `npm run bench`.
 *
 *   node registration-probe.js <entry.js>... [--call <httpFunction> <path> | --timer <timerFunction>] [--trace-http]
 *
 * --trace-http lists every outgoing HTTP request of the process (seen at Node's http client through
 * its diagnostics channel; nothing in the app is wrapped).
 */
import { spawn } from "node:child_process";
import { subscribe } from "node:diagnostics_channel";
import { realpathSync } from "node:fs";
import type { ClientRequest } from "node:http";
import { fileURLToPath, pathToFileURL } from "node:url";
import { installFunctionsCore } from "./functions-host.js";

export interface TracedRequest {
  readonly method: string;
  /** host:port as sent in the Host header. */
  readonly host: string;
  readonly path: string;
  readonly authorized: boolean;
  /** performance.now() in the probe's process. */
  readonly at: number;
}

export interface ProbeResult {
  /** From just before the first entry import to the last one resolved: the app's own registration cost. */
  readonly importMs: number;
  /** performance.now() when registration ended: node's own start-up included. */
  readonly sinceProcessStartMs: number;
  readonly registrations: Array<{ name: string; trigger: string }>;
  readonly call?: { name: string; status: number; ms: number; sinceProcessStartMs: number; body: string };
  readonly requests?: TracedRequest[];
  /** Peak resident set size of the probe process, MiB. */
  readonly maxRssMiB: number;
}

async function probe(argv: string[]): Promise<ProbeResult> {
  const requests: TracedRequest[] | undefined = argv.includes("--trace-http") ? [] : undefined;
  if (requests) {
    subscribe("http.client.request.start", (message) => {
      const request = (message as { request: ClientRequest }).request;
      requests.push({
        method: request.method,
        host: String(request.getHeader("host") ?? request.host),
        path: request.path,
        authorized: request.getHeader("authorization") !== undefined,
        at: performance.now(),
      });
    });
  }
  const args = argv.filter((a) => a !== "--trace-http");
  const actionAt = args.findIndex((a) => a === "--call" || a === "--timer");
  const entries = actionAt >= 0 ? args.slice(0, actionAt) : args;
  const core = installFunctionsCore();
  const start = performance.now();
  for (const entry of entries) await import(pathToFileURL(entry).href);
  const registered = performance.now();
  const base = {
    importMs: registered - start,
    sinceProcessStartMs: registered,
    registrations: core.registrations.map((r) => ({ name: r.name, trigger: r.trigger })),
  };
  if (actionAt < 0) return { ...base, maxRssMiB: process.resourceUsage().maxRSS / 1024 };
  const name = args[actionAt + 1];
  const registration = core.registrations.find((r) => r.name === name);
  if (!registration)
    throw new Error(
      `No function ${name} was registered; registered: ${core.registrations.map((r) => r.name).join(", ")}`,
    );
  const lines: string[] = [];
  const log = (...a: unknown[]) => {
    lines.push(a.map(String).join(" "));
  };
  const context = {
    invocationId: "probe",
    functionName: name,
    log,
    trace: log,
    debug: log,
    info: log,
    warn: log,
    error: log,
  };
  // The shapes the worker hands a handler (HttpRequest / Timer, InvocationContext).
  const input =
    args[actionAt] === "--call"
      ? (() => {
          const url = new URL(args[actionAt + 2] ?? "/", "http://localhost:7071");
          return {
            method: "GET",
            url: url.href,
            query: url.searchParams,
            params: {},
            headers: new Headers(),
            text: async () => "",
          };
        })()
      : {
          isPastDue: false,
          schedule: { adjustForDST: false },
          scheduleStatus: { last: "", next: "", lastUpdated: "" },
        };
  const callStart = performance.now();
  let status: number;
  let body: string;
  try {
    const response = (await registration.handler(input, context)) as
      { status?: number; jsonBody?: unknown; body?: unknown } | undefined;
    status = response?.status ?? 200;
    body = response?.jsonBody !== undefined ? JSON.stringify(response.jsonBody) : String(response?.body ?? "");
  } catch (error) {
    // A timer function reports failure by throwing, as the host sees it.
    status = 500;
    body = error instanceof Error ? error.message : String(error);
  }
  const end = performance.now();
  return {
    ...base,
    call: {
      name: name!,
      status,
      ms: end - callStart,
      sinceProcessStartMs: end,
      body: `${body}${lines.length ? `\n${lines.join("\n")}` : ""}`.slice(0, 4000),
    },
    ...(requests ? { requests } : {}),
    maxRssMiB: process.resourceUsage().maxRSS / 1024,
  };
}

/** Runs the probe (its built .js) in a fresh node process and resolves with what it printed. */
export function runProbe(probeJs: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<ProbeResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [probeJs, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) reject(new Error(`registration probe exited ${code}: ${stderr}`));
      else resolve(JSON.parse(stdout.trim().split("\n").at(-1)!) as ProbeResult);
    });
  });
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  probe(process.argv.slice(2)).then(
    (result) => {
      console.log(JSON.stringify(result));
      process.exit(0);
    },
    (error: unknown) => {
      console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
      process.exit(1);
    },
  );
}
