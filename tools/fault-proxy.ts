/**
 * A small fault-injecting reverse proxy for tests and the soak (tools/soak.ts): it sits on 127.0.0.1
 * in front of one real target (Azurite's table endpoint, the HSM emulator, any plain HTTP server)
 * and, per request, forwards faithfully or does one of the things networks and services do on a bad
 * night. Faults are queued one-shot (`inject`) or drawn at random from a seeded PRNG (`chaos`), so a
 * failing run can be replayed.
 */
import {
  createServer,
  request as httpRequest,
  Agent,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type ServerResponse,
} from "node:http";
import { listenOnLoopback, readBody } from "./loopback.js";

export type FaultKind = "status" | "lostResponse" | "hang" | "refuse" | "delay" | "rewrite";

/** The target's answer as `rewrite` sees it: header names lower-case, the body as text. */
export interface ProxiedAnswer {
  status: number;
  headers: Record<string, string>;
  bodyText: string;
}

export type Fault =
  /** Answered by the proxy; the target never sees the request. */
  | {
      readonly kind: "status";
      readonly status: number;
      readonly retryAfter?: string;
      readonly body?: string;
      readonly contentType?: string;
      readonly headers?: Readonly<Record<string, string>>;
    }
  /** Forwarded, so the target acts; then the client's socket is destroyed without an answer. */
  | { readonly kind: "lostResponse" }
  /** Not forwarded and never answered; with `ms`, the connection is dropped after that long (an idle timeout). */
  | { readonly kind: "hang"; readonly ms?: number }
  /** The client's socket is destroyed at once; nothing is forwarded. */
  | { readonly kind: "refuse" }
  /** Forwarded after `ms`. */
  | { readonly kind: "delay"; readonly ms: number }
  /** Forwarded; the answer is rewritten before the client sees it (hostile or malformed answers). */
  | { readonly kind: "rewrite"; readonly transform: (answer: ProxiedAnswer) => ProxiedAnswer | Promise<ProxiedAnswer> };

export interface FaultMatch {
  /** Case-insensitive; default any. */
  readonly method?: string;
  /** Tested against the request path without its query; default any. */
  readonly path?: RegExp;
}

export interface InjectOptions extends FaultMatch {
  /** How many matching requests get the fault; default 1. */
  readonly times?: number;
  /**
   * How many matching requests pass untouched first (later queued faults may still take them); default 0.
   * E.g. skip 1 on a Key Vault call lets the challenge probe through and hits the authenticated retry.
   */
  readonly skip?: number;
}

/** Faults `chaos` can draw; `rewrite` needs a transform, so it is only injected. */
export type ChaosKind = Exclude<FaultKind, "rewrite">;

export interface ChaosOptions extends FaultMatch {
  /** Status of a drawn `status` fault; default 503. */
  readonly status?: number;
  /** Length of a drawn `delay`; default 50 ms. */
  readonly delayMs?: number;
  /** Length of a drawn `hang` before the connection drops; default: until the client gives up. */
  readonly hangMs?: number;
}

export interface ProxyLogEntry {
  readonly method: string;
  /** Path without the query. */
  readonly path: string;
  readonly query: string;
  /** The fault applied, if any. */
  fault?: FaultKind;
  /** The status the client received; absent when it received none. */
  status?: number;
}

export interface FaultProxy {
  /** Proxy origin + the target's path prefix, e.g. http://127.0.0.1:PORT/devstoreaccount1 */
  readonly url: string;
  /** Proxy origin alone. */
  readonly origin: string;
  /** Every request in arrival order. */
  readonly log: readonly ProxyLogEntry[];
  /** Queues a one-shot fault; queued faults are matched in the order they were injected, before chaos. */
  inject(fault: Fault, options?: InjectOptions): void;
  /**
   * Gives each matching request (not taken by a queued fault) fault X with probability rates[X]; one
   * draw per request from a PRNG seeded by `seed`, so the same request sequence meets the same faults.
   * Replaces any earlier chaos setting.
   * @throws RangeError when a rate is outside [0, 1] or the rates add up to more than 1.
   */
  chaos(rates: Partial<Record<ChaosKind, number>>, options?: ChaosOptions): void;
  /** Drops queued faults and chaos; requests are forwarded untouched from now on. */
  clear(): void;
  /** Counts: `requests`, `forwarded`, `upstreamErrors` and one per fault kind applied. */
  stats(): Record<string, number>;
  /** Closes the listener, destroys every open socket (hanging ones included) and cancels timers. */
  stop(): Promise<void>;
}

export interface FaultProxyOptions {
  /** PRNG seed for `chaos`; default 1. */
  readonly seed?: number;
  /**
   * Send the target's host in the Host header instead of the client's. Default false: a target that
   * builds URLs from Host (the HSM emulator's Azure-AsyncOperation) then points clients back through
   * the proxy. Azurite signs the path, not the host, so either works there.
   */
  readonly rewriteHost?: boolean;
  /** Port on 127.0.0.1; default a free one. */
  readonly port?: number;
}

// RFC 9110 §7.6.1 connection-specific fields, plus any named in Connection.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

function endToEnd(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = String(headers.connection ?? "")
    .split(",")
    .map((h) => h.trim().toLowerCase())
    .filter(Boolean);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name) && !named.includes(name)) out[name] = value;
  }
  return out;
}

/** mulberry32: tiny, fast and good enough to spread faults; reproducible from its seed. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function matches(match: FaultMatch, method: string, path: string): boolean {
  return (
    (match.method === undefined || match.method.toUpperCase() === method.toUpperCase()) &&
    (match.path === undefined || match.path.test(path))
  );
}

/**
 * Starts the proxy on a free 127.0.0.1 port in front of `target` (an http:// URL; its path becomes
 * the prefix of `url`, requests keep their path unchanged).
 */
export async function startFaultProxy(target: string, options: FaultProxyOptions = {}): Promise<FaultProxy> {
  const targetUrl = new URL(target);
  if (targetUrl.protocol !== "http:") throw new Error(`The fault proxy forwards plain http only, not "${target}"`);
  const prefix = targetUrl.pathname.replace(/\/+$/, "");
  const upstreamAgent = new Agent({ keepAlive: false });
  const timers = new Set<NodeJS.Timeout>();
  const upstreams = new Set<ReturnType<typeof httpRequest>>();
  const log: ProxyLogEntry[] = [];
  const counts: Record<string, number> = { requests: 0, forwarded: 0, upstreamErrors: 0 };
  const queue: { fault: Fault; match: FaultMatch; skip: number; remaining: number }[] = [];
  let chaosSetting: { cumulative: { kind: ChaosKind; upTo: number }[]; options: ChaosOptions } | undefined;
  const random = prng(options.seed ?? 1);
  let stopped = false;

  const after = (ms: number, run: () => void) => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      run();
    }, ms);
    timers.add(timer);
  };

  const pick = (method: string, path: string): Fault | undefined => {
    const queued = queue.findIndex((q) => matches(q.match, method, path) && q.skip-- <= 0);
    if (queued >= 0) {
      const entry = queue[queued]!;
      if (--entry.remaining <= 0) queue.splice(queued, 1);
      return entry.fault;
    }
    if (!chaosSetting || !matches(chaosSetting.options, method, path)) return undefined;
    const draw = random();
    const kind = chaosSetting.cumulative.find((c) => draw < c.upTo)?.kind;
    const o = chaosSetting.options;
    switch (kind) {
      case undefined:
        return undefined;
      case "status":
        return { kind, status: o.status ?? 503 };
      case "delay":
        return { kind, ms: o.delayMs ?? 50 };
      case "hang":
        return o.hangMs !== undefined ? { kind, ms: o.hangMs } : { kind };
      default:
        return { kind };
    }
  };

  /** Sends the request on; resolves with the target's response, body unread. */
  const forward = (req: IncomingMessage, body: Buffer, rewriting: boolean): Promise<IncomingMessage> => {
    counts.forwarded!++;
    const headers = endToEnd(req.headers);
    if (options.rewriteHost) headers.host = targetUrl.host;
    // A rewrite needs readable text, so the target must not compress it.
    if (rewriting) delete headers["accept-encoding"];
    if (req.headers["transfer-encoding"] !== undefined) headers["content-length"] = String(body.length);
    return new Promise((resolve, reject) => {
      const upstream = httpRequest(
        {
          host: targetUrl.hostname,
          port: targetUrl.port || 80,
          method: req.method,
          path: req.url,
          headers,
          agent: upstreamAgent,
        },
        resolve,
      );
      upstreams.add(upstream);
      upstream.on("close", () => upstreams.delete(upstream));
      upstream.on("error", reject);
      upstream.end(body);
    });
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, entry: ProxyLogEntry): Promise<void> => {
    const fault = pick(entry.method, entry.path);
    if (fault) {
      entry.fault = fault.kind;
      counts[fault.kind] = (counts[fault.kind] ?? 0) + 1;
    }
    if (fault?.kind === "refuse") {
      req.socket.destroy();
      return;
    }
    const body = await readBody(req);
    switch (fault?.kind) {
      case "status": {
        const text =
          fault.body ??
          JSON.stringify({
            error: {
              code: "InjectedFault",
              message: `The fault proxy answered ${fault.status} instead of forwarding ${entry.method} ${entry.path}`,
            },
          });
        const headers: OutgoingHttpHeaders = {
          "content-type": fault.contentType ?? "application/json; charset=utf-8",
          "content-length": Buffer.byteLength(text),
          ...(fault.retryAfter !== undefined ? { "retry-after": fault.retryAfter } : {}),
          ...fault.headers,
        };
        entry.status = fault.status;
        res.writeHead(fault.status, headers).end(text);
        return;
      }
      case "hang":
        if (fault.ms !== undefined) after(fault.ms, () => req.socket.destroy());
        return;
      case "delay":
        await new Promise<void>((resolve) => after(fault.ms, resolve));
        if (stopped) return;
        break;
      default:
        // No fault, lostResponse and rewrite forward the request; they act on the answer below.
        break;
    }
    let upstream: IncomingMessage;
    try {
      upstream = await forward(req, body, fault?.kind === "rewrite");
    } catch (error) {
      counts.upstreamErrors!++;
      if (stopped || res.headersSent) return;
      const text = `The fault proxy could not reach ${targetUrl.origin}: ${(error as Error).message}`;
      entry.status = 502;
      res
        .writeHead(502, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(text) })
        .end(text);
      return;
    }
    if (fault?.kind === "lostResponse") {
      // Wait for the whole answer, so the target has certainly acted, then lose it.
      await readBody(upstream);
      req.socket.destroy();
      return;
    }
    if (fault?.kind === "rewrite") {
      const original: ProxiedAnswer = {
        status: upstream.statusCode ?? 502,
        headers: Object.fromEntries(
          Object.entries(endToEnd(upstream.headers)).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : String(v)]),
        ),
        bodyText: (await readBody(upstream)).toString("utf8"),
      };
      const answer = await fault.transform(original);
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(answer.headers))
        if (name.toLowerCase() !== "content-length") headers[name.toLowerCase()] = value;
      headers["content-length"] = String(Buffer.byteLength(answer.bodyText));
      entry.status = answer.status;
      res.writeHead(answer.status, headers).end(answer.bodyText);
      return;
    }
    entry.status = upstream.statusCode;
    res.writeHead(upstream.statusCode ?? 502, upstream.statusMessage, endToEnd(upstream.headers));
    upstream.pipe(res);
    upstream.on("error", () => res.destroy());
  };

  const server = createServer((req, res) => {
    counts.requests!++;
    const raw = req.url ?? "/";
    const q = raw.indexOf("?");
    const entry: ProxyLogEntry = {
      method: req.method ?? "GET",
      path: q < 0 ? raw : raw.slice(0, q),
      query: q < 0 ? "" : raw.slice(q + 1),
    };
    log.push(entry);
    handle(req, res, entry).catch((error: unknown) => {
      if (!res.headersSent && !stopped) {
        const text = `The fault proxy failed: ${(error as Error).message}`;
        entry.status = 500;
        res
          .writeHead(500, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(text) })
          .end(text);
      } else {
        res.destroy();
      }
    });
  });
  const listening = await listenOnLoopback(server, options.port);
  const origin = listening.origin;

  return {
    url: origin + prefix,
    origin,
    log,
    inject(fault, { times = 1, skip = 0, ...match } = {}) {
      if (!Number.isInteger(times) || times < 1) throw new RangeError(`times must be a positive integer, got ${times}`);
      if (!Number.isInteger(skip) || skip < 0) throw new RangeError(`skip must be a non-negative integer, got ${skip}`);
      queue.push({ fault, match, skip, remaining: times });
    },
    chaos(rates, chaosOptions = {}) {
      let upTo = 0;
      const cumulative: { kind: ChaosKind; upTo: number }[] = [];
      for (const [kind, rate] of Object.entries(rates) as [ChaosKind, number][]) {
        if (!(rate >= 0 && rate <= 1))
          throw new RangeError(`The chaos rate for ${kind} must be within [0, 1], got ${rate}`);
        upTo += rate;
        cumulative.push({ kind, upTo });
      }
      if (upTo > 1 + 1e-9) throw new RangeError(`The chaos rates add up to ${upTo}, more than 1`);
      chaosSetting = { cumulative, options: chaosOptions };
    },
    clear() {
      queue.length = 0;
      chaosSetting = undefined;
    },
    stats: () => ({ ...counts }),
    async stop() {
      stopped = true;
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      for (const upstream of upstreams) upstream.destroy();
      upstreamAgent.destroy();
      await listening.close();
    },
  };
}

/**
 * A storage connection string whose `<Service>Endpoint` (e.g. TableEndpoint) points at `url`, so an
 * SDK client built from it goes through a proxy; the account and key stay as they were.
 * @throws Error when the connection string names no such endpoint.
 */
export function withEndpoint(
  connectionString: string,
  endpoint: "BlobEndpoint" | "TableEndpoint" | "QueueEndpoint",
  url: string,
): string {
  const parts = connectionString.split(";");
  const index = parts.findIndex((p) => p.toLowerCase().startsWith(`${endpoint.toLowerCase()}=`));
  if (index < 0) throw new Error(`The connection string has no ${endpoint}`);
  parts[index] = `${endpoint}=${url}`;
  return parts.join(";");
}
