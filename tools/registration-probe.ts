/**
 * What a Functions worker does when it starts, in a fresh process: provide @azure/functions-core,
 * import every file that package.json `main` names, and (with --call) invoke one HTTP function
 * through the handler it registered. Prints one JSON line; used by the bundle smoke test and by
 * `npm run bench` for the cold-start figures.
 *
 *   node registration-probe.js <entry.js>... [--call <function> <path>]
 */
import { pathToFileURL } from "node:url";
import { installFunctionsCore } from "./functions-host.js";

export interface ProbeResult {
  /** From just before the first entry import to the last one resolved: the app's own registration cost. */
  readonly importMs: number;
  /** performance.now() when registration ended: node's own start-up included. */
  readonly sinceProcessStartMs: number;
  readonly registrations: Array<{ name: string; trigger: string }>;
  readonly call?: { name: string; status: number; ms: number; sinceProcessStartMs: number; body: string };
}

async function probe(argv: string[]): Promise<ProbeResult> {
  const callAt = argv.indexOf("--call");
  const entries = callAt >= 0 ? argv.slice(0, callAt) : argv;
  const core = installFunctionsCore();
  const start = performance.now();
  for (const entry of entries) await import(pathToFileURL(entry).href);
  const registered = performance.now();
  const result: ProbeResult = {
    importMs: registered - start,
    sinceProcessStartMs: registered,
    registrations: core.registrations.map((r) => ({ name: r.name, trigger: r.trigger })),
  };
  if (callAt < 0) return result;
  const [name, path] = [argv[callAt + 1], argv[callAt + 2] ?? "/"];
  const registration = core.registrations.find((r) => r.name === name);
  if (!registration) throw new Error(`No function ${name} was registered; registered: ${core.registrations.map((r) => r.name).join(", ")}`);
  // The shape the worker hands an HTTP handler (HttpRequest, InvocationContext), with no body.
  const url = new URL(path, "http://localhost:7071");
  const request = { method: "GET", url: url.href, query: url.searchParams, params: {}, headers: new Headers(), text: async () => "" };
  const lines: string[] = [];
  const log = (...args: unknown[]) => { lines.push(args.map(String).join(" ")); };
  const context = { invocationId: "probe", functionName: name, log, trace: log, debug: log, info: log, warn: log, error: log };
  const callStart = performance.now();
  const response = await registration.handler(request, context) as { status?: number; jsonBody?: unknown; body?: unknown };
  const end = performance.now();
  const body = response.jsonBody !== undefined ? JSON.stringify(response.jsonBody) : String(response.body ?? "");
  return { ...result, call: { name: name!, status: response.status ?? 200, ms: end - callStart, sinceProcessStartMs: end, body: `${body}${lines.length ? `\n${lines.join("\n")}` : ""}`.slice(0, 2000) } };
}

probe(process.argv.slice(2)).then(
  (result) => {
    console.log(JSON.stringify(result));
    process.exit(0);
  },
  (error: unknown) => {
    console.error(error instanceof Error ? error.stack ?? error.message : String(error));
    process.exit(1);
  },
);
